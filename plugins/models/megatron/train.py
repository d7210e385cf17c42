"""Optimizer and gradient clipping for a model split over tensor/pipeline ranks.

The run has one model replica (no data parallel), so there is nothing for a distributed (ZeRO-1)
optimizer to shard across: each rank's AdamW already holds only its own shard's state. What does
need care is everything that is global over the split:

- the gradient norm: a tensor-parallel shard counts on every rank, a replicated parameter (norms,
  the vision tower) once; the sum of squares is all-reduced over all ranks;
- tied embeddings with pipeline stages: the first stage's embedding and the last stage's output
  layer are one weight, so their gradients are summed (megatron's "embedding group") before the
  step keeps the two copies equal;
- the optimizer state of a checkpoint: one per rank, gathered on save and picked apart on resume.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lmmr1_core.errors import ConfigError


class MegatronAdamW(torch.optim.AdamW):
    """AdamW over one rank's parameters whose ``state_dict`` holds every rank's state.

    ``state_dict`` is collective: every rank must call it (the trainer does, then rank 0 writes it).
    """

    def state_dict(self):
        own = super().state_dict()
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return own
        own = _to_cpu(own)
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, own)
        return {"per_rank": states}

    def load_state_dict(self, state_dict) -> None:
        if "per_rank" in state_dict:
            states = state_dict["per_rank"]
            world = dist.get_world_size() if dist.is_initialized() else 1
            if len(states) != world:
                raise ConfigError(f"resume: the checkpoint's optimizer state is from {len(states)} processes, "
                                  f"this run has {world}; use the same tensor/pipeline parallel sizes")  # fmt: skip
            state_dict = states[dist.get_rank() if dist.is_initialized() else 0]
        super().load_state_dict(state_dict)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def tied_across_stages(gpt) -> bool:
    """Tied input/output embeddings whose two copies live on different pipeline stages."""
    return getattr(gpt, "tied_across_stages", False)


def clip_grad_norm(gpt: torch.nn.Module, visual: torch.nn.Module | None, max_norm: float) -> float:
    """Finish the gradients (tied-embedding sum), then clip them all by their global L2 norm; returns the norm."""
    from megatron.core import parallel_state as mpu

    tp_rank = mpu.get_tensor_model_parallel_rank()
    skip = set()
    if tied_across_stages(gpt):
        weight = gpt.embedding.word_embeddings.weight if gpt.pre_process else gpt.output_layer.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        dist.all_reduce(weight.grad, group=mpu.get_embedding_group())
        if not gpt.pre_process:
            skip.add(id(weight))  # counted once, on the first stage
    # Every matrix of the decoder, the embedding and the head is split over tensor ranks (megatron marks
    # them only when it initialises them, which conversion skips); the norms are replicated.
    named = [(n, p) for n, p in gpt.named_parameters() if p.grad is not None]
    sharded = {id(p) for n, p in named if not n.endswith("layernorm.weight")}
    params = [p for _, p in named]
    params += [p for p in (visual.parameters() if visual is not None else []) if p.grad is not None]
    device = params[0].device if params else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if id(p) in skip:
            continue
        if id(p) in sharded or tp_rank == 0:
            sq += p.grad.detach().float().pow(2).sum()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sq)
    norm = float(sq.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1 and math.isfinite(norm):
        for p in params:
            p.grad.detach().mul_(coef)
    return norm
