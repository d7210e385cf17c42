"""Running reward plugins safely: in worker processes, in parallel, with a per-sample time limit.

A verifier that hangs (math-verify on a pathological expression, C code stuck in a loop) is
killed, its sample scored 0 and counted; one that raises scores ``None`` for that sample and is
counted. A batch is split into one chunk per process (``workers`` of them, in parallel); each
process calls the reward one sample at a time and replies per sample, so the time limit is per
sample and a hang costs only its own sample and ``timeout_s`` of wall time. A reward that raises
``RewardError`` (a server that is down, a misconfiguration) stops the run with that message
instead: no sample could be scored.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from lmmr1_core.errors import RewardError
from lmmr1_core.secrets import resolve
from lmmr1_core.threads import single_thread


def _worker(conn, fn, parent_end) -> None:
    # The fork copied the parent's end of our pipe (and other workers' ends), so EOF alone would
    # never tell us the trainer died (a SIGKILL): watch the parent pid as well.
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; we exit with it
    single_thread()  # workers run beside the trainer: a thread per core each would oversubscribe the CPUs
    parent = os.getppid()
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent:
                return
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        prompts, completions, columns = msg
        if getattr(fn, "batched", False):  # one call for the chunk (a remote judge): one reply for all of it
            _reply_once(conn, fn, prompts, completions, columns)
            continue
        for i in range(len(completions)):  # one call and one reply per sample: a hang costs only its sample
            try:
                one = {k: [v[i]] for k, v in columns.items()}
                out = fn(prompts=[prompts[i]], completions=[completions[i]], **one)
                conn.send(("ok", list(out) if out is not None else None))
            except RewardError as exc:
                conn.send(("fatal", str(exc)))
                break
            except BaseException as exc:
                tb = traceback.extract_tb(exc.__traceback__)
                where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
                conn.send(("error", f"{type(exc).__name__}: {exc}{where}"))


def _reply_once(conn, fn, prompts, completions, columns) -> None:
    try:
        out = fn(prompts=prompts, completions=completions, **columns)
        conn.send(("ok", list(out) if out is not None else None))
    except RewardError as exc:
        conn.send(("fatal", str(exc)))
    except BaseException as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        conn.send(("error", f"{type(exc).__name__}: {exc}" + (f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else "")))


def default_workers() -> int:
    from lmmr1_core.threads import usable_cpus

    return min(4, usable_cpus())


@dataclass
class RewardStats:
    timeouts: int = 0
    errors: int = 0
    not_applicable: int = 0
    first_error: str | None = None


class _Process:
    """One persistent worker process (forked, so in-process plugins work too), restarted when killed."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name, self.fn = name, fn
        self.proc = self.conn = None

    def send(self, payload) -> None:
        if self.proc is None or not self.proc.is_alive():
            ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
            parent, child = ctx.Pipe()
            self.proc = ctx.Process(
                target=_worker, args=(child, self.fn, parent), daemon=True, name=f"reward-{self.name}"
            )
            self.proc.start()
            child.close()
            self.conn = parent
        self.conn.send(payload)

    def read(self) -> tuple[str, Any]:
        """The reply waiting on the pipe: ("ok"|"error"|"fatal", value); a dead worker is an error."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the worker died (segfault in C code, os._exit)
            code = self.proc.exitcode if self.proc else None
            self.kill()
            return "error", f"worker process died (exit code {code})"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
        self.proc = self.conn = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(2)
            except OSError:
                pass
        self.kill()


_WARMED: set = set()  # the warmups that have run in this process


def warm_up(name: str, warmup: Any) -> None:
    """The reward's ``warmup``, if it has one and it has not run in this process (a set lookup after the first
    call). A failure is a warning: warming only saves time."""
    if not callable(warmup) or warmup in _WARMED:
        return
    _WARMED.add(warmup)
    try:
        warmup()
    except Exception as exc:
        print(f"warning: reward {name!r}: its warmup failed ({type(exc).__name__}: {exc}); scoring goes on",
              file=sys.stderr)  # fmt: skip


class RewardWorkers:
    """One reward, ``workers`` processes; a batch is split into one chunk per process.

    Each process scores its chunk one sample at a time and replies per sample, so the time limit is
    per sample: a sample silent for ``timeout_s`` is the slow one; its process is killed, the sample
    scores 0, and a fresh process takes the rest of the chunk. A batch's wall time grows by at most
    ``timeout_s`` per slow sample.
    """

    def __init__(self, name: str, fn: Any, timeout_s: float, workers: int | None = None) -> None:
        self.name, self.timeout_s = name, timeout_s
        self.procs = [_Process(name, fn) for _ in range(workers or default_workers())]
        self.stats = RewardStats()

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

    @staticmethod
    def _part(prompts, completions, columns, idx: list[int]):
        return (
            [prompts[i] for i in idx],
            [completions[i] for i in idx],
            {k: [v[i] for i in idx] for k, v in columns.items()},
        )

    def score(self, prompts: list, completions: list[str], columns: dict[str, list]) -> list[float | None]:
        # before the first worker forks from this process: on first use, not when the stage sets up, so a run
        # stopped then (SIGTERM outside a step's checkpointing) has not started it
        warm_up(self.name, getattr(self.procs[0].fn, "warmup", None))
        if getattr(self.procs[0].fn, "batched", False):
            return self._score_chunks(prompts, completions, columns)
        n = len(completions)
        scores: list[float | None] = [None] * n
        todo: dict[_Process, list[int]] = {}
        deadline: dict[_Process, float] = {}
        for proc, w in zip(self.procs, range(len(self.procs))):
            if list(range(n))[w :: len(self.procs)]:
                todo[proc] = list(range(n))[w :: len(self.procs)]
                proc.send(self._part(prompts, completions, columns, todo[proc]))
                deadline[proc] = time.monotonic() + self.timeout_s
        try:
            while todo:
                wait_s = max(0.0, min(deadline[p] for p in todo) - time.monotonic())
                ready = set(mp_connection.wait([p.conn for p in todo], wait_s))
                for proc in list(todo):
                    if proc.conn in ready:
                        i = todo[proc].pop(0)
                        scores[i] = self._reply(proc, i, *proc.read(), columns)
                    elif time.monotonic() >= deadline[proc]:
                        i = todo[proc].pop(0)
                        proc.kill()
                        scores[i] = self._timed_out(i, columns)
                    else:
                        continue
                    if not todo[proc]:
                        del todo[proc]
                    elif proc.proc is None:  # killed or died: a fresh process takes the rest of the chunk
                        proc.send(self._part(prompts, completions, columns, todo[proc]))
                    deadline[proc] = time.monotonic() + self.timeout_s
        except BaseException:
            for proc in todo:  # replies still in flight must not leak into the next batch
                proc.kill()
            raise
        self.stats.not_applicable += sum(s is None for s in scores)
        return scores

    def _score_chunks(self, prompts: list, completions: list[str], columns: dict[str, list]) -> list[float | None]:
        """A ``batched`` reward: one call per chunk, ``timeout_s`` per sample of it; a chunk that fails or
        times out scores all its samples ``None`` or 0 (counted per sample)."""
        n = len(completions)
        chunks = [c for c in (list(range(n))[w :: len(self.procs)] for w in range(len(self.procs))) if c]
        start = time.monotonic()
        for proc, idx in zip(self.procs, chunks):
            proc.send(self._part(prompts, completions, columns, idx))
        scores: list[float | None] = [None] * n
        for proc, idx in zip(self.procs, chunks):
            if not proc.conn.poll(max(0.0, start + self.timeout_s * len(idx) - time.monotonic())):
                proc.kill()
                for i in idx:
                    scores[i] = self._timed_out(i, columns)
                continue
            status, value = proc.read()
            if status == "ok":
                for i, v in zip(idx, self._check(value, len(idx))):
                    scores[i] = v
            else:
                for i in idx:
                    scores[i] = self._reply(proc, i, status, value, columns)
        self.stats.not_applicable += sum(s is None for s in scores)
        return scores

    def _reply(self, proc: _Process, i: int, status: str, value: Any, columns: dict) -> float | None:
        if status == "ok":
            return self._check(value, 1)[0]
        if status == "fatal":
            raise RewardError(f"reward {self.name!r}: {value}")
        self.stats.errors += 1
        self._note(f"raised on sample {columns['id'][i] if 'id' in columns else i}: {value}")
        return None

    def _timed_out(self, i: int, columns: dict) -> float:
        self.stats.timeouts += 1
        self._note(f"timed out after {self.timeout_s:g}s on sample {columns['id'][i] if 'id' in columns else i}")
        return 0.0

    def _note(self, message: str) -> None:
        if self.stats.first_error is None:
            self.stats.first_error = message
            print(f"warning: reward {self.name!r} {message} (further failures only counted)", file=sys.stderr)

    def close(self) -> None:
        for p in self.procs:
            p.close()


@dataclass
class TrainerState:
    """What a reward gets as ``trainer_state`` (TRL passes its ``TrainerState``): the optimizer steps done
    before this rollout, the stage's total, and the stage's name."""

    global_step: int
    max_steps: int | None = None
    stage: str = ""


@dataclass
class LoadedReward:
    """One reward of a stage, as the stage file names it, with its callable bound to its options."""

    name: str
    fn: Any
    weight: float = 1.0
    timeout_s: float = 10.0
    workers: int | None = None
    conversational: bool = False  # completions as TRL's conversational format, not strings


def declared(fn: Any, attribute: str, default: Any = None) -> Any:
    """What the reward function declares in ``attribute`` (``batched``, ``warmup``, ``conversational``), also
    when stage-file options bound it in a ``functools.partial``."""
    return getattr(getattr(fn, "func", fn), attribute, default)


class _TRLCall:
    """Calls a reward the way TRL does: ``trainer_state`` when the reward takes it (by name or ``**kwargs``),
    and completions as ``[{"role": "assistant", "content": text}]`` when it is conversational."""

    def __init__(self, fn: Any, conversational: bool) -> None:
        self.fn, self.conversational = fn, conversational
        self.batched = declared(fn, "batched") is True
        self.warmup = declared(fn, "warmup")
        try:
            params = inspect.signature(fn).parameters.values()
            self.takes_state = any(p.name == "trainer_state" or p.kind is p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            self.takes_state = False

    def __call__(self, prompts: list, completions: list[str], trainer_state: list | None = None, **columns: Any):
        if self.conversational:
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        if trainer_state and self.takes_state:
            columns["trainer_state"] = trainer_state[0]  # one state for the batch; it travels as a column
        return self.fn(prompts=prompts, completions=completions, **columns)


class RewardSet:
    """The weighted rewards of a stage; ``total`` skips ``None`` scores, like TRL's nansum."""

    def __init__(self, rewards: list[LoadedReward]) -> None:
        self.rewards = [RewardWorkers(r.name, _TRLCall(r.fn, r.conversational), r.timeout_s, r.workers)
                        for r in rewards]  # fmt: skip
        self.weights = [r.weight for r in rewards]

    @classmethod
    def from_specs(cls, specs: list) -> RewardSet:
        """The rewards a stage file names (``RewardSpec``s), loaded through the plugin registry."""
        from lmmr1_core import load_reward

        loaded = []
        for r in specs:
            fn = load_reward(r.name, **resolve(r.reward_config(), f"rewards.{r.name}"))  # ${env:...} read now
            conversational = (r.completions == "conversational" if r.completions
                              else declared(fn, "conversational") is True)  # fmt: skip
            loaded.append(LoadedReward(r.name, fn, r.weight, r.timeout_s, r.workers, conversational))
        return cls(loaded)

    def __call__(
        self, prompts: list, completions: list[str], columns: dict[str, list], state: TrainerState | None = None
    ) -> tuple[list[float | None], dict[str, list[float | None]]]:
        if state is not None:
            columns = {**columns, "trainer_state": [state] * len(completions)}
        per = {r.name: r.score(prompts, completions, columns) for r in self.rewards}
        totals: list[float | None] = []
        for i in range(len(completions)):
            parts = [w * per[r.name][i] for r, w in zip(self.rewards, self.weights) if per[r.name][i] is not None]
            totals.append(sum(parts) if parts else None)
        return totals, per

    def restore(self, counters: dict[str, int]) -> None:
        """Carry the timeout/error counts of a resumed stage on from its checkpoint."""
        for r in self.rewards:
            r.stats.timeouts = counters.get(f"reward/{r.name}/timeouts", r.stats.timeouts)
            r.stats.errors = counters.get(f"reward/{r.name}/errors", r.stats.errors)
            r.stats.not_applicable = counters.get(f"reward/{r.name}/not_applicable", r.stats.not_applicable)

    def counters(self) -> dict[str, int]:
        out = {}
        for r in self.rewards:
            out[f"reward/{r.name}/timeouts"] = r.stats.timeouts
            out[f"reward/{r.name}/errors"] = r.stats.errors
            out[f"reward/{r.name}/not_applicable"] = r.stats.not_applicable
        return out

    def close(self) -> None:
        for r in self.rewards:
            r.close()


def reward_columns(samples: list, completions: list[list[int]]) -> dict[str, list]:
    """TRL's reward contract: every dataset column as a keyword list aligned with the completions."""
    columns: dict[str, list] = {
        "answer": [s.answer for s in samples],
        "images": [s.images for s in samples],
        "id": [s.id for s in samples],
        "completion_ids": completions,
    }
    for key in {k for s in samples for k in s.meta}:
        columns[key] = [s.meta.get(key) for s in samples]
    return columns
