"""What the rl and sft stages share: the stage context, optimizer, data order, checkpoints, resume."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lmmr1_core.checkpoint import (
    atomic_dir,
    prune_checkpoints,
    read_trainer_state,
    seed_everything,
    write_trainer_state,
)
from lmmr1_core.config import RunConfig, StageConfig
from lmmr1_core.contracts import ADAPTER, Backend, Generator, RolloutEngine
from lmmr1_core.errors import DataError
from lmmr1_core.metrics import RunLog, main_process
from lmmr1_core.model_card import write_model_card
from lmmr1_core.preemption import Preempted, graceful_stop
from lmmr1_core.prompts import build_messages, message_text
from lmmr1_core.types import Sample


@dataclass
class StageContext:
    """Everything a stage runner needs; built by ``run.run``."""

    name: str
    config: StageConfig
    run: RunConfig
    out_dir: Path
    backend: Backend
    samples: list[Sample]
    init_path: str  # the weights this stage started from (the KL reference)
    hook: Any  # pluggy hook relay, for the event hooks
    log: RunLog | None = None
    counters: dict[str, int] = field(default_factory=dict)
    engine: RolloutEngine | None = None  # None: the backend generates
    critic: bool = False  # the backend holds a critic (saved and restored with the trainer state)
    checkpoint: tuple[int, Path] | None = None  # the (verified) checkpoint the stage resumes from

    @property
    def generator(self) -> Generator:
        return self.engine if self.engine is not None else self.backend

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n


class DataOrder:
    """A reshuffled pass per epoch, addressed by position so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def index(self, position: int) -> int:
        epoch = position // self.n
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[position % self.n])


def generate(
    ctx: StageContext, prompts: list[Any], greedy: bool = False, with_logprobs: bool = False
) -> tuple[list[list[int]], list[list[float]] | None]:
    """The stage's generation settings over ``prompts``, ``4 x micro_batch_size`` at a time:
    (completions, the engine's log-prob of each sampled token or None)."""
    gen, chunk = ctx.config.generation, ctx.config.micro_batch_size * 4
    # return_logprobs only when asked: a third-party backend's generate need not know the keyword
    extra = {"return_logprobs": True} if with_logprobs else {}
    completions: list[list[int]] = []
    logps: list[list[float]] = []
    for i in range(0, len(prompts), chunk):
        out = ctx.generator.generate(prompts[i : i + chunk], gen.max_new_tokens, gen.temperature, gen.top_p,
                                   greedy=greedy, **extra)  # fmt: skip
        completions += out[0] if with_logprobs else out
        logps += out[1] if with_logprobs else []
    return completions, logps if with_logprobs else None


def next_prompts(ctx: StageContext, order: DataOrder, position: int, count: int, max_len: int):
    """``count`` encodable samples from ``position`` on: (samples, their messages, prompts, new position)."""
    samples, messages, prompts = [], [], []
    tried = 0
    while len(samples) < count:
        if tried >= 2 * len(ctx.samples) and not samples:
            raise DataError(f"stage {ctx.name}: no usable sample among {len(ctx.samples)} (see warnings above)")
        sample = ctx.samples[order.index(position)]
        position += 1
        tried += 1
        encoded = encode_sample(ctx, sample, max_len)
        if encoded is None:
            continue
        samples.append(sample)
        messages.append(encoded[0])
        prompts.append(encoded[1])
    return samples, messages, prompts, position


CHARS_PER_TOKEN = 32  # far more than any tokenizer packs: a prompt this long is over the limit whatever it says


def encode_sample(ctx: StageContext, sample: Sample, max_len: int):
    """(the stage's messages for the sample, its encoded prompt), or None (counted): a prompt over ``max_len``
    tokens is dropped (never truncated through an image); one whose image cannot be read is reported."""
    if sum(len(message_text(m)) for m in sample.messages) > max_len * CHARS_PER_TOKEN:  # before tokenising
        ctx.count("data/dropped_long_prompts")
        return None
    messages = build_messages(sample.messages, ctx.config.prompt_template, ctx.config.system_prompt)
    try:
        prompt = ctx.backend.encode(messages, sample.images, sample.id)
    except DataError as exc:
        ctx.count("data/bad_samples")
        print(f"warning: skipping {exc}", file=sys.stderr)
        return None
    if len(prompt.input_ids) > max_len:
        ctx.count("data/dropped_long_prompts")
        return None
    return messages, prompt


def lr_lambda(o, total_updates: int):
    """Linear warm-up, then constant or cosine down to ``min_lr`` (as a factor of ``lr``)."""
    warm = o.warmup_steps or int(o.warmup_ratio * total_updates)
    floor = o.min_lr / o.lr

    def factor(s: int) -> float:
        if warm and s < warm:
            return (s + 1) / warm
        if o.schedule == "cosine":
            progress = min(1.0, (s - warm) / max(1, total_updates - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def make_optimizer(ctx: StageContext, total_updates: int):
    o = ctx.config.optim
    optimizer = ctx.backend.make_optimizer(o.lr, o.weight_decay, o.betas, freeze=o.freeze)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, total_updates))
    return optimizer, scheduler


def save_checkpoint(ctx: StageContext, step: int, optimizer, scheduler, position: int) -> None:
    """HF weights + trainer state under ``checkpoints/step-N``, written atomically; older ones pruned."""
    final = ctx.out_dir / "checkpoints" / f"step-{step:06d}"
    if not main_process():  # torchrun: gathering sharded weights and optimizer state is collective
        ctx.backend.save(None)
        optimizer.state_dict()
        if ctx.critic:
            ctx.backend.critic_state()
        return
    with atomic_dir(final, manifest=True) as tmp:
        ctx.backend.save(tmp)
        tensors = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if ctx.critic:
            tensors["critic"] = ctx.backend.critic_state()
        write_trainer_state(tmp, {"step": step, "position": position, "counters": dict(ctx.counters)}, tensors)
    prune_checkpoints(ctx.out_dir, keep=ctx.config.keep_checkpoints)


def resume(ctx: StageContext, optimizer, scheduler) -> tuple[int, int]:
    """Load the newest checkpoint's optimizer/RNG/data position: (last step, data position).

    The weights were already loaded (the backend was built from the checkpoint directory).
    """
    found = ctx.checkpoint  # verified against its manifest by the runner
    seed_everything(ctx.config.seed)
    if found is None:
        return 0, 0
    step, path = found
    plain, tensors = read_trainer_state(path)  # also restores every RNG
    optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    ctx.counters.update(plain.get("counters", {}))
    if ctx.critic:
        ctx.backend.load_critic_state(tensors["critic"])
    return step, plain["position"]


def save_final(ctx: StageContext) -> Path:
    """The stage's result: an HF checkpoint at ``final/`` with its model card (README.md); its presence marks
    the stage done. An adapter backend (LoRA) writes its adapter and the merged weights, which load anywhere."""
    final = ctx.out_dir / "final"
    adapter = ADAPTER in ctx.backend.capabilities
    if not main_process():  # torchrun: the other ranks take part in gathering the weights
        ctx.backend.save(None)
        if adapter:
            ctx.backend.save_merged(None)
        return final
    with atomic_dir(final) as tmp:
        ctx.backend.save(tmp)
        if adapter:
            ctx.backend.save_merged(tmp)
        write_model_card(tmp, ctx.run, ctx.name, ctx.out_dir.parent)
    prune_checkpoints(ctx.out_dir, keep=0)
    return final


def agreed_signal(signum: int | None) -> int:
    """The stop signal any rank got (0: none). Under torchrun the signal reaches the ranks at slightly different
    times; the checkpoint that follows is collective, so they agree after each step (one tiny all-reduce)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return signum or 0
    t = torch.tensor([signum or 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def stop_requested(results: list[Any]) -> bool:
    """An ``on_step_end`` implementation returns True to end the stage early (it is then finished)."""
    return any(r is True for r in results)


StepFn = Callable[[int, int], tuple[dict[str, Any], int, list[dict[str, Any]] | None]]


def run_steps(ctx: StageContext, optimizer, scheduler, step_fn: StepFn, postfix: Callable[[dict], dict]) -> None:
    """The loop every training stage shares: resume, then ``step_fn(step, data position) -> (metrics, new
    position, samples.jsonl rows or None)`` per step, each logged, checkpointed every ``save_every`` steps and
    shown on a progress bar; an ``on_step_end`` hook may end the stage early. Ends with ``final/``."""
    cfg = ctx.config
    start, position = resume(ctx, optimizer, scheduler)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{ctx.name} ({cfg.kind})", dynamic_ncols=True,
               disable=not main_process())  # fmt: skip
    try:
        with graceful_stop() as stop:
            for step in range(start + 1, cfg.steps + 1):
                metrics, position, rows = step_fn(step, position)
                metrics.update(ctx.counters)
                ctx.log.metrics(step, metrics)
                if rows is not None and step % cfg.samples_every == 0:
                    ctx.log.samples(step, rows)
                bar.update(1)
                bar.set_postfix(postfix(metrics))
                signum = agreed_signal(stop.signum)  # torchrun: every rank stops after the same step
                if signum and step < cfg.steps:  # preempted: save exactly here, then leave
                    save_checkpoint(ctx, step, optimizer, scheduler, position)
                    raise Preempted(f"stage {ctx.name}: stopped by {signal.Signals(signum).name} after step {step}; "
                                    "a checkpoint was saved there: run the same command again to resume", signum)
                if step % cfg.save_every == 0 and step < cfg.steps:
                    save_checkpoint(ctx, step, optimizer, scheduler, position)
                if stop_requested(ctx.hook.on_step_end(stage=ctx.name, step=step, metrics=metrics)):
                    break
    finally:
        bar.close()
    save_final(ctx)
