"""Running reward plugins safely: each in its own worker process with a per-sample time limit.

A verifier that hangs (math-verify on a pathological expression, C code stuck in a loop) is
killed, its sample scored 0 and counted; one that raises scores ``None`` for that sample and is
counted. The normal path is one call per batch; only a failed batch is retried sample by sample
to find the culprit, so the safety costs nothing when nothing goes wrong.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from lmmr1_core.errors import RewardError


def _worker(conn, fn) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        prompts, completions, columns = msg
        try:
            out = fn(prompts=prompts, completions=completions, **columns)
            conn.send(("ok", list(out) if out is not None else None))
        except BaseException as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
            conn.send(("error", f"{type(exc).__name__}: {exc}{where}"))


@dataclass
class RewardStats:
    timeouts: int = 0
    errors: int = 0
    first_error: str | None = None
    not_applicable: int = 0


class _Timeout(Exception):
    pass


@dataclass
class RewardWorker:
    """One reward in one persistent process (forked, so in-process plugins work too)."""

    name: str
    fn: Any
    timeout_s: float
    stats: RewardStats = field(default_factory=RewardStats)

    def __post_init__(self) -> None:
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child, self.fn), daemon=True, name=f"reward-{self.name}")
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(2)
        self._kill()

    def _call(self, prompts, completions, columns, timeout: float):
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((prompts, completions, columns))
        if not self._conn.poll(timeout):
            self._kill()
            raise _Timeout()
        try:
            status, value = self._conn.recv()
        except EOFError:  # the worker died (segfault in C code, os._exit)
            self._kill()
            return "error", f"worker process died (exit code {self._proc and self._proc.exitcode})"
        return status, value

    def _check(self, value, n: int) -> list[float | None]:
        if not isinstance(value, list) or len(value) != n:
            got = f"{len(value)} scores" if isinstance(value, list) else repr(value)
            raise RewardError(f"reward {self.name!r} returned {got} for {n} completions")
        out: list[float | None] = []
        for v in value:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(None)
            elif isinstance(v, (int, float)):
                out.append(float(v))
            else:
                raise RewardError(f"reward {self.name!r} returned {v!r}; expected a number or None")
        return out

    def score(self, prompts: list, completions: list[str], columns: dict[str, list]) -> list[float | None]:
        n = len(completions)
        try:
            status, value = self._call(prompts, completions, columns, self.timeout_s * max(n, 1))
            if status == "ok":
                return self._check(value, n)
        except _Timeout:
            pass
        return [self._score_one(i, prompts, completions, columns) for i in range(n)]

    def _score_one(self, i: int, prompts, completions, columns) -> float | None:
        cols = {k: v[i : i + 1] for k, v in columns.items()}
        try:
            status, value = self._call(prompts[i : i + 1], completions[i : i + 1], cols, self.timeout_s)
        except _Timeout:
            self.stats.timeouts += 1
            self._note(f"timed out after {self.timeout_s:g}s on sample {columns.get('id', ['?'] * (i + 1))[i]}")
            return 0.0
        if status == "ok":
            return self._check(value, 1)[0]
        self.stats.errors += 1
        self._note(f"raised on sample {columns.get('id', ['?'] * (i + 1))[i]}: {value}")
        return None

    def _note(self, message: str) -> None:
        if self.stats.first_error is None:
            self.stats.first_error = message
            print(f"warning: reward {self.name!r} {message} (further failures only counted)", file=sys.stderr)


class RewardSet:
    """The weighted rewards of a stage; ``total`` skips ``None`` scores, like TRL's nansum."""

    def __init__(self, specs: list[tuple[str, Any, float, float]]) -> None:
        self.workers = [RewardWorker(name, fn, timeout) for name, fn, _, timeout in specs]
        self.weights = [w for _, _, w, _ in specs]

    def __call__(
        self, prompts: list, completions: list[str], columns: dict[str, list]
    ) -> tuple[list[float | None], dict[str, list[float | None]]]:
        per: dict[str, list[float | None]] = {}
        for worker in self.workers:
            per[worker.name] = worker.score(prompts, completions, columns)
        totals: list[float | None] = []
        for i in range(len(completions)):
            parts = [w * per[k.name][i] for k, w in zip(self.workers, self.weights) if per[k.name][i] is not None]
            totals.append(sum(parts) if parts else None)
        return totals, per

    def counters(self) -> dict[str, int]:
        out = {}
        for w in self.workers:
            out[f"reward/{w.name}/timeouts"] = w.stats.timeouts
            out[f"reward/{w.name}/errors"] = w.stats.errors
        return out

    def close(self) -> None:
        for w in self.workers:
            w.close()
