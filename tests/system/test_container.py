"""The image as a user meets it: `docker run` with the compose file's hardening, then `docker-compose up` itself.

Run by `make container-test` (tests/support/container.sh builds the image and sets DIGITSUM_IMAGE); left out of
`make test` by the `container` marker. Without a Docker engine or image these tests fail, they never skip.

Every check runs on both ways in (`run`, `compose`), on the CPU with a 2-CPU quota: read-only root, uid 10001,
no capabilities, healthy through the image's HEALTHCHECK, /readyz, real test digits through /predict, hostile
uploads answered 4xx, /model's device, one worker per CPU of the quota, and last, `docker stop` while requests
are in flight: every one of them is answered. The compose run is the file itself, `digitsum-cpu` service (the
same definition as `digitsum` without the GPU reservation, under the `cpu` profile).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from app.model import DeviceChoice, Model
from app.preprocess import preprocess
from tests.support import hostile_inputs as hi
from tests.support.digits import Sample
from tests.support.live_server import free_port, until
from tests.support.service import ROOT, SHIPPED_MODEL, png_bytes
from tests.system.test_shutdown import upload_in_two_halves

pytestmark = pytest.mark.container

CPUS = 2  # the quota both ways in run under (compose file: cpus: 2)
IN_FLIGHT = 30
# What docker-compose.yml gives the service, for `docker run` (a user without compose types the same flags)
HARDENING = ["--read-only", "--tmpfs", "/tmp:size=64m,mode=1777", "--cap-drop", "ALL", "--security-opt",
             "no-new-privileges:true", f"--cpus={CPUS}", "--memory=4g", "--pids-limit=256"]  # fmt: skip


@dataclass
class Container:
    id: str
    port: int
    stop_command: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str, body: bytes | None = None, content_type: str = "") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.url + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.id)

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.id], capture_output=True, text=True)
        return (result.stdout + result.stderr)[-4000:]


def docker(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def image() -> str:
    name = os.environ.get("DIGITSUM_IMAGE")
    assert name, "DIGITSUM_IMAGE is not set: run these through `make container-test`"
    docker("image", "inspect", name)  # fails loudly without an engine or the image
    return name


def start_run() -> Container:
    port = free_port()
    args = ["run", "-d", *HARDENING, "-p", f"127.0.0.1:{port}:8000", "-e", "DIGITSUM_DEVICE=cpu", image()]
    cid = docker(*args)
    return Container(cid, port, ["docker", "stop", "-t", "30", cid])


def _compose(project: str, args: tuple[str, ...], env: dict[str, str]) -> str:
    command = ["docker-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"), "--profile", "cpu", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module", params=["run", "compose"])
def container(request: pytest.FixtureRequest) -> Iterator[Container]:
    """A ready container of the image; removed after the module's checks."""
    image()
    project = f"digitsum-ci-{uuid.uuid4().hex[:8]}"
    if request.param == "run":
        box = start_run()
    else:
        port = free_port()
        env = {**os.environ, "DIGITSUM_PORT": str(port)}
        _compose(project, ("up", "-d", "--no-build", "digitsum-cpu"), env)
        cid = _compose(project, ("ps", "-q", "digitsum-cpu"), env)
        box = Container(cid, port, ["docker-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"),
                                    "--profile", "cpu", "stop", "digitsum-cpu"])  # fmt: skip
    try:
        until(lambda: ready(box), timeout_s=120)
        yield box
    finally:
        if request.param == "run":
            subprocess.run(["docker", "rm", "-f", box.id], capture_output=True)
        else:
            _compose(project, ("down", "-t", "30"), {**os.environ, "DIGITSUM_PORT": "0"})


def ready(box: Container) -> bool:
    state = box.inspect("{{.State.Status}}")
    assert state in ("created", "running"), f"the container is {state}:\n{box.logs()}"
    try:
        return box.request("/readyz")[0] == 200
    except OSError:
        return False


def test_runs_read_only_as_uid_10001_without_capabilities(container: Container) -> None:
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    status = docker("exec", container.id, "cat", "/proc/1/status")
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split()[:2] == ["10001", "10001"]
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    write = subprocess.run(["docker", "exec", container.id, "touch", "/srv/digitsum/app/x"], capture_output=True)
    assert write.returncode != 0 and b"Read-only file system" in write.stderr


def test_limits_are_set(container: Container) -> None:
    assert container.inspect("{{.HostConfig.NanoCpus}}") == str(CPUS * 10**9)
    assert container.inspect("{{.HostConfig.Memory}}") == str(4 * 2**30)
    assert container.inspect("{{.HostConfig.PidsLimit}}") == "256"
    assert "size=64m" in container.inspect("{{json .HostConfig.Tmpfs}}")


def test_healthcheck_reports_healthy(container: Container) -> None:
    until(lambda: container.inspect("{{.State.Health.Status}}") == "healthy", timeout_s=90)


def test_one_worker_per_cpu_of_the_quota(container: Container) -> None:
    processes = docker("top", container.id, "-o", "pid,ppid,args")
    rows = [line.split(None, 2) for line in processes.splitlines()[1:]]
    launcher = next(pid for pid, _, args in rows if args.startswith("python -m app.serve"))
    workers = [pid for pid, ppid, args in rows if ppid == launcher and "spawn_main" in args]  # not their decoders
    assert len(workers) == CPUS, processes


def test_model_reports_the_device(container: Container) -> None:
    status, card = container.request("/model")
    assert status == 200 and card["device"] == "cpu", card


def test_predicts_real_test_digits(container: Container, sample: Sample) -> None:
    """40 test-split digits, each with number k % 10: right digit and sum, and the same answers as the model
    in this process (same checkpoint, same preprocessing) to 1e-5."""
    images, labels = sample.test.images[::25], sample.test.labels[::25]  # 4 of each digit
    numbers = [k % 10 for k in range(len(images))]
    pngs = [png_bytes(pixels) for pixels in images]
    model = Model(SHIPPED_MODEL, DeviceChoice(torch.device("cpu"), "test"))
    here = model.predict(np.stack([preprocess(png, 40_000_000) for png in pngs]), numbers)
    right = 0
    for png, number, label, expected in zip(pngs, numbers, labels, here, strict=True):
        body = hi.multipart([("image", png, "d.png"), ("number", str(number).encode(), None)])
        status, answer = container.request("/predict", body, f"multipart/form-data; boundary={hi.BOUNDARY}")
        assert status == 200, answer
        assert (answer["digit"], answer["sum"]) == (expected.digit, expected.sum), answer
        assert np.allclose(answer["digit_probabilities"], expected.digit_probabilities, atol=1e-5), answer
        right += answer["digit"] == label and answer["sum"] == label + number
    assert right >= len(images) - 2, right  # the shipped model is ~99% accurate on the test split


@pytest.mark.parametrize(
    ("upload", "expected"),
    [(b"%PDF-1.4 not an image at all", 415), (hi.png_bomb(20_000, 20_000), 413)],
    ids=["not-an-image", "decompression-bomb"],
)
def test_hostile_upload_gets_its_4xx(container: Container, upload: bytes, expected: int) -> None:
    body = hi.multipart([("image", upload, "d.png"), ("number", b"3", None)])
    status, answer = container.request("/predict", body, f"multipart/form-data; boundary={hi.BOUNDARY}")
    assert status == expected, answer
    assert isinstance(answer["detail"], str) and answer["detail"].endswith("."), answer
    assert container.request("/readyz")[0] == 200


def test_stop_answers_every_request_in_flight(container: Container, sample: Sample) -> None:
    """Last of each way in: stops the container while IN_FLIGHT uploads are half sent."""
    bodies = [
        hi.multipart([("image", png_bytes(sample.test.images[k]), "d.png"), ("number", str(k % 10).encode(), None)])
        for k in range(IN_FLIGHT)
    ]
    halfway, go = threading.Barrier(IN_FLIGHT + 1), threading.Event()
    answers: dict[int, tuple[int, dict[str, Any]]] = {}
    server = _Address(container.port)

    def client(k: int) -> None:
        answers[k] = upload_in_two_halves(server, bodies[k], f"stop-{k}", halfway, go)  # type: ignore[arg-type]

    clients = [threading.Thread(target=client, args=(k,)) for k in range(IN_FLIGHT)]
    for thread in clients:
        thread.start()
    halfway.wait(timeout=60)
    time.sleep(1)  # the last headers reach a worker
    stopper = subprocess.Popen(container.stop_command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    until(lambda: "SIGTERM" in container.logs() or "Shutting down" in container.logs(), timeout_s=15)
    go.set()
    for thread in clients:
        thread.join(timeout=60)
    assert stopper.wait(timeout=60) == 0
    logs = container.logs()

    assert sorted(answers) == list(range(IN_FLIGHT)), logs
    assert {status for status, _ in answers.values()} == {200}, logs
    assert all(answers[k][1]["number"] == k % 10 for k in range(IN_FLIGHT))
    assert container.inspect("{{.State.ExitCode}}") in ("0", "143"), logs  # drained, not killed (137)
    assert "Traceback" not in logs


@dataclass
class _Address:
    """What upload_in_two_halves needs of a server: its port on 127.0.0.1."""

    port: int
