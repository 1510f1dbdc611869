"""How many CPUs this process may use: affinity mask and cgroup CPU quota, not just the machine's cores.

``os.cpu_count()`` counts the machine's cores. A process pinned by ``taskset``/Slurm
(``sched_getaffinity``) or a container limited by a CPU quota (cgroup v2 ``cpu.max``,
cgroup v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``) may use fewer; a pool sized to
the machine would oversubscribe them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path) -> list[Path]:
    """The cgroup directories of this process (from /proc/self/cgroup), then the root."""
    dirs: list[Path] = []
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "" or "cpu" in parts[1].split(",")):
            rel = parts[2].lstrip("/")
            for base in (root, root / "cpu", root / "cpu,cpuacct"):
                d = base / rel if rel else base
                if d.is_dir():
                    dirs.append(d)
    dirs.append(root)
    return dirs


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. ``2.5``), or None when unlimited/unknown.

    Reads cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") or cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: unlimited).
    """
    root = Path(root)
    for d in _own_cgroup_dirs(root):
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            parts = v2.split()
            if len(parts) == 2 and parts[0] != "max":
                try:
                    quota, period = float(parts[0]), float(parts[1])
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    return quota / period
            continue
        q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if q is not None and p is not None:
            try:
                quota, period = float(q), float(p)
            except ValueError:
                continue
            if quota > 0 and period > 0:
                return quota / period
    return None


def available_cpus() -> int:
    """CPUs this process may use: ``min(affinity mask, ceil(cgroup quota))``, at least 1.

    The quota is rounded up (a 1.5-CPU quota runs two single-threaded cells
    side by side at 75 % each, still faster than one).
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)
