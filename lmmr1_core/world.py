"""Does a stage file fit the processes it is started with?

A mismatch between the world size and the parallel split shows up, unchecked, as a hang in a collective
or a crash minutes into loading a 3B model on every rank. Everything here is arithmetic on the config and
the world size, so ``lmmr1 validate --nproc-per-node N`` answers on a laptop, and the run checks the same
at start under torchrun (``WORLD_SIZE``).

The counts in a stage file are the whole job's: ``batch_size`` prompts per rollout over all ranks, split
evenly over the data-parallel replicas (``world / (tensor_parallel x pipeline_parallel)``). A rollout engine
(``model.rollout.tensor_parallel``) spans one rank, or exactly one trainer replica (its ranks must pass the
same prompts), so it generates its replica's share either way: the same rules the engine applies at start.
"""

from __future__ import annotations

import os

from lmmr1_core.config import RunConfig, StageConfig
from lmmr1_core.errors import ConfigError


def rollout_tensor_parallel(config: RunConfig) -> int:
    """The rollout engine's tensor-parallel size: its ``tensor_parallel`` option, 1 when it has none or the
    backend itself generates (then generation uses the trainer's split)."""
    if config.model.rollout.engine == "backend":
        return 1
    return int(config.model.rollout.engine_config().get("tensor_parallel", 1) or 1)


def world_size_from_env() -> int | None:
    """The world size torchrun gives this process, or None outside torchrun."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def _trains(st: StageConfig) -> bool:
    return st.steps is not None


def _rolls_out(st: StageConfig) -> bool:
    """A stage that samples groups of completions (rl), told apart from sft by what it is scored with."""
    return bool(st.rewards) or st.env is not None


def check_world(config: RunConfig, world_size: int, path: str = "stage file") -> None:
    """Raise ConfigError unless ``world_size`` processes can run ``config``: the trainer's split and the rollout
    engine's tensor parallel fit the world, and every training stage's batch splits evenly over the replicas."""
    if world_size < 1:
        raise ConfigError(f"{path}: world size {world_size}: need at least one process")
    m = config.model
    tp, pp = m.tensor_parallel, m.pipeline_parallel
    split = tp * pp
    if world_size % split:
        raise ConfigError(
            f"{path}: model.tensor_parallel x model.pipeline_parallel = {tp} x {pp} = {split} does not divide the "
            f"world size {world_size} (nodes x processes per node): start a multiple of {split} processes, or "
            "change the split"
        )
    rtp = rollout_tensor_parallel(config)
    if rtp > world_size:
        raise ConfigError(
            f"{path}: model.rollout.tensor_parallel: {rtp} is larger than the world ({world_size} processes): an "
            f"engine cannot span more ranks than the job has; use at most {world_size}"
        )
    if world_size % rtp:
        fits = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise ConfigError(
            f"{path}: model.rollout.tensor_parallel: {rtp} does not divide the world size {world_size}: every rank "
            f"belongs to exactly one engine; use one of {', '.join(map(str, fits))}"
        )
    if rtp > 1 and (rtp != split or pp != 1):
        raise ConfigError(
            f"{path}: model.rollout.tensor_parallel: {rtp}: an engine's tensor-parallel ranks must pass the same "
            f"prompts, so they must form one trainer replica, and a replica here is tensor_parallel {tp} x "
            f"pipeline_parallel {pp} = {split} rank(s): use rollout tensor_parallel 1 (an engine per rank), or the "
            f"megatron backend with tensor_parallel {rtp} and pipeline_parallel 1"
        )
    dp = world_size // split
    for name, st in config.stages.items():
        if not _trains(st):
            continue
        where = f"{path}: stages.{name}"
        unit = "prompts" if _rolls_out(st) else "samples"
        if st.batch_size % dp:
            raise ConfigError(
                f"{where}.batch_size: {st.batch_size} {unit} do not split evenly over {dp} data-parallel replicas "
                f"(world {world_size} / (tensor_parallel {tp} x pipeline_parallel {pp})): use a multiple of {dp}"
            )


def batch_plan(config: RunConfig, world_size: int | None = None) -> list[str]:
    """What each training stage's batch numbers resolve to (and, given a world size, each replica's share),
    for ``lmmr1 validate``: the line to compare with a paper's script."""
    m = config.model
    dp = world_size // (m.tensor_parallel * m.pipeline_parallel) if world_size else None
    lines = []
    if world_size:
        lines.append(f"world: {world_size} processes, {dp} data-parallel replicas of tensor_parallel "
                     f"{m.tensor_parallel} x pipeline_parallel {m.pipeline_parallel}")  # fmt: skip
        if m.rollout.engine != "backend":
            rtp = rollout_tensor_parallel(config)
            lines[-1] += f"; {world_size // rtp} {m.rollout.engine} rollout engines of tensor_parallel {rtp}"
    for name, st in config.stages.items():
        if not _trains(st):
            continue
        algo = st.algorithm
        if not _rolls_out(st):
            share = f" ({st.batch_size // dp} per replica)" if dp else ""
            lines.append(f"stage {name}: {st.batch_size} samples per optimizer step{share}")
            continue
        total = st.batch_size * algo.group_size
        share = f"; {st.batch_size // dp} prompts per replica" if dp else ""
        lines.append(
            f"stage {name}: rollout {st.batch_size} prompts x {algo.group_size} samples = {total} samples; "
            f"{algo.epochs * algo.mini_batches} optimizer steps per rollout ({algo.epochs} epoch(s) x "
            f"{algo.mini_batches} of {total // algo.mini_batches} samples){share}"
        )
    return lines
