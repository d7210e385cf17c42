"""Pieces the algorithms share: group statistics, whitening, returns, the clipped surrogate.

Rewards arrive as a float tensor ``[B]`` with NaN for "not applicable" (a reward returned
``None``); such samples never get an advantage and never shift a group's statistics.
"""

from __future__ import annotations

import torch

from lmmr1_core.distributed import current


def group_mean_std(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (group mean, group std, valid) over the applicable members of its group."""
    groups = rewards.view(-1, group_size)
    valid = ~torch.isnan(groups)
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    filled = torch.where(valid, groups, torch.zeros_like(groups))
    mean = filled.sum(-1, keepdim=True) / count
    dev = torch.where(valid, groups - mean, torch.zeros_like(groups))
    std = ((dev**2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    size = groups.shape[-1]
    return mean.expand(-1, size).reshape(-1), std.expand(-1, size).reshape(-1), valid.reshape(-1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` by the mean/std of its unmasked entries: the whole batch, over every data-parallel
    replica's rows under torchrun (``lmmr1_core.distributed.current()``), as one process would."""
    replicas = current()
    n, total = replicas.sum([float(mask.sum()), float((x * mask).sum())]).tolist()
    n = max(n, 1.0)
    mean = total / n
    var = float(replicas.sum([float((((x - mean) * mask) ** 2).sum())])) / max(n - 1, 1.0)
    out = (x - mean) if shift_mean else x
    return out * (var + eps) ** -0.5 * mask


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last unmasked token (masks may have holes: env tokens of an episode)."""
    T = mask.shape[1]
    return (T - 1 - torch.flip(mask > 0, dims=[1]).float().argmax(-1)).long()


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl_reward: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token rewards: the outcome reward on each sequence's last token, plus the KL penalty."""
    out = torch.zeros_like(mask)
    out[torch.arange(len(rewards)), last_valid_index(mask)] = torch.nan_to_num(rewards, nan=0.0)
    if kl_reward is not None:
        out = out + kl_reward * mask
    return out * mask


def discounted_returns(token_r: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = r_t + gamma * G_next`` right to left over unmasked tokens; masked ones (padding, env
    tokens between an episode's turns) are skipped, so a return flows back across turns."""
    out = torch.zeros_like(token_r)
    running = torch.zeros(token_r.shape[0], dtype=token_r.dtype)
    for t in range(token_r.shape[1] - 1, -1, -1):
        valid = mask[:, t] > 0
        running = torch.where(valid, token_r[:, t] + gamma * running, running)
        out[:, t] = running
    return out * mask


def outcome_with_kl(rewards: torch.Tensor, mask: torch.Tensor, kl_reward: torch.Tensor | None) -> torch.Tensor:
    """For outcome-level algorithms a KL-in-reward penalty is summed into the sequence's reward."""
    if kl_reward is None:
        return rewards
    return rewards + (kl_reward * mask).sum(-1)


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's per-token ``-min(ratio * A, clip(ratio, 1-low, 1+high) * A)`` and its clip fraction."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.min(unclipped, clipped)
    with torch.no_grad():
        clip_frac = ((clipped < unclipped).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"clip_frac": float(clip_frac)}


class PolicyGradient:
    """The shared shape of every algorithm here; subclasses change advantages or the loss.

    ``advantages`` returns ``[B, T]``; ``policy_loss`` returns the per-token loss ``[B, T]``.
    """

    default_loss_agg = "token_mean"
    needs_critic = False
    dynamic_sampling = False
    min_group_size = 1  # group-relative algorithms need 2: a group of one has no baseline

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None) -> None:
        self.clip_low = clip_eps
        self.clip_high = clip_eps if clip_eps_high is None else clip_eps_high

    def shape_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return rewards

    def advantages(
        self,
        rewards: torch.Tensor,
        group_size: int,
        mask: torch.Tensor,
        kl_reward: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def policy_loss(
        self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(-1)
        return clipped_surrogate(torch.exp(logp - old_logp), advantages, mask, self.clip_low, self.clip_high)
