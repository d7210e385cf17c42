import math

import torch

from lmmr1_core import load_algorithm, load_model
from lmmr1_core.rl import aggregate, kl_penalty


def test_group_normalised_advantages_by_hand():
    algo = load_algorithm("grpo")
    # group 1: rewards 1,0,0,1 -> mean 0.5, unbiased std sqrt(1/3) = 0.5774 -> +-0.8660
    # group 2: all equal -> zero advantage (no signal)
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3]), group_size=4)
    s = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-4, rtol=0)


def test_not_applicable_rewards_are_left_out_of_the_group():
    algo = load_algorithm("grpo", scale_rewards=False)
    # NaN (None) ignored: mean of (1, 0) = 0.5
    adv = algo.advantages(torch.tensor([1.0, float("nan"), 0.0, float("nan")]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0, -0.5, 0.0]))


def test_clipped_policy_loss_by_hand():
    algo = load_algorithm("grpo", clip_eps=0.2)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.9, 1.0]]))  # ratios 1.5, 0.9, 1.0
    mask = torch.ones(1, 3)
    # A = +1: min(r, clip(r)) -> 1.2 (clipped), 0.9, 1.0 ; loss = -that
    loss, stats = algo.policy_loss(logp, old, torch.tensor([1.0]), mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.9, -1.0]]))
    assert abs(stats["clip_frac"] - 1 / 3) < 1e-6
    # A = -1: min(-r, -clip(r)) -> -1.5, -0.9 (clip 0.9 inside), -1.0 ; loss = 1.5, 0.9, 1.0
    loss, _ = algo.policy_loss(logp, old, torch.tensor([-1.0]), mask)
    torch.testing.assert_close(loss, torch.tensor([[1.5, 0.9, 1.0]]))


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(0.25) - math.log(0.5)  # log(ref/pi) = -log 2
    assert math.isclose(float(kl_penalty(logp, ref, "k1")), -d, rel_tol=1e-6)
    assert math.isclose(float(kl_penalty(logp, ref, "k2")), 0.5 * d * d, rel_tol=1e-6)
    assert math.isclose(float(kl_penalty(logp, ref, "k3")), math.exp(d) - d - 1, rel_tol=1e-6)
    assert float(kl_penalty(ref, ref, "k3")) == 0.0


def test_loss_aggregation_modes_by_hand():
    per = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 9.0 is padding
    assert float(aggregate(per, mask, "token_mean", 3, 2)) == 2.0  # (1+2+3)/3
    assert float(aggregate(per, mask, "seq_mean_token_sum", 3, 2)) == 3.0  # (3 + 3)/2
    assert float(aggregate(per, mask, "seq_mean_token_mean", 3, 2)) == 2.25  # (1.5 + 3)/2


def test_a_step_raises_the_rewarded_completion_and_lowers_the_other(tiny_text):
    torch.manual_seed(0)
    b = load_model("hf", path=str(tiny_text))
    algo = load_algorithm("grpo")
    prompt = b.encode([{"role": "user", "content": "What is 1 + 1?"}])
    good, bad = [20, 21, 22], [30, 31, 32]
    prompts, comps = [prompt, prompt], [good, bad]
    with torch.no_grad():
        before, mask, _ = b.logprobs(prompts, comps)
    opt = b.make_optimizer(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    adv = algo.advantages(torch.tensor([1.0, 0.0]), group_size=2)
    logp, mask, _ = b.logprobs(prompts, comps)
    per_token, _ = algo.policy_loss(logp, logp.detach(), adv, mask)
    aggregate(per_token, mask, "token_mean", float(mask.sum()), 2).backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = b.logprobs(prompts, comps)
    assert after[0].sum() > before[0].sum()
    assert after[1].sum() < before[1].sum()
