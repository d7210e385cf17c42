"""The ``sft`` stage: supervised warm-up on answer text (cross-entropy on the target tokens only)."""

from __future__ import annotations

import time

from lmmr1_core.distributed import replicas_of
from lmmr1_core.errors import DataError
from lmmr1_core.trainer import DataOrder, StageContext, make_optimizer, next_prompts, run_steps


def sft_target(template: str, sample) -> str:
    try:
        return template.format(answer=sample.answer, **sample.meta)
    except KeyError as exc:
        raise DataError(f"sample {sample.id}: target_template uses {exc}, which the sample lacks") from None


def run_sft(ctx: StageContext) -> None:
    cfg, backend = ctx.config, ctx.backend
    optimizer, scheduler = make_optimizer(ctx, cfg.steps)
    order = DataOrder(len(ctx.samples), cfg.seed)
    eos = backend.tokenizer.eos_token_id
    replicas = replicas_of(backend)  # torchrun: each data-parallel replica trains its share of the rows

    def step(_step: int, position: int):
        t0 = time.perf_counter()
        samples, _, prompts, position = next_prompts(ctx, order, position, cfg.batch_size,
                                                     cfg.generation.max_prompt_length)  # fmt: skip
        targets = [
            backend.tokenizer(sft_target(cfg.target_template, s), add_special_tokens=False).input_ids + [eos]
            for s in samples
        ]
        n_tokens = float(sum(len(t) for t in targets))  # the whole batch's: the replicas' gradients are summed
        mine = replicas.share(len(prompts))
        prompts, targets = [prompts[i] for i in mine], [targets[i] for i in mine]
        backend.train()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i in range(0, len(prompts), cfg.micro_batch_size):
            sl = slice(i, i + cfg.micro_batch_size)
            logp, mask, _ = backend.logprobs(prompts[sl], targets[sl])
            loss = -(logp * mask).sum() / n_tokens
            loss.backward()
            loss_sum += loss.item()
        grad_norm = backend.clip_grad_norm(cfg.optim.max_grad_norm)
        loss_sum = float(replicas.sum([loss_sum]))
        optimizer.step()
        scheduler.step()
        step_s = time.perf_counter() - t0
        tokens = float(replicas.sum([sum(len(p.input_ids) + len(t) for p, t in zip(prompts, targets))]))
        metrics = {"loss": loss_sum, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": tokens / step_s, "step_s": step_s}  # fmt: skip
        return metrics, position, None

    run_steps(ctx, optimizer, scheduler, step,
              lambda m: {"loss": f"{m['loss']:.3f}", "tok_s": f"{m['tokens_per_s']:.0f}"})  # fmt: skip
