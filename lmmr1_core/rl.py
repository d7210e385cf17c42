"""The ``rl`` stage: generate, score, advantages, loss, step, log, checkpoint — top to bottom.

One rollout batch is used for one optimizer step, so the "old" log-probs equal the current ones
(detached) and the ratio is 1 at the first and only update; the clipped-ratio form is kept so
several updates per batch (mini-batches / epochs) only change the loop, not the loss.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from lmmr1_core import load_algorithm, load_reward
from lmmr1_core.rewards import RewardSet
from lmmr1_core.trainer import (
    DataOrder,
    StageContext,
    make_optimizer,
    next_prompts,
    resume,
    save_checkpoint,
    save_final,
    stop_requested,
    with_system_prompt,
)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimates (Schulman's k1/k2/k3); k3 is unbiased and >= 0."""
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, how: str, n_tokens: float, n_seqs: int
) -> torch.Tensor:
    """Reduce a micro-batch's token losses so that summing over micro-batches equals the full-batch loss."""
    if how == "token_mean":
        return (per_token * mask).sum() / n_tokens
    seq_sum = (per_token * mask).sum(-1)
    if how == "seq_mean_token_sum":
        return seq_sum.sum() / n_seqs
    return (seq_sum / mask.sum(-1).clamp(min=1)).sum() / n_seqs  # seq_mean_token_mean


def run_rl(ctx: StageContext) -> None:
    cfg, backend = ctx.config, ctx.backend
    algo_cfg, gen = cfg.algorithm, cfg.generation
    G = algo_cfg.group_size
    algorithm = load_algorithm(algo_cfg.name, **algo_cfg.algorithm_config())
    rewards = RewardSet(
        [(r.name, load_reward(r.name, **r.reward_config()), r.weight, r.timeout_s) for r in cfg.rewards]
    )
    optimizer, scheduler = make_optimizer(ctx)
    start, position = resume(ctx, optimizer, scheduler)
    use_kl = algo_cfg.kl.coef > 0
    if use_kl:
        backend.make_reference(ctx.init_path)  # the stage's starting weights, also after a resume
    order = DataOrder(len(ctx.samples), cfg.seed)
    ctx.hook.on_stage_start(stage=ctx.name, config=cfg, output_dir=str(ctx.out_dir))
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{ctx.name} (rl)", dynamic_ncols=True)
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # 1. Rollout: every prompt repeated G times, one sampled completion each.
            samples, prompts, position = next_prompts(
                ctx, order, position, cfg.batch_size, gen.max_prompt_length
            )
            prompts = [p for p in prompts for _ in range(G)]
            samples = [s for s in samples for _ in range(G)]
            backend.train()
            completions = []
            for i in range(0, len(prompts), cfg.micro_batch_size * 4):
                completions += backend.generate(
                    prompts[i : i + cfg.micro_batch_size * 4], gen.max_new_tokens, gen.temperature, gen.top_p
                )
            texts = [backend.decode(c) for c in completions]
            t_gen = time.perf_counter() - t0

            # 2. Rewards: TRL's contract, dataset columns as keyword lists aligned with completions.
            columns = {
                "answer": [s.answer for s in samples],
                "images": [s.images for s in samples],
                "id": [s.id for s in samples],
                "completion_ids": completions,
            }
            for key in {k for s in samples for k in s.meta}:
                columns[key] = [s.meta.get(key) for s in samples]
            messages = [with_system_prompt(s.messages, cfg.system_prompt) for s in samples]
            totals, per_reward = rewards(messages, texts, columns)

            # 3. Advantages within each prompt's group; not-applicable rewards get no gradient.
            r = torch.tensor([float("nan") if t is None else t for t in totals])
            advantages = algorithm.advantages(r, G)
            applicable = ~torch.isnan(r)

            # 4. Loss and backward in micro-batches (gradient accumulation).
            t1 = time.perf_counter()
            n_tokens = float(sum(len(c) for c, ok in zip(completions, applicable) if ok)) or 1.0
            n_seqs = int(applicable.sum()) or 1
            optimizer.zero_grad(set_to_none=True)
            stats = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0}
            for i in range(0, len(prompts), cfg.micro_batch_size):
                sl = slice(i, i + cfg.micro_batch_size)
                logp, mask, entropy = backend.logprobs(
                    prompts[sl], completions[sl], gen.temperature, with_entropy=True
                )
                mask = mask * applicable[sl].unsqueeze(-1).to(mask)
                per_token, algo_stats = algorithm.policy_loss(
                    logp, logp.detach(), advantages[sl].to(logp), mask
                )
                if use_kl:
                    with torch.no_grad():
                        ref_logp, _, _ = backend.logprobs(
                            prompts[sl], completions[sl], gen.temperature, reference=True
                        )
                    kl = kl_penalty(logp, ref_logp, algo_cfg.kl.estimator)
                    per_token = per_token + algo_cfg.kl.coef * kl
                    stats["kl"] += float((kl.detach() * mask).sum()) / n_tokens
                loss = aggregate(per_token, mask, algo_cfg.loss_agg, n_tokens, n_seqs)
                loss.backward()
                stats["loss"] += loss.item()
                stats["entropy"] += float((entropy * mask).sum()) / n_tokens
                share = float(mask.sum()) / n_tokens
                stats["clip_frac"] += algo_stats.get("clip_frac", 0.0) * share

            # 5. Optimizer step.
            grad_norm = backend.clip_grad_norm(cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            t_train = time.perf_counter() - t1

            # 6. Log.
            step_s = time.perf_counter() - t0
            scored = [t for t in totals if t is not None]
            all_tokens = sum(len(p.input_ids) + len(c) for p, c in zip(prompts, completions))
            metrics = {
                "reward/mean": sum(scored) / len(scored) if scored else None,
                "reward/std": float(r[applicable].std()) if len(scored) > 1 else 0.0,
                **{f"reward/{k}": _mean(v) for k, v in per_reward.items()},
                **rewards.counters(),
                "kl": stats["kl"] if use_kl else None,
                "loss": stats["loss"],
                "entropy": stats["entropy"],
                "clip_frac": stats["clip_frac"],
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "advantage/mean": float(advantages[applicable].mean()) if n_seqs else 0.0,
                "advantage/std": float(advantages[applicable].std()) if n_seqs > 1 else 0.0,
                "response_length": sum(len(c) for c in completions) / len(completions),
                "tokens_per_s": all_tokens / step_s,
                "step_s": step_s,
                "generation_s": t_gen,
                "train_s": t_train,
                "not_applicable": len(totals) - len(scored),
                **ctx.counters,
            }
            ctx.log.metrics(step, metrics)
            if step % cfg.samples_every == 0:
                ctx.log.samples(
                    step,
                    [
                        {
                            "id": s.id,
                            "completion": t,
                            "answer": s.answer,
                            "reward": tot,
                            "rewards": {k: v[j] for k, v in per_reward.items()},
                        }
                        for j, (s, t, tot) in enumerate(zip(samples[:16], texts, totals))
                    ],
                )
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward/mean'] or 0:.3f}",
                kl=f"{metrics['kl']:.4f}" if use_kl else "off",
                tok_s=f"{metrics['tokens_per_s']:.0f}",
            )
            if step % cfg.save_every == 0 and step < cfg.steps:
                save_checkpoint(ctx, step, optimizer, scheduler, position)
            if stop_requested(ctx.hook.on_step_end(stage=ctx.name, step=step, metrics=metrics)):
                break
    finally:
        bar.close()
        rewards.close()
    save_final(ctx)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
