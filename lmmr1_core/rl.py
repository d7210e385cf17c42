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
from lmmr1_core.distributed import current, replicas_of, replicas_scope
from lmmr1_core.episodes import episode_record
from lmmr1_core.errors import ConfigError
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
    # torchrun: the mini-batches are drawn from the whole batch (every replica's rows, numbered in replica
    # order) exactly as one process would, each replica training its own rows of each; the normalisers
    # count every replica's rows and the gradients are summed.
    replicas = current()
    sizes = replicas.gather(len(ro.completions))
    first, total = sum(sizes[: replicas.rank]), sum(sizes)
    for _epoch in range(algo_cfg.epochs):
        perm = torch.randperm(total) if algo_cfg.mini_batches > 1 else torch.arange(total)
        for chunk in torch.tensor_split(perm, algo_cfg.mini_batches):
            idx = [i - first for i in chunk.tolist() if first <= i < first + sizes[replicas.rank]]
            n_tokens, n_seqs = replicas.sum([float(tg.mask[idx].sum()), float(tg.applicable[idx].sum())]).tolist()
            n_tokens, n_seqs = n_tokens or 1.0, int(n_seqs) or 1
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
    summed = [k for k in stats if k != "grad_norm"]  # each replica's part of a global mean; the norm is global
    for k, v in zip(summed, replicas.sum([stats[k] for k in summed]).tolist()):
        stats[k] = v
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
                 stats: dict[str, float], lr: float, times: dict[str, float]) -> dict:  # fmt: skip
    """One row of metrics.jsonl (the stage's counters are added by the loop): over the whole batch, every
    replica's rows summed under torchrun; the timings are this process's."""
    algo_cfg, G = ctx.config.algorithm, ctx.config.algorithm.group_size
    scored = ro.rewards[tg.applicable]
    adv_tokens = tg.advantages[tg.mask.bool()]
    flat, groups = (ro.groups_dropped, ro.groups_seen) if algorithm.dynamic_sampling else _zero_variance(
        ro.rewards if ro.episode_rewards is None else ro.episode_rewards, G)  # fmt: skip
    local = {
        "n": len(scored), "r": float(scored.sum()), "r2": float((scored.double() ** 2).sum()),
        "adv_n": len(adv_tokens), "adv": float(adv_tokens.sum()), "adv2": float((adv_tokens.double() ** 2).sum()),
        "mask": float(tg.mask.sum()), "kl_r": float(tg.kl_reward.sum()) if tg.kl_reward is not None else 0.0,
        "rows": len(ro.completions), "completion_tokens": sum(len(c) for c in ro.completions),
        "all_tokens": sum(len(p.input_ids) + len(c) for p, c in zip(ro.prompts, ro.completions)),
        "not_applicable": int((~tg.applicable).sum()), "flat": flat, "groups": groups,
        **{f"{k}:sum": sum(x for x in v if x is not None) for k, v in ro.per_reward.items()},
        **{f"{k}:n": sum(x is not None for x in v) for k, v in ro.per_reward.items()},
        **rewards.counters(),
    }
    replicas = current()
    g = dict(zip(local, replicas.sum(list(local.values())).tolist()))
    n, adv_n = g["n"], g["adv_n"]
    use_kl = tg.ref_logp is not None
    if tg.kl_reward is not None:
        stats["kl"] = -g["kl_r"] / algo_cfg.kl.coef / (g["mask"] or 1.0)
    per_rank = max(replicas.gather(ro.groups_seen))
    return {
        "reward/mean": g["r"] / n if n else None,
        "reward/std": _std(g["r"], g["r2"], n),
        **{f"reward/{k}": (g[f"{k}:sum"] / g[f"{k}:n"] if g[f"{k}:n"] else None) for k in ro.per_reward},
        **{k: int(g[k]) for k in rewards.counters()},
        "kl": stats["kl"] if use_kl else None,
        **{k: stats[k] for k in ("loss", "entropy", "clip_frac", "approx_kl", "grad_norm")},
        **({"value_loss": stats["value_loss"]} if tg.values is not None else {}),
        **({"rollout/logp_abs_diff": stats["rollout/logp_abs_diff"]} if ro.rollout_logp is not None else {}),
        **({k: stats[k] for k in ("tis/weight_mean", "tis/capped_frac")} if algo_cfg.tis_cap else {}),
        **({"rollout/sync_s": ctx.engine.last_sync_s} if ctx.engine is not None else {}),
        **({"rollout/replicas": replicas.size, "rollout/prompts_per_rank": per_rank} if replicas.size > 1 else {}),
        "lr": lr,
        "advantage/mean": g["adv"] / adv_n if adv_n else 0.0,
        "advantage/std": _std(g["adv"], g["adv2"], adv_n) or 0.0,
        "groups/zero_variance_frac": g["flat"] / g["groups"] if g["groups"] else 0.0,
        "response_length": g["completion_tokens"] / g["rows"],
        "tokens_per_s": g["all_tokens"] / times["step_s"],
        **times,
        "not_applicable": int(g["not_applicable"]),
    }


def _std(total: float, squares: float, n: float) -> float:
    """The sample standard deviation from a sum and a sum of squares (what replicas can add up)."""
    if n < 2:
        return 0.0
    return max(squares - total * total / n, 0.0) ** 0.5 / (n - 1) ** 0.5


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
    replicas = replicas_of(backend)
    if replicas.size > cfg.batch_size:
        raise ConfigError(f"stages.{ctx.name}.batch_size: {cfg.batch_size} prompts per step cannot be shared "
                          f"among {replicas.size} data-parallel replicas; use at least {replicas.size}")  # fmt: skip

    def step(n: int, position: int):
        if ctx.checkpoint is not None and n == ctx.checkpoint[0] + 1 and replicas.rank == 0:
            rewards.restore(ctx.counters)  # resumed: the counts go on (summed over the replicas)
        t0 = time.perf_counter()
        # 1. Rollout and rewards (under torchrun, this replica's share of the prompt groups).
        backend.train()
        if cfg.env is not None:
            ro, position = collect_episode_rollout(ctx, order, position)
        else:
            ro, position = collect_rollout(ctx, rewards, algorithm, order, position,
                                           TrainerState(n - 1, cfg.steps, ctx.name))  # fmt: skip
        t_gen = time.perf_counter() - t0
        # 2-3. Old and reference log-probs, critic values, advantages.
        t1 = time.perf_counter()
        with torch.no_grad():  # no graph for the old policy's forward, and the thread tuner's "scoring" phase
            targets = make_targets(ctx, algorithm, ro, reuse_old=updates_per_step == 1)
        # 4. Updates: epochs x mini-batches optimizer steps, each accumulated over micro-batches.
        stats = update_policy(ctx, algorithm, ro, targets, optimizer, scheduler)
        t_train = time.perf_counter() - t1
        # 5. Log (the loop writes it, checkpoints and asks the on_step_end hooks).
        times = {"step_s": time.perf_counter() - t0, "generation_s": t_gen - ro.score_s, "scoring_s": ro.score_s,
                 "train_s": t_train}  # fmt: skip
        lr = scheduler.get_last_lr()[0]
        metrics = step_metrics(ctx, algorithm, rewards, ro, targets, stats, lr, times)
        ctx.counters.update({k: metrics[k] for k in rewards.counters()})  # checkpointed with the stage's counters
        rows = [r for part in replicas.gather(sample_rows(ro)) for r in part][:16]
        return metrics, position, rows

    def postfix(m: dict) -> dict:
        kl = f"{m['kl']:.4f}" if m["kl"] is not None else "off"
        return {"reward": f"{m['reward/mean'] or 0:.3f}", "kl": kl, "tok_s": f"{m['tokens_per_s']:.0f}"}

    try:
        with replicas_scope(replicas):
            run_steps(ctx, optimizer, scheduler, step, postfix)
    finally:
        rewards.close()


def _zero_variance(rewards: torch.Tensor, group_size: int) -> tuple[int, int]:
    """(groups whose applicable rewards are all equal: they give no gradient, groups)."""
    groups = rewards.view(-1, group_size)
    flat = 0
    for g in groups:
        vals = g[~torch.isnan(g)]
        flat += int(len(vals) < 2 or bool((vals == vals[0]).all()))
    return flat, len(groups)
