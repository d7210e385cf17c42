"""The ``rl`` stage: generate, score, advantages, loss, step, log, checkpoint — top to bottom.

Each step collects one rollout batch (``batch_size`` prompts x ``group_size`` completions, or episodes;
``rollout.py``), then
makes ``epochs x mini_batches`` optimizer updates on it. With one update the "old" log-probs are
the current ones (detached) and no extra forward is spent on them; with more they are computed
once before the first update and kept, as PPO requires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lmmr1_core import load_algorithm
from lmmr1_core.contracts import CRITIC, REFERENCE, Algorithm, require
from lmmr1_core.episodes import episode_record
from lmmr1_core.prompts import user_text
from lmmr1_core.rewards import RewardSet, TrainerState
from lmmr1_core.rollout import Rollout, collect_episode_rollout, collect_rollout, completion_mask
from lmmr1_core.trainer import DataOrder, StageContext, make_optimizer, run_steps


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimates (Schulman's k1/k2/k3); k3 is unbiased and >= 0."""
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, n_tokens: float, n_seqs: int) -> torch.Tensor:
    """Reduce a micro-batch's token losses so that summing over micro-batches equals the full-batch loss."""
    if how == "token_mean":
        return (per_token * mask).sum() / n_tokens
    seq_sum = (per_token * mask).sum(-1)
    if how == "seq_mean_token_sum":
        return seq_sum.sum() / n_seqs
    return (seq_sum / mask.sum(-1).clamp(min=1)).sum() / n_seqs  # seq_mean_token_mean


@torch.no_grad()
def score_tokens(ctx: StageContext, fn, ro: Rollout, T: int) -> torch.Tensor:
    """Run ``fn(prompts, completions) -> [b, t]`` over micro-batches into one ``[B, T]`` tensor."""
    out = torch.zeros(len(ro.completions), T)
    mb = ctx.config.micro_batch_size
    for i in range(0, len(ro.completions), mb):
        part = fn(ro.prompts[i : i + mb], ro.completions[i : i + mb]).float().cpu()
        out[i : i + mb, : part.shape[1]] = part
    return out


@dataclass
class Targets:
    """What the updates of one rollout batch need, all ``[B, T]`` except ``applicable`` (``[B]``)."""

    mask: torch.Tensor  # completion tokens that are trained (not padding, not env tokens, reward applied)
    applicable: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None  # critic targets (ppo)
    old_logp: torch.Tensor | None  # None: one update per batch, the current log-probs are the old ones
    ref_logp: torch.Tensor | None  # None: KL off
    values: torch.Tensor | None  # None: no critic
    rollout_logp: torch.Tensor | None = None  # None: the rollout engine's log-probs are not used
    kl_reward: torch.Tensor | None = None  # KL in the reward: -coef * KL per token (logged as kl)


def update_policy(
    ctx: StageContext, algorithm: Algorithm, ro: Rollout, tg: Targets, optimizer, scheduler
) -> dict[str, float]:
    """``epochs`` x ``mini_batches`` optimizer steps on one rollout batch; returns the averaged statistics."""
    cfg, backend = ctx.config, ctx.backend
    algo_cfg, kl, temp = cfg.algorithm, cfg.algorithm.kl, cfg.generation.temperature
    loss_agg = algo_cfg.loss_agg or algorithm.default_loss_agg
    n_updates = algo_cfg.epochs * algo_cfg.mini_batches
    stats = dict.fromkeys(("loss", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "grad_norm"), 0.0)
    stats.update(dict.fromkeys(("rollout/logp_abs_diff", "tis/weight_mean", "tis/capped_frac"), 0.0))
    tis_cap = algo_cfg.tis_cap
    B = len(ro.completions)
    for _epoch in range(algo_cfg.epochs):
        perm = torch.randperm(B) if algo_cfg.mini_batches > 1 else torch.arange(B)
        for idx in perm.chunk(algo_cfg.mini_batches):
            idx = idx.tolist()
            n_tokens = float(tg.mask[idx].sum()) or 1.0
            n_seqs = int(tg.applicable[idx].sum()) or 1
            optimizer.zero_grad(set_to_none=True)
            for j in range(0, len(idx), cfg.micro_batch_size):
                mb = idx[j : j + cfg.micro_batch_size]
                prompts, comps = [ro.prompts[i] for i in mb], [ro.completions[i] for i in mb]
                logp, _, entropy = backend.logprobs(prompts, comps, temp, with_entropy=True)
                t = logp.shape[1]
                m = tg.mask[mb, :t].to(logp)
                old = logp.detach() if tg.old_logp is None else tg.old_logp[mb, :t].to(logp)
                per_token, algo_stats = algorithm.policy_loss(logp, old, tg.advantages[mb, :t].to(logp), m)
                if tg.rollout_logp is not None:  # the trainer's old policy vs the engine that sampled
                    gap = (old - tg.rollout_logp[mb, :t].to(logp)) * m
                    share_t = 1.0 / n_tokens / n_updates
                    stats["rollout/logp_abs_diff"] += float(gap.abs().sum()) * share_t
                    if tis_cap is not None:  # truncated importance sampling (Yao et al., 2025)
                        w = torch.exp(gap).clamp(max=tis_cap).detach()
                        per_token = per_token * w
                        stats["tis/weight_mean"] += float((w * m).sum()) * share_t
                        stats["tis/capped_frac"] += float(((torch.exp(gap) > tis_cap) * m).sum()) * share_t
                if tg.ref_logp is not None and not kl.in_reward:
                    k = kl_penalty(logp, tg.ref_logp[mb, :t].to(logp), kl.estimator)
                    per_token = per_token + kl.coef * k
                    stats["kl"] += float((k.detach() * m).sum()) / n_tokens / n_updates
                loss = aggregate(per_token, m, loss_agg, n_tokens, n_seqs)
                loss.backward()
                share = float(m.sum()) / n_tokens / n_updates
                stats["loss"] += loss.item() / n_updates
                stats["entropy"] += float((entropy * m).sum()) / n_tokens / n_updates
                stats["clip_frac"] += algo_stats.get("clip_frac", 0.0) * share
                log_ratio = (old - logp.detach()) * m  # k3 estimate of KL(old || new)
                stats["approx_kl"] += float(((torch.exp(log_ratio) - 1 - log_ratio) * m).sum()) / n_tokens / n_updates
                if tg.values is not None:
                    v = backend.values(prompts, comps)
                    vl = algorithm.value_loss(v, tg.values[mb, :t].to(v), tg.returns[mb, :t].to(v), m)
                    (vl.sum() / n_tokens).backward()
                    stats["value_loss"] += float(vl.detach().sum()) / n_tokens / n_updates
            stats["grad_norm"] += backend.clip_grad_norm(cfg.optim.max_grad_norm) / n_updates
            optimizer.step()
            scheduler.step()
            if ctx.engine is not None:
                ctx.engine.weights_changed()
            if tg.values is not None:
                backend.critic_step(cfg.optim.max_grad_norm)
    return stats


def sample_rows(ro: Rollout) -> list[dict]:
    """What samples.jsonl keeps of a step: up to 16 completions (or episodes) with their rewards."""
    if ro.episodes is not None:
        return [{**episode_record(e), "reward": float(r)} for e, r in zip(ro.episodes[:16], ro.rewards)]
    rows = []
    for j, (s, text) in enumerate(zip(ro.samples[:16], ro.texts)):
        rew = None if torch.isnan(ro.rewards[j]) else float(ro.rewards[j])
        rows.append({"id": s.id, "prompt": user_text(s.messages), "completion": text, "answer": s.answer,
                     "reward": rew, "rewards": {k: v[j] for k, v in ro.per_reward.items()}})  # fmt: skip
    return rows


def make_targets(ctx: StageContext, algorithm: Algorithm, ro: Rollout, reuse_old: bool) -> Targets:
    """What the updates need from before them: the trained-token mask, old and reference log-probs, the
    critic's values, and the advantages (``[B, T]``, zero where no reward applied or past a completion)."""
    backend, kl, temp = ctx.backend, ctx.config.algorithm.kl, ctx.config.generation.temperature
    T = max(len(c) for c in ro.completions)
    applicable = ~torch.isnan(ro.rewards)
    mask = completion_mask(ro.completions) * applicable.unsqueeze(-1)
    if ro.loss_mask is not None:  # only the model's own turns are trained
        mask = mask * ro.loss_mask
    current = lambda p, c: backend.logprobs(p, c, temp)[0]  # noqa: E731
    old_logp = None if reuse_old else score_tokens(ctx, current, ro, T)
    ref_logp = None
    if kl.coef > 0:
        ref_logp = score_tokens(ctx, lambda p, c: backend.logprobs(p, c, temp, reference=True)[0], ro, T)
    kl_reward = None
    if kl.coef > 0 and kl.in_reward:  # the sampling policy's KL, folded into the per-token reward
        behaviour = old_logp if old_logp is not None else score_tokens(ctx, current, ro, T)
        kl_reward = -kl.coef * kl_penalty(behaviour, ref_logp, kl.estimator) * mask
    values = score_tokens(ctx, backend.values, ro, T) if algorithm.needs_critic else None

    outcome, token_r = ro.rewards, kl_reward
    if ro.dense_rewards is not None:  # per-turn env rewards ride with the per-token (KL) rewards
        token_r = ro.dense_rewards if token_r is None else token_r + ro.dense_rewards
        outcome = torch.where(applicable, torch.zeros_like(outcome), outcome)
    G = ctx.config.algorithm.group_size
    returns = None
    if ro.unit_episode is not None:  # per-turn sequences: advantages per episode, shared by its turns
        n_episodes = len(ro.episode_rewards)
        episode_adv = algorithm.advantages(ro.episode_rewards, G, torch.ones(n_episodes, 1))[:, 0]
        advantages = episode_adv[ro.unit_episode].unsqueeze(-1) * mask
    else:
        advantages = algorithm.advantages(outcome, G, mask, token_r, values) * mask
        if values is not None:
            returns = algorithm.value_targets(outcome, mask, token_r, values)
    return Targets(mask, applicable, advantages, returns, old_logp, ref_logp, values, ro.rollout_logp, kl_reward)


def step_metrics(ctx: StageContext, algorithm: Algorithm, rewards: RewardSet, ro: Rollout, tg: Targets,
                 stats: dict[str, float], lr: float, times: tuple[float, float, float]) -> dict:  # fmt: skip
    """One row of metrics.jsonl (the stage's counters are added by the loop)."""
    algo_cfg, G = ctx.config.algorithm, ctx.config.algorithm.group_size
    step_s, t_gen, t_train = times
    B = len(ro.completions)
    scored = ro.rewards[tg.applicable]
    adv_tokens = tg.advantages[tg.mask.bool()]
    all_tokens = sum(len(p.input_ids) + len(c) for p, c in zip(ro.prompts, ro.completions))
    use_kl = tg.ref_logp is not None
    if tg.kl_reward is not None:
        stats["kl"] = float(-(tg.kl_reward.sum()) / algo_cfg.kl.coef / (float(tg.mask.sum()) or 1.0))
    zero_var = (ro.groups_dropped / ro.groups_seen if algorithm.dynamic_sampling
                else _zero_variance_frac(ro.rewards if ro.episode_rewards is None else ro.episode_rewards, G))
    return {
        "reward/mean": float(scored.mean()) if len(scored) else None,
        "reward/std": float(scored.std()) if len(scored) > 1 else 0.0,
        **{f"reward/{k}": _mean(v) for k, v in ro.per_reward.items()},
        **rewards.counters(),
        "kl": stats["kl"] if use_kl else None,
        **{k: stats[k] for k in ("loss", "entropy", "clip_frac", "approx_kl", "grad_norm")},
        **({"value_loss": stats["value_loss"]} if tg.values is not None else {}),
        **({"rollout/logp_abs_diff": stats["rollout/logp_abs_diff"]} if ro.rollout_logp is not None else {}),
        **({k: stats[k] for k in ("tis/weight_mean", "tis/capped_frac")} if algo_cfg.tis_cap else {}),
        **({"rollout/sync_s": ctx.engine.last_sync_s} if ctx.engine is not None else {}),
        "lr": lr,
        "advantage/mean": float(adv_tokens.mean()) if len(adv_tokens) else 0.0,
        "advantage/std": float(adv_tokens.std()) if len(adv_tokens) > 1 else 0.0,
        "groups/zero_variance_frac": zero_var,
        "response_length": sum(len(c) for c in ro.completions) / B,
        "tokens_per_s": all_tokens / step_s,
        "step_s": step_s,
        "generation_s": t_gen,
        "train_s": t_train,
        "not_applicable": int((~tg.applicable).sum()),
    }


def run_rl(ctx: StageContext) -> None:
    cfg, backend = ctx.config, ctx.backend
    algo_cfg = cfg.algorithm
    algorithm = load_algorithm(algo_cfg.name, **algo_cfg.algorithm_config())
    rewards = RewardSet.from_specs(cfg.rewards)  # none in env stages: the env rewards
    updates_per_step = algo_cfg.epochs * algo_cfg.mini_batches
    optimizer, scheduler = make_optimizer(ctx, cfg.steps * updates_per_step)
    if algorithm.needs_critic:
        require(backend, CRITIC, f"algorithm {algo_cfg.name!r}")
        backend.make_critic(algorithm.critic_lr)
        ctx.critic = True
    if algo_cfg.kl.coef > 0:
        require(backend, REFERENCE, "algorithm.kl.coef > 0")
        backend.make_reference(ctx.init_path)  # the stage's starting weights, also after a resume
    order = DataOrder(len(ctx.samples), cfg.seed)

    def step(n: int, position: int):
        if ctx.checkpoint is not None and n == ctx.checkpoint[0] + 1:  # resumed: the counts go on
            rewards.restore(ctx.counters)
        t0 = time.perf_counter()
        # 1. Rollout and rewards.
        backend.train()
        if cfg.env is not None:
            ro, position = collect_episode_rollout(ctx, order, position)
        else:
            ro, position = collect_rollout(ctx, rewards, algorithm, order, position,
                                           TrainerState(n - 1, cfg.steps, ctx.name))  # fmt: skip
        t_gen = time.perf_counter() - t0
        # 2-3. Old and reference log-probs, critic values, advantages.
        t1 = time.perf_counter()
        targets = make_targets(ctx, algorithm, ro, reuse_old=updates_per_step == 1)
        # 4. Updates: epochs x mini-batches optimizer steps, each accumulated over micro-batches.
        stats = update_policy(ctx, algorithm, ro, targets, optimizer, scheduler)
        t_train = time.perf_counter() - t1
        # 5. Log (the loop writes it, checkpoints and asks the on_step_end hooks).
        step_s = time.perf_counter() - t0
        lr = scheduler.get_last_lr()[0]
        metrics = step_metrics(ctx, algorithm, rewards, ro, targets, stats, lr, (step_s, t_gen, t_train))
        ctx.counters.update(rewards.counters())  # checkpointed with the stage's other counters
        return metrics, position, sample_rows(ro)

    def postfix(m: dict) -> dict:
        kl = f"{m['kl']:.4f}" if m["kl"] is not None else "off"
        return {"reward": f"{m['reward/mean'] or 0:.3f}", "kl": kl, "tok_s": f"{m['tokens_per_s']:.0f}"}

    try:
        run_steps(ctx, optimizer, scheduler, step, postfix)
    finally:
        rewards.close()


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _zero_variance_frac(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose applicable rewards are all equal (they give no gradient)."""
    groups = rewards.view(-1, group_size)
    flat = 0
    for g in groups:
        vals = g[~torch.isnan(g)]
        flat += int(len(vals) < 2 or bool((vals == vals[0]).all()))
    return flat / len(groups)
