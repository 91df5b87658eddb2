"""How many CPUs a replica may use: its CPU affinity, capped by a cgroup CPU quota."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

_QuotaReader = Callable[[Path], float | None]


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The thread count a framework should use by default.

    Frameworks count the machine's cores, but a container limited with `--cpus` or a
    Kubernetes CPU limit sees every core while its quota allows fewer: one thread per core
    would then be throttled for most of each period.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> float | None:
    """The tightest CPU quota, in CPUs, on this process's cgroup or its ancestors (cgroup v1
    or v2); None when there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # the v2 unified hierarchy
            quotas += _quotas(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            for mount in {cgroup_root / "cpu", cgroup_root / controllers}:
                quotas += _quotas(mount, path, _v1_quota)
    return min(quotas, default=None)


def _quotas(mount: Path, path: str, read: _QuotaReader) -> list[float]:
    # The cgroup's directory and its ancestors; inside a container the mount's root is the
    # container's own cgroup, while /proc/self/cgroup still names the host's path.
    relative = Path(path.lstrip("/"))
    directories = [mount / relative, *(mount / p for p in relative.parents)]
    found = (read(d) for d in dict.fromkeys(directories) if d.is_dir())
    return [q for q in found if q is not None]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period
