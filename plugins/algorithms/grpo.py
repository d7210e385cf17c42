"""Group-relative algorithms: GRPO, Dr. GRPO, DAPO, GSPO and RLOO (no critic; the group is the baseline)."""

from __future__ import annotations

import torch
from lmmr1_plugins.algorithms.common import PolicyGradient, clipped_surrogate, group_mean_std, outcome_with_kl


class GRPO(PolicyGradient):
    """``A_i = (r_i - mean(group)) / (std(group) + eps)``, the same for every token of sample i.

    ``scale_rewards: false`` keeps the centring but drops the std division.
    """

    min_group_size = 2

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None, scale_rewards: bool = True,
                 eps: float = 1e-6) -> None:  # fmt: skip
        super().__init__(clip_eps, clip_eps_high)
        self.scale_rewards = scale_rewards
        self.eps = eps

    def advantages(self, rewards, group_size, mask=None, kl_reward=None, values=None) -> torch.Tensor:
        if mask is None:  # outcome-only use: one advantage per sample
            mask = torch.ones(len(rewards), 1)
        r = outcome_with_kl(rewards, mask, kl_reward)
        mean, std, valid = group_mean_std(r, group_size)
        adv = r - mean
        if self.scale_rewards:
            adv = adv / (std + self.eps)
        adv = torch.where(valid, adv, torch.zeros_like(adv))
        return adv.unsqueeze(-1) * mask


class DrGRPO(GRPO):
    """Dr. GRPO: no std division and no per-sequence length normalisation (token sums per sequence)."""

    default_loss_agg = "seq_mean_token_sum"

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None) -> None:
        super().__init__(clip_eps, clip_eps_high, scale_rewards=False)


class DAPO(GRPO):
    """DAPO: decoupled clip range, token-level loss, dynamic sampling, overlong reward shaping.

    Overlong shaping: past ``max_new_tokens - overlong_buffer`` tokens the reward falls linearly,
    reaching ``-overlong_penalty`` at ``max_new_tokens`` (0 buffer: off).
    """

    dynamic_sampling = True

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float = 0.28, overlong_buffer: int = 0,
                 overlong_penalty: float = 1.0) -> None:  # fmt: skip
        super().__init__(clip_eps, clip_eps_high, scale_rewards=True)
        self.overlong_buffer = overlong_buffer
        self.overlong_penalty = overlong_penalty

    def shape_rewards(self, rewards, lengths, max_new_tokens) -> torch.Tensor:
        if self.overlong_buffer <= 0:
            return rewards
        expected = max_new_tokens - self.overlong_buffer
        over = (lengths.to(rewards) - expected).clamp(min=0) / self.overlong_buffer
        return rewards - over.clamp(max=1.0) * self.overlong_penalty


class GSPO(GRPO):
    """GSPO: the importance ratio is per sequence (geometric mean of token ratios), clipped narrowly."""

    default_loss_agg = "seq_mean_token_mean"

    def __init__(self, clip_eps: float = 3e-4, clip_eps_high: float = 4e-4) -> None:
        super().__init__(clip_eps, clip_eps_high, scale_rewards=True)

    def policy_loss(self, logp, old_logp, advantages, mask):
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(-1)
        lengths = mask.sum(-1, keepdim=True).clamp(min=1)
        seq_log_ratio = ((logp - old_logp) * mask).sum(-1, keepdim=True) / lengths
        # s_i,t = sg[s_i] * pi_t / sg[pi_t]: value s_i, gradient through each token's log-prob
        ratio = torch.exp(seq_log_ratio.detach() + logp - logp.detach())
        return clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high)


class RLOO(PolicyGradient):
    """RLOO: the baseline of sample i is the mean reward of the *other* samples of its group."""

    min_group_size = 2

    def advantages(self, rewards, group_size, mask=None, kl_reward=None, values=None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(len(rewards), 1)
        r = outcome_with_kl(rewards, mask, kl_reward)
        mean, _, valid = group_mean_std(r, group_size)
        n = valid.view(-1, group_size).sum(-1, keepdim=True).expand(-1, group_size).reshape(-1).to(r)
        # mean of others = (n * mean - r_i) / (n - 1)  =>  r_i - that = n / (n - 1) * (r_i - mean)
        adv = torch.where(n > 1, n / (n - 1).clamp(min=1) * (r - mean), torch.zeros_like(r))
        adv = torch.where(valid, adv, torch.zeros_like(adv))
        return adv.unsqueeze(-1) * mask
