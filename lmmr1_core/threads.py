"""Thread counts that fit the machine: torch's intra-op threads from the CPUs this process may use.

``os.cpu_count()`` counts the host's cores, not ours: a container limited by a CPU quota, a job pinned to some
cores (``taskset``, SLURM) or several torchrun ranks on one node would each start a thread per core, more
threads than cores. OpenMP threads that outnumber the cores, and spin while they wait for one another, make a
step 50-200x slower at random whenever another busy process shares the CPUs. So:

- threads = the CPUs we may use (affinity mask, cgroup quota), divided among the local ranks under torchrun;
  ``model.threads`` overrides it; reward worker processes take one each;
- each phase of the work (prompt forward, one-token step, scoring forward, training forward) runs on the
  faster of 1 thread and all of them, timed on its first calls and timed again when it turns several times
  slower than it was (``PhaseThreads``): another busy process on the machine makes 1 thread the faster, and
  one thread has no team to spin for;
- OpenMP threads spin for about 0.2 ms before they sleep (``GOMP_SPINCOUNT=20000``; GNU OpenMP, which
  torch's Linux wheels use, counts about 100,000 spins per ms), set by the CLI before anything loads torch,
  inherited by child processes, and left out where the user has set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT``. OpenMP's default spins for about 3 ms, ``OMP_WAIT_POLICY=PASSIVE`` not at all. The
  training forward and backward start hundreds of parallel regions, and a sleeping thread wakes tens of
  microseconds late for each: measured on 2 cores (README, Benchmarks), a quiet step at hidden 256 took 0.74 s
  at 20,000 spins, 0.81-1.03 s at OpenMP's default and 1.06 s passive. When another busy process arrives in
  the middle of a run, threads that spin for milliseconds held one step up 25x before the 1-thread fallback
  took over; 0.2 ms of spinning, like none, kept every step within 2.2x;
- MKL's matrix products are made independent of the thread count (``MKL_CBWR=AUTO,STRICT``, Intel's
  conditional numerical reproducibility, set beside the spin count unless the user set ``MKL_CBWR``): by
  default MKL rounds some products differently on 1 and 2 threads (measured: ``[M, K] @ [K, N]`` with M of
  5-7 or 9-11 rows, a decode step's batch), so a tuned run took different samples from a run that tuned
  differently, and a resumed run no longer equalled an uninterrupted one. Measured cost at hidden 256:
  within the noise of a step (README, Benchmarks).

Nothing here imports torch at module level: ``prepare_environment`` runs before torch is loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

OPENMP_SPIN = {"GOMP_SPINCOUNT": "20000"}
"""What the CLI puts in the environment before torch loads, unless the user chose a wait policy or spin count."""

MKL_REPRODUCIBLE = {"MKL_CBWR": "AUTO,STRICT"}
"""Also put there unless the user set ``MKL_CBWR``: MKL's products the same on any number of threads."""

CGROUP_ROOT = "/sys/fs/cgroup"


def prepare_environment(env: MutableMapping[str, str] = os.environ) -> None:
    """A short OpenMP spin and thread-count-independent MKL products for this process and its children; call
    before torch is imported (both libraries read these once, when they load)."""
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env.update(OPENMP_SPIN)
    if "MKL_CBWR" not in env:
        env.update(MKL_REPRODUCIBLE)


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

    A small matmul gains less from a second core than it costs to hand it over, and when another busy process
    shares the cores, two threads of ours wait for each other's turn on them. A bigger model has more work per
    op, and more threads win. So the first calls of each phase alternate between the candidates (after
    ``warmup`` calls that warm caches and allocators), and the count with the lower median time per unit of
    ``work`` is kept. A kept count is watched: ``strikes`` calls in a row ``slower`` times slower than when it
    was chosen (per unit of work) start the tuning again, so a process that arrives mid-run is answered within
    a few calls.

    The thread count must not change what a run computes (a resumed run equals an uninterrupted one,
    tests/test_reliability.py): with MKL in its reproducible mode (``prepare_environment``) torch's CPU ops
    gave bit-for-bit the same results on 1 and 2 threads here, generation included (tests/test_threads.py).
    Without it they did not. Not covered: a ``linear`` of 2-3 rows onto an output size that is no multiple of
    8 (523 still differed), and torch without MKL (ARM): ``tune=False`` where runs must repeat exactly.
    ``full=None`` (a GPU backend) leaves torch's count alone; ``tune=False`` always uses ``full``.
    """

    def __init__(self, full: int | None, tune: bool = True, trials: int = 3, warmup: int = 1,
                 slower: float = 3.0, strikes: int = 3) -> None:  # fmt: skip
        self.full = full
        self.candidates = sorted({1, full}) if full is not None and tune else [full]
        self.chosen = self.candidates[0] if len(self.candidates) == 1 else None
        self.times: dict[int | None, list[float]] = {n: [] for n in self.candidates}
        self.trials, self.warmup = trials, warmup
        self.slower, self.strikes = slower, strikes
        self.baseline = 0.0  # the kept count's median time per unit of work when it was chosen
        self.slow_calls = 0  # consecutive calls over ``slower`` x baseline
        self.retunes = 0

    def next(self) -> int | None:
        """The thread count for the next call."""
        if self.chosen is not None or self.warmup > 0:
            return self.chosen or self.full
        return min(self.candidates, key=lambda n: len(self.times[n]))  # alternate: fewest timings first

    def record(self, threads: int | None, seconds: float, work: float = 1.0) -> None:
        if len(self.candidates) == 1:
            return
        rate = seconds / max(work, 1e-12)
        if self.chosen is not None:
            self.slow_calls = self.slow_calls + 1 if rate > self.slower * self.baseline else 0
            if self.slow_calls >= self.strikes:  # the machine changed under us: time both counts again
                self.chosen, self.slow_calls, self.retunes = None, 0, self.retunes + 1
                self.times = {n: [] for n in self.candidates}
            return
        if self.warmup > 0:
            self.warmup -= 1
            return
        self.times[threads].append(rate)
        if all(len(t) >= self.trials for t in self.times.values()):
            median = {n: sorted(t)[self.trials // 2] for n, t in self.times.items()}
            self.chosen = min(self.candidates, key=median.__getitem__)
            self.baseline = median[self.chosen]

    def run(self, fn, work: float = 1.0):
        """``fn()`` on the thread count ``next()`` names, which stays set afterwards (a backward that follows
        a training forward runs on it too). ``work``: the call's size (tokens), for comparing calls."""
        import time

        import torch

        n = self.next()
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        start = time.perf_counter()
        out = fn()
        self.record(n, time.perf_counter() - start, work)
        return out
