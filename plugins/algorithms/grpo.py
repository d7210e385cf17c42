"""GRPO: group-normalised advantages and the clipped-ratio policy loss."""

from __future__ import annotations

import torch


class GRPO:
    """Advantage = (r - mean of the prompt's group) / (std of the group + eps).

    ``scale_rewards: false`` keeps the mean-centring but drops the std division (Dr. GRPO's
    advice for groups with tiny spread). Rewards of ``None`` (not applicable) are NaN here:
    they are left out of the group statistics and get advantage 0.
    """

    def __init__(
        self,
        clip_eps: float = 0.2,
        clip_eps_high: float | None = None,
        scale_rewards: bool = True,
        eps: float = 1e-6,
    ) -> None:
        self.clip_low = clip_eps
        self.clip_high = clip_eps if clip_eps_high is None else clip_eps_high
        self.scale_rewards = scale_rewards
        self.eps = eps

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        groups = rewards.view(-1, group_size)
        valid = ~torch.isnan(groups)
        count = valid.sum(-1, keepdim=True).clamp(min=1)
        filled = torch.where(valid, groups, torch.zeros_like(groups))
        mean = filled.sum(-1, keepdim=True) / count
        var = (torch.where(valid, groups - mean, torch.zeros_like(groups)) ** 2).sum(-1, keepdim=True) / (
            count - 1
        ).clamp(min=1)
        adv = filled - mean
        if self.scale_rewards:
            adv = adv / (var.sqrt() + self.eps)
        return torch.where(valid, adv, torch.zeros_like(adv)).view(-1)

    def policy_loss(
        self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-token loss ``-min(ratio * A, clip(ratio) * A)`` and the clip fraction."""
        ratio = torch.exp(logp - old_logp)
        adv = advantages.unsqueeze(-1)
        unclipped = ratio * adv
        clipped = torch.clamp(ratio, 1 - self.clip_low, 1 + self.clip_high) * adv
        loss = -torch.min(unclipped, clipped)
        with torch.no_grad():
            clip_frac = ((clipped < unclipped).float() * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"clip_frac": float(clip_frac)}
