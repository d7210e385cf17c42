"""REINFORCE++ and REINFORCE++-baseline: token returns, normalised over the whole batch."""

from __future__ import annotations

import torch
from lmmr1_plugins.algorithms.common import (
    PolicyGradient,
    discounted_returns,
    group_mean_std,
    masked_whiten,
    token_rewards,
)


class ReinforcePP(PolicyGradient):
    """REINFORCE++: per-token reward = outcome on the last token + the KL penalty on every token
    (set ``kl.in_reward: true``); advantage = discounted return, whitened over all valid tokens
    of the batch. No critic, no group baseline."""

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None, gamma: float = 1.0) -> None:
        super().__init__(clip_eps, clip_eps_high)
        self.gamma = gamma

    def _baseline(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return rewards

    def advantages(self, rewards, group_size, mask=None, kl_reward=None, values=None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(len(rewards), 1)
        valid = ~torch.isnan(rewards)
        mask = mask * valid.unsqueeze(-1).to(mask)
        r = self._baseline(rewards, group_size)
        returns = discounted_returns(token_rewards(r, mask, kl_reward), mask, self.gamma)
        return masked_whiten(returns, mask)


class ReinforcePPBaseline(ReinforcePP):
    """REINFORCE++-baseline (LMM-R1's FRE and PerceReason): subtract the prompt's group mean reward
    first, then whiten over the batch — robust to reward scale without a per-group std."""

    min_group_size = 2

    def _baseline(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        mean, _, _ = group_mean_std(rewards, group_size)
        return rewards - mean
