"""PPO with a learned critic and GAE (what LMM-R1 trains MGT-Geo and Sokoban with)."""

from __future__ import annotations

import torch
from lmmr1_plugins.algorithms.common import PolicyGradient, masked_whiten, token_rewards


class PPO(PolicyGradient):
    """Advantages by GAE over per-token rewards (outcome on the last token, KL if in the reward)
    and the critic's values; whitened over the batch. The critic (the policy's weights plus a
    value head, trained with ``critic_lr``) regresses the GAE returns with a clipped value loss."""

    needs_critic = True

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None, gamma: float = 1.0,
                 lam: float = 0.95, value_clip: float = 0.2, critic_lr: float = 1e-5) -> None:  # fmt: skip
        super().__init__(clip_eps, clip_eps_high)
        self.gamma, self.lam, self.value_clip, self.critic_lr = gamma, lam, value_clip, critic_lr

    def gae(self, rewards, mask, kl_reward, values) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns): ``delta_t = r_t + gamma V_next - V_t``, ``A_t = delta_t + gamma lam A_next``,
        over unmasked tokens only ("next" skips padding and the env tokens between an episode's turns)."""
        valid_rows = ~torch.isnan(rewards)
        mask = mask * valid_rows.unsqueeze(-1).to(mask)
        r = token_rewards(rewards, mask, kl_reward)
        adv = torch.zeros_like(r)
        running = torch.zeros(r.shape[0], dtype=r.dtype)
        next_v = torch.zeros(r.shape[0], dtype=r.dtype)
        for t in range(r.shape[1] - 1, -1, -1):
            valid = mask[:, t] > 0
            delta = r[:, t] + self.gamma * next_v - values[:, t]
            running = torch.where(valid, delta + self.gamma * self.lam * running, running)
            next_v = torch.where(valid, values[:, t], next_v)
            adv[:, t] = running
        adv = adv * mask
        return adv, (adv + values) * mask

    def advantages(self, rewards, group_size, mask=None, kl_reward=None, values=None) -> torch.Tensor:
        if values is None:
            raise ValueError("ppo needs the critic's values")
        adv, _ = self.gae(rewards, mask, kl_reward, values)
        valid = (~torch.isnan(rewards)).unsqueeze(-1).to(mask)
        return masked_whiten(adv, mask * valid)

    def value_targets(self, rewards, mask, kl_reward, values) -> torch.Tensor:
        return self.gae(rewards, mask, kl_reward, values)[1]

    def value_loss(self, values, old_values, returns, mask) -> torch.Tensor:
        """Per-token ``0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2)``."""
        clipped = old_values + (values - old_values).clamp(-self.value_clip, self.value_clip)
        return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2) * mask
