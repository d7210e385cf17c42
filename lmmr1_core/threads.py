"""Thread counts that fit the machine: torch's intra-op threads from the CPUs this process may use.

``os.cpu_count()`` counts the host's cores, not ours: a container limited by a CPU quota, a job pinned to some
cores (``taskset``, SLURM) or several torchrun ranks on one node would each start a thread per core, more
threads than cores. OpenMP threads that outnumber the cores, and spin while they wait for one another, make a
step 50-200x slower at random whenever another busy process shares the CPUs. So:

- threads = the CPUs we may use (affinity mask, cgroup quota), divided among the local ranks under torchrun;
  ``model.threads`` overrides it; reward worker processes take one each;
- OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE``): an idle thread sleeps at once instead of spinning,
  so a thread that is descheduled never holds the others up spinning. The cost: waking a sleeping thread
  takes microseconds, which a step of a tiny model on a quiet machine may feel (README, Benchmarks).
  OpenMP reads it once, when torch loads, so the CLI sets it before anything imports torch, and child
  processes inherit it. A value already in the environment is kept.

Nothing here imports torch at module level: ``prepare_environment`` runs before torch is loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What the CLI puts in the environment (unless already set) before torch loads."""

CGROUP_ROOT = "/sys/fs/cgroup"


def prepare_environment(env: MutableMapping[str, str] = os.environ) -> None:
    """Passive OpenMP waiting for this process and its children; call before torch is imported."""
    for key, value in OPENMP_ENV.items():
        env.setdefault(key, value)


def cgroup_cpu_quota(root: str | Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows (``2.5`` for 250 ms per 100 ms), or None without a quota.

    cgroup v2 (``cpu.max``: ``QUOTA PERIOD`` or ``max PERIOD``) or v1 (``cpu.cfs_quota_us``, -1 for none).
    """
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cpus(root: str | Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), capped by the cgroup quota; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        n = min(n, math.floor(quota))  # a fractional CPU is no thread's worth: it only buys throttling
    return max(1, n)


def local_ranks(env: MutableMapping[str, str] = os.environ) -> int:
    """Processes sharing this node's CPUs: torchrun's ``LOCAL_WORLD_SIZE`` (1 outside torchrun)."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_threads(override: int | None = None, cpus: int | None = None, ranks: int | None = None) -> int:
    """torch's intra-op threads: ``override`` (``model.threads``) if given, else this rank's share of the CPUs."""
    if override is not None:
        return override
    cpus = usable_cpus() if cpus is None else cpus
    ranks = local_ranks() if ranks is None else ranks
    return max(1, cpus // ranks)


def configure_torch(override: int | None = None) -> int:
    """Set torch's intra-op threads to ``choose_threads(override)``; returns the count."""
    import torch

    n = choose_threads(override)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def single_thread() -> None:
    """For worker processes (rewards): one intra-op thread, if torch is loaded at all."""
    import sys

    os.environ["OMP_NUM_THREADS"] = "1"  # for anything the worker starts
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
