"""Rollouts: prompt groups sampled and scored, or multi-turn episodes played, as one batch of sequences."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lmmr1_core.contracts import Algorithm
from lmmr1_core.distributed import current
from lmmr1_core.episodes import dense_rewards, episode_reward, run_episodes
from lmmr1_core.rewards import RewardSet, TrainerState, reward_columns
from lmmr1_core.trainer import DataOrder, StageContext, generate, next_prompts


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
    score_s: float = 0.0  # seconds spent in the rewards (part of the rollout's time)


def collect_rollout(ctx: StageContext, rewards: RewardSet, algorithm: Algorithm, order: DataOrder, position: int,
                    state: TrainerState):
    """Sample groups and score them; with dynamic sampling (DAPO) groups whose rewards are all equal
    carry no signal, so they are dropped and more prompts sampled, up to ``max_sampling_rounds``.

    Under torchrun every rank picks the same ``batch_size`` prompts and keeps its replica's share of the
    groups (whole groups: group statistics stay local); DAPO samples on until every replica has its
    share of informative groups."""
    cfg, backend, gen = ctx.config, ctx.backend, ctx.config.generation
    G = cfg.algorithm.group_size
    replicas = current()
    want = len(replicas.share(cfg.batch_size))  # this replica's groups
    want_logp = wants_rollout_logprobs(ctx)
    kept: list[tuple] = []
    dropped: list[tuple] = []
    seen, score_s = 0, 0.0
    for _ in range(cfg.algorithm.max_sampling_rounds if algorithm.dynamic_sampling else 1):
        samples, messages, prompts, position = next_prompts(ctx, order, position, cfg.batch_size,
                                                            gen.max_prompt_length)  # fmt: skip
        mine = replicas.share(len(samples))
        samples, messages, prompts = ([x[i] for i in mine] for x in (samples, messages, prompts))
        samples = [s for s in samples for _ in range(G)]
        messages = [m for m in messages for _ in range(G)]
        prompts = [p for p in prompts for _ in range(G)]
        completions, logps = generate(ctx, prompts, greedy=gen.greedy, with_logprobs=want_logp)
        logps = logps or [None] * len(completions)
        texts = [backend.decode(c) for c in completions]
        columns = reward_columns(samples, completions)
        t_score = time.perf_counter()
        totals, per_reward = rewards(messages, texts, columns, state)
        score_s += time.perf_counter() - t_score
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
        if replicas.min(float(len(kept) >= want)) > 0:
            break
    n_dropped = seen - len(kept)
    kept = (kept + dropped)[:want]  # too few informative groups: train on what there is
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
        score_s=score_s,
    ), position


def wants_rollout_logprobs(ctx: StageContext) -> bool:
    """The rollout engine's own log-probs are kept when they can differ from the trainer's (an engine with
    ``separate_logprobs``) or when truncated importance sampling needs them. Both engines report them before
    top-p, the trainer's distribution; with ``top_p < 1`` a separate engine's come after it (vLLM's), so they
    are not compared (and TIS is refused at validation)."""
    if ctx.config.algorithm.tis_cap is not None:
        return True
    return ctx.engine is not None and ctx.engine.separate_logprobs and ctx.config.generation.top_p == 1.0


def _pad_rows(rows: list[list[float]]) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([list(r) + [0.0] * (T - len(r)) for r in rows])


def collect_episode_rollout(ctx: StageContext, order: DataOrder, position: int):
    """Multi-turn: ``group_size`` episodes per env seed; the episode's return (or success) is the reward."""
    cfg, G = ctx.config, ctx.config.algorithm.group_size
    every = [ctx.samples[order.index(position + i)] for i in range(cfg.batch_size)]
    seeds = [every[i] for i in current().share(len(every))]  # torchrun: this replica's share
    samples = [s for s in seeds for _ in range(G)]
    want_logp = wants_rollout_logprobs(ctx)
    episodes = run_episodes(ctx, samples, greedy=cfg.generation.greedy, with_logprobs=want_logp)
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
        ), position + len(every)
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
    ), position + len(every)


def completion_mask(completions: list[list[int]]) -> torch.Tensor:
    T = max(len(c) for c in completions)
    return torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions])
