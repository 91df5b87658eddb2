"""Default thread counts follow a cgroup CPU quota (v1 and v2) as well as the CPU affinity."""

from __future__ import annotations

import os
from pathlib import Path

from model_containers.cpu_budget import available_cpus, cgroup_cpu_quota

CONTAINER_ID = "a00451a7b0873c9aec1ca4f25b22f1fc5aa6f0b0c1746655ecd05ed81d9a2257"


def _proc_cgroup(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text("\n".join(lines) + "\n")
    return path


def _v1_cpu(directory: Path, quota_us: int, period_us: int = 100000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period_us}\n")


def test_inside_a_v1_container_limited_to_one_and_a_half_cpus(tmp_path: Path) -> None:
    # What `docker run --cpus 1.5` shows: /proc/self/cgroup names the host's path, and the
    # container's own cgroup is mounted at the root.
    root = tmp_path / "cgroup"
    _v1_cpu(root / "cpu", 150000)
    path = f"/docker/{CONTAINER_ID}"
    proc = _proc_cgroup(tmp_path, [f"2:cpuacct:{path}", f"1:cpu:{path}", f"0::{path}"])
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert available_cpus(root, proc) == min(2, len(os.sched_getaffinity(0)))


def test_the_tightest_quota_on_the_path_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _v1_cpu(root / "cpu,cpuacct", -1)
    _v1_cpu(root / "cpu,cpuacct" / "kubepods", 400000)
    _v1_cpu(root / "cpu,cpuacct" / "kubepods" / "pod1", 50000)
    proc = _proc_cgroup(tmp_path, ["4:cpu,cpuacct:/kubepods/pod1", "0::/"])
    assert cgroup_cpu_quota(root, proc) == 0.5
    assert available_cpus(root, proc) == 1


def test_cgroup_v2_quota_and_max(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "app.slice").mkdir(parents=True)
    (root / "app.slice" / "cpu.max").write_text("200000 100000\n")
    proc = _proc_cgroup(tmp_path, ["0::/app.slice"])
    assert cgroup_cpu_quota(root, proc) == 2.0
    (root / "app.slice" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_no_quota_and_no_cgroup_files(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _v1_cpu(root / "cpu", -1)
    assert cgroup_cpu_quota(root, _proc_cgroup(tmp_path, ["1:cpu:/", "0::/"])) is None
    assert cgroup_cpu_quota(root, tmp_path / "missing") is None
    assert available_cpus(root, tmp_path / "missing") == len(os.sched_getaffinity(0))
