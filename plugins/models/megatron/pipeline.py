"""Pipeline-parallel hand-offs as autograd functions, so the caller's ``loss.backward()`` drives them.

The RL and SFT loops call ``logprobs`` and then ``loss.backward()`` on every rank, one micro-batch
at a time. Each stage runs its layers and passes its output on (``SendForward``); the last stage
computes the log-probs and broadcasts them, so every rank returns the same ``[B, T]`` tensor and
computes the same loss. Backward runs in reverse: the last stage's graph ends in ``RecvForward``,
whose backward sends the input gradient to the previous stage; there, ``SendForward``'s backward
receives it (the loss gradient it is handed is ignored: the last stage owns that path).

This is the simplest schedule (one micro-batch in flight, stages idle in turn), chosen for
clarity over throughput; megatron's interleaved 1F1B schedule needs the loss inside the model's
forward step, which the loop-owns-the-loss contract here does not give it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _stage_ranks():
    from megatron.core import parallel_state as mpu

    return mpu.get_pipeline_model_parallel_prev_rank(), mpu.get_pipeline_model_parallel_next_rank()


class RecvForward(torch.autograd.Function):
    """Receives the previous stage's hidden states; backward sends their gradient back."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        prev, _ = _stage_ranks()
        buf = torch.empty(shape, dtype=dtype, device=anchor.device)
        dist.recv(buf, prev)
        return buf

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prev, _ = _stage_ranks()
        dist.send(grad.contiguous(), prev)
        return torch.zeros(0, device=grad.device), None, None


class SendForward(torch.autograd.Function):
    """Sends this stage's hidden states on and returns the last stage's broadcast result.

    The result is a float32 tensor of ``result_shape``.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, result_shape: tuple) -> torch.Tensor:
        _, nxt = _stage_ranks()
        dist.send(hidden.detach().contiguous(), nxt)
        result = torch.empty(result_shape, dtype=torch.float32, device=hidden.device)
        broadcast_from_last(result)
        ctx.hidden_meta = (hidden.shape, hidden.dtype, hidden.device)
        return result

    @staticmethod
    def backward(ctx, grad_result: torch.Tensor):
        _, nxt = _stage_ranks()
        shape, dtype, device = ctx.hidden_meta
        grad = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(grad, nxt)
        return grad, None


def broadcast_from_last(t: torch.Tensor) -> None:
    """The last stage's ``t`` to every stage (in place)."""
    from megatron.core import parallel_state as mpu

    dist.broadcast(t, mpu.get_pipeline_model_parallel_last_rank(), group=mpu.get_pipeline_model_parallel_group())
