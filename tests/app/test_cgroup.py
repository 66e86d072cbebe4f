"""`--workers auto`: CPUs from fake cgroup v1 and v2 trees (as Docker, Kubernetes and systemd lay them out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cgroup import cpu_limit

HOST_CPUS = 64


@pytest.fixture(autouse=True)
def big_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(HOST_CPUS)))


def tree(root: Path, proc_cgroup: str, files: dict[str, str]) -> Path:
    """Fake /sys/fs/cgroup files under `root`; returns a fake /proc/self/cgroup."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "proc-self-cgroup").write_text(proc_cgroup)
    return root / "proc-self-cgroup"


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "cpus"),
    [
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),  # docker --cpus=2, cgroup v2 (namespaced: we are "/")
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: a second worker still gets half a CPU
        ("0::/\n", {"cpu.max": "50000 100000\n"}, 1),  # at least one
        ("0::/\n", {"cpu.max": "max 100000\n"}, HOST_CPUS),  # no limit
        (  # Kubernetes: the pod's limit sits on the parent of the container's cgroup
            "0::/kubepods/pod1/ctr\n",
            {"kubepods/pod1/cpu.max": "300000 100000\n", "kubepods/pod1/ctr/cpu.max": "max 100000\n"},
            3,
        ),
        (  # cgroup v1 (docker on an older host)
            "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            4,
        ),
        ("3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, HOST_CPUS),
        ("0::/\n", {}, HOST_CPUS),  # no controller files at all
        ("0::/\n", {"cpu.max": "garbage\n"}, HOST_CPUS),
    ],
    ids=["v2", "v2-fraction", "v2-under-one", "v2-max", "v2-kubernetes", "v1", "v1-unlimited", "none", "unreadable"],
)
def test_workers_auto_follows_the_cgroup_quota(
    tmp_path: Path, proc_cgroup: str, files: dict[str, str], cpus: int
) -> None:
    count, why = cpu_limit(tmp_path, tree(tmp_path, proc_cgroup, files))
    assert count == cpus
    assert why.startswith("cgroup CPU quota") == (cpus != HOST_CPUS)  # the log line says which limit it used


def test_the_affinity_mask_caps_a_bigger_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # e.g. taskset -c 0,1 or a cpuset
    count, why = cpu_limit(tmp_path, tree(tmp_path, "0::/\n", {"cpu.max": "800000 100000\n"}))
    assert count == 2
    assert why.startswith("2 CPUs in this process's affinity mask")


def test_no_proc_cgroup_falls_back_to_the_affinity_mask(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path, tmp_path / "missing")[0] == HOST_CPUS
