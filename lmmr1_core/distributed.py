"""One program on every rank: under ``torchrun`` each data-parallel replica owns whole prompt groups.

A replica is the set of ranks that hold one copy of the model (one rank for the hf backend, ``TP x PP``
ranks for megatron). Every rank of a replica sees the same rows; the replicas see different ones. What
is computed over a batch, not per group (whitening, DAPO's informative-group count, metrics, the
samples written, the loss normalisers), goes through ``Replicas``' collectives so that N replicas give
the numbers one process would. Outside torchrun, ``Replicas()`` is one replica and every collective
is the identity.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(timeout_s: float | None = None) -> None:
    """Join the torchrun job (once per process): gloo for CPU tensors, nccl for CUDA ones.

    ``timeout_s`` bounds how long a collective waits for a rank that went silent (default
    ``LMMR1_DIST_TIMEOUT_S`` or 600 s); a rank that *died* is noticed at once (its sockets close)."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    timeout = timeout_s or float(os.environ.get("LMMR1_DIST_TIMEOUT_S", "600"))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    threading.Thread(target=_heartbeat, args=(_store(), dist.get_rank()), daemon=True, name="lmmr1-heartbeat").start()


HEARTBEAT_S = 1.0


def _store():
    return dist.distributed_c10d._get_default_store()  # torchrun's store: it outlives a worker that dies


def _heartbeat(store, rank: int) -> None:
    """Each rank stamps the job's store every second, so a survivor can say which rank went quiet."""
    while True:
        try:
            store.set(f"lmmr1/alive/{rank}", repr(time.time()))
        except Exception:  # the store is gone: the job is ending
            return
        time.sleep(HEARTBEAT_S)


def last_beats() -> dict[int, float | None]:
    """Seconds since each other rank last stamped the store (None: never)."""
    store, now, out = _store(), time.time(), {}
    store.set_timeout(timedelta(seconds=2))
    for r in range(dist.get_world_size()):
        key = f"lmmr1/alive/{r}"
        if r != dist.get_rank():
            out[r] = now - float(store.get(key)) if store.check([key]) else None
    return out


def first_silent(wait_s: float = 10.0) -> tuple[int, float | None] | None:
    """The rank that went quiet first: the oldest heartbeat once one is a few beats late (the others stop
    too after the failure, but later), or None if none is within ``wait_s``."""
    deadline = time.time() + wait_s
    while True:
        beats = last_beats()
        never = [r for r, age in beats.items() if age is None]
        if never:
            return never[0], None
        rank, age = max(beats.items(), key=lambda kv: kv[1], default=(None, 0.0))
        if rank is not None and age > 3 * HEARTBEAT_S:
            return rank, age
        if time.time() > deadline:
            return None
        time.sleep(HEARTBEAT_S / 2)


def explain_failure(exc: BaseException) -> str | None:
    """One line for a collective that failed because another rank died or went silent, else None."""
    text = str(exc)
    if not dist.is_initialized() or not any(m in text for m in _PEER_ERRORS):
        return None
    try:
        quiet = first_silent()
    except Exception:  # the store went down with the job
        quiet = None
    who = "another rank" if quiet is None else f"rank {quiet[0]}" + (
        f" (silent {quiet[1]:.0f} s)" if quiet[1] is not None else " (never started)")  # fmt: skip
    return (f"rank {dist.get_rank()}: {who} stopped ({text.splitlines()[0][:200]}); this rank "
            "exits too. Rerun the same command to resume from the last checkpoint")  # fmt: skip


_PEER_ERRORS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out", "timed out",
                "Connection refused", "NCCL", "DistNetworkError", "Socket Timeout")  # fmt: skip


def share(n: int, rank: int, size: int) -> range:
    """Replica ``rank``'s part of ``n`` items: a contiguous chunk, the first ``n % size`` replicas one more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass(frozen=True)
class Replicas:
    """This process's data-parallel replica: ``rank`` of ``size``, collectives over ``group``."""

    rank: int = 0
    size: int = 1
    group: Any = None

    def share(self, n: int) -> range:
        return share(n, self.rank, self.size)

    def sum(self, values: torch.Tensor | list[float]) -> torch.Tensor:
        """Element-wise sum over the replicas (a new float64 CPU tensor)."""
        t = torch.as_tensor(values, dtype=torch.float64).clone()
        if self.size > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def min(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return float(t)

    def gather(self, obj: Any) -> list[Any]:
        """Every replica's ``obj``, in replica order (picklable objects)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out


SINGLE = Replicas()


def replicas_of(backend: Any) -> Replicas:
    """The backend's data-parallel replicas (``data_parallel`` capability); one replica otherwise, in which
    case every rank of a torchrun job trains the whole batch."""
    from lmmr1_core.contracts import DATA_PARALLEL

    if DATA_PARALLEL not in backend.capabilities:
        return SINGLE
    rank, size, group = backend.data_parallel()
    return Replicas(rank, size, group) if size > 1 else SINGLE
_current: Replicas = SINGLE


def current() -> Replicas:
    """The replicas of the stage running now (``SINGLE`` outside one): batch statistics in algorithm plugins
    (``masked_whiten``) reduce over them."""
    return _current


@contextmanager
def replicas_scope(replicas: Replicas) -> Iterator[Replicas]:
    global _current
    before, _current = _current, replicas
    try:
        yield replicas
    finally:
        _current = before


def sum_gradients(params: list[torch.Tensor], group: Any = None, bucket: int = 1 << 25) -> None:
    """Sum the gradients of ``params`` over ``group`` in place (data parallel without DDP's hooks: a replica
    may run more micro-batches than another, or none, and nothing waits for it mid-backward).

    A parameter without a gradient on every replica keeps none (AdamW then skips it, as one process would);
    one with a gradient somewhere gets the sum everywhere. Flattened into buckets: a few large collectives."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1 or not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has, group=group)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in live:
        by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in by_kind.values():
        start = 0
        while start < len(grads):
            end, size = start, 0
            while end < len(grads) and (end == start or size + grads[end].numel() <= bucket):
                size += grads[end].numel()
                end += 1
            flat = torch.cat([g.reshape(-1) for g in grads[start:end]])
            dist.all_reduce(flat, group=group)
            offset = 0
            for g in grads[start:end]:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            start = end
