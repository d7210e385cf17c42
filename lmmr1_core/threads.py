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


class PhaseThreads:
    """The intra-op thread count for one phase of the work (a prompt forward, a one-token step, a training
    forward), tuned by timing it: the faster of 1 thread and all of them.

    With passive waiting every parallel region first wakes a sleeping thread, which costs more than a small
    matmul gains from the second core. Measured on 2 cores (Qwen2, 16 rows): a one-token step of a hidden-256
    model ran 1.8x faster on 1 thread than on 2, while its training forward and backward ran 1.4x faster on 2;
    at hidden 64 both were faster on 1. A bigger model has more work per op, and more threads win. So the
    first calls of each phase alternate between the candidates (after ``warmup`` calls that warm caches and
    allocators), and the count with the lower median time is kept for the rest of the process.

    On this machine's torch (MKL, OpenMP) results were bit-for-bit the same on 1 and 2 threads, so tuning does
    not change what a run computes (a resumed run still equals an uninterrupted one, tests/test_run.py).
    ``full=None`` (a GPU backend) leaves torch's count alone; ``tune=False`` always uses ``full``.
    """

    def __init__(self, full: int | None, tune: bool = True, trials: int = 3, warmup: int = 1) -> None:
        self.full = full
        self.candidates = sorted({1, full}) if full is not None and tune else [full]
        self.chosen = self.candidates[0] if len(self.candidates) == 1 else None
        self.times: dict[int | None, list[float]] = {n: [] for n in self.candidates}
        self.trials, self.warmup = trials, warmup

    def next(self) -> int | None:
        """The thread count for the next call."""
        if self.chosen is not None or self.warmup > 0:
            return self.chosen or self.full
        return min(self.candidates, key=lambda n: len(self.times[n]))  # alternate: fewest timings first

    def record(self, threads: int | None, seconds: float) -> None:
        if self.chosen is not None:
            return
        if self.warmup > 0:
            self.warmup -= 1
            return
        self.times[threads].append(seconds)
        if all(len(t) >= self.trials for t in self.times.values()):
            self.chosen = min(self.candidates, key=lambda n: sorted(self.times[n])[self.trials // 2])

    def run(self, fn):
        """``fn()`` on the thread count ``next()`` names, which stays set afterwards (a backward that follows
        a training forward runs on it too)."""
        import time

        import torch

        n = self.next()
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        start = time.perf_counter()
        out = fn()
        self.record(n, time.perf_counter() - start)
        return out
