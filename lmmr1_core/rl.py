"""The ``rl`` stage: generate, score, advantages, loss, step, log, checkpoint — top to bottom.

Each step collects one rollout batch (``batch_size`` prompts x ``group_size`` completions), then
makes ``epochs x mini_batches`` optimizer updates on it. With one update the "old" log-probs are
the current ones (detached) and no extra forward is spent on them; with more they are computed
once before the first update and kept, as PPO requires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lmmr1_core import load_algorithm
from lmmr1_core.episodes import dense_rewards, episode_record, episode_reward, run_episodes
from lmmr1_core.metrics import main_process
from lmmr1_core.rewards import RewardSet, reward_columns
from lmmr1_core.trainer import (
    DataOrder,
    StageContext,
    build_messages,
    generate,
    make_optimizer,
    next_prompts,
    resume,
    save_checkpoint,
    save_final,
    stop_requested,
)


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


@dataclass
class Rollout:
    samples: list
    prompts: list
    completions: list[list[int]]
    texts: list[str]
    rewards: torch.Tensor  # [B], NaN where no reward applied
    per_reward: dict[str, list[float | None]]
    groups_seen: int
    groups_dropped: int
    loss_mask: torch.Tensor | None = None  # [B, T]: 0 on env-written tokens of multi-turn episodes
    dense_rewards: torch.Tensor | None = None  # [B, T]: per-turn env rewards (env reward: per_turn)
    unit_episode: torch.Tensor | None = None  # keep_images: the episode each per-turn sequence belongs to
    episode_rewards: torch.Tensor | None = None
    episodes: list | None = None
    rollout_logp: torch.Tensor | None = None  # [B, T]: the rollout engine's log-probs of the sampled tokens


def collect_rollout(ctx: StageContext, rewards: RewardSet, algorithm, order: DataOrder, position: int):
    """Sample groups and score them; with dynamic sampling (DAPO) groups whose rewards are all equal
    carry no signal, so they are dropped and more prompts sampled, up to ``max_sampling_rounds``."""
    cfg, backend, gen = ctx.config, ctx.backend, ctx.config.generation
    G = cfg.algorithm.group_size
    want_logp = wants_rollout_logprobs(ctx)
    kept: list[tuple] = []
    dropped: list[tuple] = []
    seen = 0
    for _ in range(cfg.algorithm.max_sampling_rounds if algorithm.dynamic_sampling else 1):
        samples, prompts, position = next_prompts(ctx, order, position, cfg.batch_size, gen.max_prompt_length)
        samples = [s for s in samples for _ in range(G)]
        prompts = [p for p in prompts for _ in range(G)]
        completions, logps = generate(ctx, prompts, with_logprobs=want_logp)
        logps = logps or [None] * len(completions)
        texts = [backend.decode(c) for c in completions]
        columns = reward_columns(samples, completions)
        messages = [build_messages(s.messages, cfg) for s in samples]
        totals, per_reward = rewards(messages, texts, columns)
        r = torch.tensor([float("nan") if t is None else t for t in totals])
        lengths = torch.tensor([len(c) for c in completions])
        r = algorithm.shape_rewards(r, lengths, gen.max_new_tokens)
        for g in range(len(samples) // G):
            sl = slice(g * G, (g + 1) * G)
            group = (samples[sl], prompts[sl], completions[sl], texts[sl], r[sl],
                     {k: v[sl] for k, v in per_reward.items()}, logps[sl])  # fmt: skip
            vals = r[sl][~torch.isnan(r[sl])]
            informative = len(vals) > 1 and bool((vals != vals[0]).any())
            (kept if informative or not algorithm.dynamic_sampling else dropped).append(group)
            seen += 1
        if len(kept) >= cfg.batch_size:
            break
    n_dropped = seen - len(kept)
    kept = (kept + dropped)[: cfg.batch_size]  # too few informative groups: train on what there is
    return Rollout(
        samples=[s for g in kept for s in g[0]],
        prompts=[p for g in kept for p in g[1]],
        completions=[c for g in kept for c in g[2]],
        texts=[t for g in kept for t in g[3]],
        rewards=torch.cat([g[4] for g in kept]),
        per_reward={k: [v for g in kept for v in g[5][k]] for k in kept[0][5]},
        groups_seen=seen,
        groups_dropped=n_dropped,
        rollout_logp=_pad_rows([lp for g in kept for lp in g[6]]) if want_logp else None,
    ), position


def wants_rollout_logprobs(ctx: StageContext) -> bool:
    """The rollout engine's own log-probs are kept when they can differ from the trainer's (vllm) or
    when truncated importance sampling needs them."""
    return ctx.run.model.rollout.engine == "vllm" or ctx.config.algorithm.tis_cap is not None


def _pad_rows(rows: list[list[float]]) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([list(r) + [0.0] * (T - len(r)) for r in rows])


def collect_episode_rollout(ctx: StageContext, order: DataOrder, position: int):
    """Multi-turn: ``group_size`` episodes per env seed; the episode's return (or success) is the reward."""
    cfg, G = ctx.config, ctx.config.algorithm.group_size
    seeds = [ctx.samples[order.index(position + i)] for i in range(cfg.batch_size)]
    samples = [s for s in seeds for _ in range(G)]
    want_logp = wants_rollout_logprobs(ctx)
    episodes = run_episodes(ctx, samples, with_logprobs=want_logp)
    per_reward = {
        "env/return": [sum(e.turn_rewards) for e in episodes],
        "env/success": [float(e.success) for e in episodes],
        "env/turns": [float(len(e.responses)) for e in episodes],
    }
    episode_rewards = torch.tensor([episode_reward(e, cfg.env.reward) for e in episodes])
    if cfg.env.keep_images is not None:  # one training sequence per turn, sharing its episode's reward
        units = [(i, k, prompt, ids) for i, e in enumerate(episodes) for k, (prompt, ids) in enumerate(e.units)]
        unit_episode = torch.tensor([u[0] for u in units])
        return Rollout(
            samples=[episodes[i].sample for i, _, _, _ in units],
            prompts=[u[2] for u in units],
            completions=[u[3] for u in units],
            texts=[episodes[i].responses[k] for i, k, _, _ in units],
            rewards=episode_rewards[unit_episode],
            per_reward=per_reward,
            groups_seen=len(seeds),
            groups_dropped=0,
            episodes=episodes,
            unit_episode=unit_episode,
            episode_rewards=episode_rewards,
            rollout_logp=_pad_rows([episodes[i].unit_logps[k] for i, k, _, _ in units]) if want_logp else None,
        ), position + len(seeds)
    T = max(len(e.completion) for e in episodes)
    return Rollout(
        samples=samples,
        prompts=[e.training_prompt() for e in episodes],
        completions=[e.completion for e in episodes],
        texts=["\n---\n".join(e.responses) for e in episodes],
        rewards=episode_rewards,
        per_reward=per_reward,
        groups_seen=len(seeds),
        groups_dropped=0,
        loss_mask=_pad_rows([e.loss_mask for e in episodes]),
        dense_rewards=dense_rewards(episodes, T) if cfg.env.reward == "per_turn" else None,
        episodes=episodes,
        rollout_logp=_pad_rows([e.rollout_logp for e in episodes]) if want_logp else None,
    ), position + len(seeds)


def completion_mask(completions: list[list[int]]) -> torch.Tensor:
    T = max(len(c) for c in completions)
    return torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions])


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


def update_policy(ctx: StageContext, algorithm, ro: Rollout, tg: Targets, optimizer, scheduler) -> dict[str, float]:
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
        rows.append({"id": s.id, "prompt": _last_user_text(s.messages), "completion": text, "answer": s.answer,
                     "reward": rew, "rewards": {k: v[j] for k, v in ro.per_reward.items()}})  # fmt: skip
    return rows


def run_rl(ctx: StageContext) -> None:
    cfg, backend = ctx.config, ctx.backend
    algo_cfg, gen = cfg.algorithm, cfg.generation
    G = algo_cfg.group_size
    algorithm = load_algorithm(algo_cfg.name, **algo_cfg.algorithm_config())
    rewards = RewardSet.from_specs(cfg.rewards)
    updates_per_step = algo_cfg.epochs * algo_cfg.mini_batches
    optimizer, scheduler = make_optimizer(ctx, cfg.steps * updates_per_step)
    if algorithm.needs_critic:
        backend.make_critic(algorithm.critic_lr)
    start, position = resume(ctx, optimizer, scheduler)
    kl = algo_cfg.kl
    use_kl = kl.coef > 0
    if use_kl:
        backend.make_reference(ctx.init_path)  # the stage's starting weights, also after a resume
    order = DataOrder(len(ctx.samples), cfg.seed)
    temp = gen.temperature
    ctx.hook.on_stage_start(stage=ctx.name, config=cfg, output_dir=str(ctx.out_dir))
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{ctx.name} (rl)", dynamic_ncols=True, disable=not main_process())
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # 1. Rollout and rewards.
            backend.train()
            if cfg.env is not None:
                ro, position = collect_episode_rollout(ctx, order, position)
            else:
                ro, position = collect_rollout(ctx, rewards, algorithm, order, position)
            t_gen = time.perf_counter() - t0
            B, T = len(ro.completions), max(len(c) for c in ro.completions)
            applicable = ~torch.isnan(ro.rewards)
            mask = completion_mask(ro.completions) * applicable.unsqueeze(-1)
            if ro.loss_mask is not None:  # only the model's own turns are trained
                mask = mask * ro.loss_mask

            # 2. What the update needs from before it: old and reference log-probs, critic values.
            t1 = time.perf_counter()
            reuse_old = updates_per_step == 1
            old_logp = None if reuse_old else score_tokens(ctx, lambda p, c: backend.logprobs(p, c, temp)[0], ro, T)
            ref_logp = None
            if use_kl:
                ref_logp = score_tokens(ctx, lambda p, c: backend.logprobs(p, c, temp, reference=True)[0], ro, T)
            kl_reward = None
            if use_kl and kl.in_reward:  # the sampling policy's KL, folded into the per-token reward
                behaviour = old_logp if old_logp is not None else score_tokens(
                    ctx, lambda p, c: backend.logprobs(p, c, temp)[0], ro, T)  # fmt: skip
                kl_reward = -kl.coef * kl_penalty(behaviour, ref_logp, kl.estimator) * mask
            values = score_tokens(ctx, backend.values, ro, T) if algorithm.needs_critic else None

            # 3. Advantages ([B, T]; zero where no reward applied or past a completion's end).
            outcome, token_r = ro.rewards, kl_reward
            if ro.dense_rewards is not None:  # per-turn env rewards ride with the per-token (KL) rewards
                token_r = ro.dense_rewards if token_r is None else token_r + ro.dense_rewards
                outcome = torch.where(applicable, torch.zeros_like(outcome), outcome)
            if ro.unit_episode is not None:  # per-turn sequences: advantages per episode, shared by its turns
                n_episodes = len(ro.episode_rewards)
                episode_adv = algorithm.advantages(ro.episode_rewards, G, torch.ones(n_episodes, 1))[:, 0]
                advantages, returns = episode_adv[ro.unit_episode].unsqueeze(-1) * mask, None
            else:
                advantages = algorithm.advantages(outcome, G, mask, token_r, values) * mask
                returns = algorithm.value_targets(outcome, mask, token_r, values) if values is not None else None

            # 4. Updates: epochs x mini-batches optimizer steps, each accumulated over micro-batches.
            targets = Targets(mask, applicable, advantages, returns, old_logp, ref_logp, values, ro.rollout_logp)
            stats = update_policy(ctx, algorithm, ro, targets, optimizer, scheduler)
            if use_kl and kl.in_reward:
                stats["kl"] = float(-(kl_reward.sum()) / kl.coef / (float(mask.sum()) or 1.0))
            t_train = time.perf_counter() - t1

            # 5. Log.
            step_s = time.perf_counter() - t0
            scored = ro.rewards[applicable]
            adv_tokens = advantages[mask.bool()]
            all_tokens = sum(len(p.input_ids) + len(c) for p, c in zip(ro.prompts, ro.completions))
            metrics = {
                "reward/mean": float(scored.mean()) if len(scored) else None,
                "reward/std": float(scored.std()) if len(scored) > 1 else 0.0,
                **{f"reward/{k}": _mean(v) for k, v in ro.per_reward.items()},
                **rewards.counters(),
                "kl": stats["kl"] if use_kl else None,
                **{k: stats[k] for k in ("loss", "entropy", "clip_frac", "approx_kl", "grad_norm")},
                **({"value_loss": stats["value_loss"]} if values is not None else {}),
                **({"rollout/logp_abs_diff": stats["rollout/logp_abs_diff"]} if ro.rollout_logp is not None else {}),
                **({k: stats[k] for k in ("tis/weight_mean", "tis/capped_frac")} if algo_cfg.tis_cap else {}),
                **({"rollout/sync_s": backend.last_sync_s} if hasattr(backend, "last_sync_s") else {}),
                "lr": scheduler.get_last_lr()[0],
                "advantage/mean": float(adv_tokens.mean()) if len(adv_tokens) else 0.0,
                "advantage/std": float(adv_tokens.std()) if len(adv_tokens) > 1 else 0.0,
                "groups/zero_variance_frac": ro.groups_dropped / ro.groups_seen
                if algorithm.dynamic_sampling
                else _zero_variance_frac(ro.rewards if ro.episode_rewards is None else ro.episode_rewards, G),
                "response_length": sum(len(c) for c in ro.completions) / B,
                "tokens_per_s": all_tokens / step_s,
                "step_s": step_s,
                "generation_s": t_gen,
                "train_s": t_train,
                "not_applicable": int((~applicable).sum()),
                **ctx.counters,
            }
            ctx.log.metrics(step, metrics)
            if step % cfg.samples_every == 0:
                ctx.log.samples(step, sample_rows(ro))
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean'] or 0:.3f}",
                            kl=f"{metrics['kl']:.4f}" if use_kl else "off",
                            tok_s=f"{metrics['tokens_per_s']:.0f}")  # fmt: skip
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


def _zero_variance_frac(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose applicable rewards are all equal (they give no gradient)."""
    groups = rewards.view(-1, group_size)
    flat = 0
    for g in groups:
        vals = g[~torch.isnan(g)]
        flat += int(len(vals) < 2 or bool((vals == vals[0]).all()))
    return flat / len(groups)


def _last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return " ".join(i.get("text", "") for i in content or [] if isinstance(i, dict) and i.get("type") == "text")
    return ""
