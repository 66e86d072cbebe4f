"""How many CPUs this process may use: the cgroup's CPU quota (a container's `--cpus`), else its CPU affinity.

`os.cpu_count()` counts the host's cores; a container limited to 2 CPUs on a 64-core host would start 64 workers
that share 2 CPUs' worth of time and mostly wait on the CFS throttle.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """(CPUs, why): the smaller of the cgroup quota (rounded up) and the CPUs we may run on; at least 1."""
    affinity = len(os.sched_getaffinity(0))
    quota = cgroup_quota(root, proc_cgroup)
    if quota is None:
        return max(1, affinity), f"{affinity} CPUs in this process's affinity mask, no cgroup CPU quota"
    cpus, where = quota
    if math.ceil(cpus) >= affinity:
        return max(1, affinity), f"{affinity} CPUs in this process's affinity mask (cgroup quota {cpus:g} in {where})"
    return max(1, math.ceil(cpus)), f"cgroup CPU quota {cpus:g} CPUs in {where}"


def cgroup_quota(root: Path, proc_cgroup: Path) -> tuple[float, str] | None:
    """The tightest CPU quota on this process's cgroup or its ancestors, in CPUs, and the file it came from."""
    limits = [limit for limit in map(read_limit, candidate_files(root, proc_cgroup)) if limit is not None]
    return min(limits, default=None)


def candidate_files(root: Path, proc_cgroup: Path) -> list[Path]:
    """cpu.max (v2) or cpu.cfs_quota_us (v1) of our cgroup and each ancestor up to the mount point.

    In a container the cgroup namespace makes our cgroup the root ("0::/"), so `root/cpu.max` is the one.
    """
    files = []
    for hierarchy, controllers, path in own_cgroups(proc_cgroup):
        if hierarchy == "0" and controllers == "":  # v2: one unified tree
            base, name = root, "cpu.max"
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            base = next((root / d for d in ("cpu,cpuacct", "cpu") if (root / d).is_dir()), root / "cpu")
            name = "cpu.cfs_quota_us"
        else:
            continue
        parts = [part for part in path.split("/") if part]
        files += [base.joinpath(*parts[:depth], name) for depth in range(len(parts), -1, -1)]
    return files


def own_cgroups(proc_cgroup: Path) -> list[tuple[str, str, str]]:
    """(hierarchy id, controllers, path) per line of /proc/self/cgroup; [("0", "", "/")] when unreadable."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return [("0", "", "/")]
    return [tuple(line.split(":", 2)) for line in lines if line.count(":") >= 2]  # type: ignore[misc]


def read_limit(path: Path) -> tuple[float, str] | None:
    """CPUs allowed by one cpu.max ("200000 100000", or "max 100000") or cpu.cfs_quota_us (-1: none) file."""
    try:
        if path.name == "cpu.max":
            quota, period = path.read_text().split()[:2]
        else:
            quota = path.read_text().strip()
            period = path.with_name("cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return int(quota) / int(period), str(path)
