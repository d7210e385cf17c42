"""Process groups: torch.distributed (under ``torchrun`` or a one-process group) and megatron's TP/PP/DP grid.

On CPU the backend is gloo; on GPU nccl. megatron-core asks ``torch.cuda.current_device()`` for the
device of a few buffers (rotary frequencies, the tensor-parallel logit gather, in forward and in
backward); on a CPU-only run ``cpu_as_current_device`` makes that answer ``"cpu"`` for the process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lmmr1_core.distributed import init_process_group
from lmmr1_core.errors import ConfigError


def init_parallel(tensor_parallel: int, pipeline_parallel: int, device: torch.device) -> None:
    """Start torch.distributed if needed and set megatron's groups: ``TP x PP`` ranks per model replica,
    ``world_size / (TP x PP)`` replicas (data parallel), which the world size must be a multiple of."""
    from megatron.core import parallel_state as mpu

    init_process_group()  # torchrun with more than one process: join it
    if not dist.is_initialized():  # one process: a group of one
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    split = tensor_parallel * pipeline_parallel
    if world % split:
        raise ConfigError(
            f"model: {world} processes but tensor_parallel x pipeline_parallel = "
            f"{tensor_parallel} x {pipeline_parallel} = {split} does not divide them; the megatron backend runs "
            f"world_size / {split} data-parallel model replicas: start a multiple of {split} processes "
            f"(`lmmr1 run FILE --nproc-per-node {split}`, or {2 * split} for two replicas)"
        )
    if mpu.model_parallel_is_initialized():
        if (
            mpu.get_tensor_model_parallel_world_size() == tensor_parallel
            and mpu.get_pipeline_model_parallel_world_size() == pipeline_parallel
        ):
            return
        mpu.destroy_model_parallel()
    if device.type != "cuda":
        cpu_as_current_device()
    mpu.initialize_model_parallel(tensor_parallel, pipeline_parallel)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def cpu_as_current_device() -> None:
    """On a CPU-only run, ``torch.cuda.current_device()`` (which would raise) names the CPU."""
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"
