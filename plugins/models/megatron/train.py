"""Optimizer and gradient clipping for a model split over tensor/pipeline ranks, in data-parallel replicas.

Each rank's AdamW holds only its own shard's state (no distributed/ZeRO optimizer: the data-parallel
replicas each hold the full state of their shard). What needs care is everything that is global:

- data parallel: each replica's backward covered only its share of the batch's rows, so the
  gradients are summed over the data-parallel group (``sum_over_replicas``) first; the replicas
  then hold the same gradients and take the same steps;
- the gradient norm: a tensor-parallel shard counts on every rank, a replicated parameter (norms,
  the vision tower) once; the sum of squares is all-reduced over one replica's ranks (the
  model-parallel group);
- tied embeddings with pipeline stages: the first stage's embedding and the last stage's output
  layer are one weight, so their gradients are summed (megatron's "embedding group") before the
  step keeps the two copies equal;
- the optimizer state of a checkpoint: one per model-parallel rank (the first replica's), gathered
  on save and picked apart on resume, so a run may resume with another number of replicas.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lmmr1_core.distributed import sum_gradients
from lmmr1_core.errors import ConfigError


class MegatronAdamW(torch.optim.AdamW):
    """AdamW over one rank's parameters whose ``state_dict`` holds every model-parallel rank's state.

    ``state_dict`` is collective when the model is split: every rank must call it (the trainer does,
    then rank 0 writes it). It holds the first data-parallel replica's states, indexed by
    ``pp_rank * tp + tp_rank`` (the global rank when there is one replica); the replicas are equal.
    """

    def state_dict(self):
        own = super().state_dict()
        size, index = _model_parallel()
        if size == 1:  # one rank per replica: this rank's state is every replica's
            return own
        from megatron.core import parallel_state as mpu

        mine = (index, _to_cpu(own)) if mpu.get_data_parallel_rank() == 0 else None
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        states: list = [None] * size
        for item in gathered:
            if item is not None:
                states[item[0]] = item[1]
        return {"per_rank": states}

    def load_state_dict(self, state_dict) -> None:
        if "per_rank" in state_dict:
            states = state_dict["per_rank"]
            size, index = _model_parallel()
            if len(states) != size:
                raise ConfigError(f"resume: the checkpoint's optimizer state is from {len(states)} model-parallel "
                                  f"ranks, this run has {size}; use the same tensor/pipeline parallel sizes "
                                  "(the number of data-parallel replicas may differ)")  # fmt: skip
            state_dict = states[index]
        super().load_state_dict(state_dict)


def _model_parallel() -> tuple[int, int]:
    """(ranks per model replica, this rank's index ``pp_rank * tp + tp_rank`` among them)."""
    if not dist.is_initialized():
        return 1, 0
    from megatron.core import parallel_state as mpu

    tp, pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
    return tp * pp, mpu.get_pipeline_model_parallel_rank() * tp + mpu.get_tensor_model_parallel_rank()


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


def sum_over_replicas(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over the data-parallel group (``lmmr1_core.distributed.sum_gradients``)."""
    from megatron.core import parallel_state as mpu

    if not dist.is_initialized() or mpu.get_data_parallel_world_size() == 1 or not params:
        return
    sum_gradients(params, mpu.get_data_parallel_group())


def clip_grad_norm(gpt: torch.nn.Module, visual: torch.nn.Module | None, max_norm: float) -> float:
    """Finish the gradients (data-parallel sum, tied-embedding sum), then clip them all by their global L2
    norm; returns the norm. The loops call it after the last backward of every step, before the step."""
    from megatron.core import parallel_state as mpu

    trained = [p for p in gpt.parameters() if p.requires_grad]
    trained += [p for p in (visual.parameters() if visual is not None else []) if p.requires_grad]
    sum_over_replicas(trained)
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
        dist.all_reduce(sq, group=mpu.get_model_parallel_group())  # one replica's ranks
    norm = float(sq.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1 and math.isfinite(norm):
        for p in params:
            p.grad.detach().mul_(coef)
    return norm
