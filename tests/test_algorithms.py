"""Each algorithm's advantages and losses worked out by hand on tiny tensors, gradient directions,
and two quickstart steps per algorithm."""

import math

import pytest
import torch
from click.testing import CliRunner

from lmmr1_core import load_algorithm, load_model
from lmmr1_core.cli import main
from lmmr1_core.rl import aggregate, kl_penalty

ALGORITHMS = ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo"]
close = torch.testing.assert_close


def test_grpo_group_normalised_advantages():
    # group 1: rewards 1,0,0,1 -> mean 0.5, unbiased std sqrt(1/3) -> +-0.5/0.5774 = +-0.8660
    # group 2: all equal -> advantage 0 (no signal); every token of a sample gets its advantage
    mask = torch.ones(8, 2)
    adv = load_algorithm("grpo").advantages(torch.tensor([1.0, 0, 0, 1, 0.3, 0.3, 0.3, 0.3]), 4, mask)
    s = 0.5 / math.sqrt(1 / 3)
    close(adv[:, 0], torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-4, rtol=0)
    close(adv[:, 1], adv[:, 0])


def test_not_applicable_rewards_are_left_out_of_the_group():
    # NaN (None) ignored: the group is (1, 0), mean 0.5; the NaN samples get 0
    adv = load_algorithm("grpo", scale_rewards=False).advantages(torch.tensor([1.0, math.nan, 0, math.nan]), 4)
    close(adv.squeeze(-1), torch.tensor([0.5, 0.0, -0.5, 0.0]))


def test_dr_grpo_no_std_and_token_sum_loss():
    algo = load_algorithm("dr_grpo")
    adv = algo.advantages(torch.tensor([1.0, 0, 0, 1]), 4)  # only centred: r - 0.5
    close(adv.squeeze(-1), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert algo.default_loss_agg == "seq_mean_token_sum"


def test_rloo_leave_one_out_baseline():
    # sample 0: 1 - mean(0, 0, 1) = 2/3 ; sample 1: 0 - mean(1, 0, 1) = -2/3
    adv = load_algorithm("rloo").advantages(torch.tensor([1.0, 0, 0, 1]), 4)
    close(adv.squeeze(-1), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_dapo_decoupled_clip_and_overlong_shaping():
    algo = load_algorithm("dapo", overlong_buffer=4, overlong_penalty=1.0)
    assert algo.dynamic_sampling
    # max 10 new tokens, buffer 4: no penalty up to 6 tokens, linear to -1 at 10
    shaped = algo.shape_rewards(torch.tensor([1.0, 1.0, 1.0, math.nan]), torch.tensor([5, 8, 10, 9]), 10)
    close(shaped[:3], torch.tensor([1.0, 0.5, 0.0]))
    assert math.isnan(shaped[3])
    # ratio 1.3 with A=+1 clips at 1 + 0.28; ratio 0.7 with A=-1 clips at 1 - 0.2 -> loss 0.8
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.3, 0.7]]))
    loss, _ = algo.policy_loss(logp, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    close(loss, torch.tensor([[-1.28, 0.8]]))


def test_gspo_sequence_level_ratio_and_gradient():
    algo = load_algorithm("gspo")
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.1, 0.3]], requires_grad=True)  # sequence ratio s = exp(mean) = exp(0.2)
    s = math.exp(0.2)
    # A = -1: min(-s, -clip(s)) = -s (unclipped branch) -> loss s on every token; d loss/d logp_t = s
    loss, stats = algo.policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2))
    close(loss.detach(), torch.tensor([[s, s]]))
    loss.sum().backward()
    close(logp.grad, torch.tensor([[s, s]]))
    assert stats["clip_frac"] == 0.0
    # A = +1: s is far outside 1 + 4e-4, so the clipped constant wins: no gradient
    logp.grad = None
    loss, stats = algo.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    close(loss.detach(), torch.full((1, 2), -(1 + 4e-4)))
    assert stats["clip_frac"] == 1.0


def test_reinforce_pp_returns_whitened_over_the_batch():
    algo = load_algorithm("reinforce_pp")
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # second sequence has one token + padding
    # token rewards: seq0 [0, 1], seq1 [0]; returns seq0 [1, 1], seq1 [0]
    # valid tokens (1, 1, 0): mean 2/3, unbiased std sqrt(1/3) -> (1/3)/0.5774 = 0.5774, -1.1547
    adv = algo.advantages(torch.tensor([1.0, 0.0]), 1, mask)
    close(adv, torch.tensor([[0.5774, 0.5774], [-1.1547, 0.0]]), atol=1e-4, rtol=0)
    # KL in the reward: token rewards seq0 [-0.1, 0.9], seq1 [-0.2] -> returns [0.8, 0.9], [-0.2]
    # mean 0.5, deviations (0.3, 0.4, -0.7), var 0.74/2 = 0.37, std 0.6083
    kl_reward = torch.tensor([[-0.1, -0.1], [-0.2, 0.0]])
    adv = algo.advantages(torch.tensor([1.0, 0.0]), 1, mask, kl_reward)
    close(adv, torch.tensor([[0.4932, 0.6576], [-1.1508, 0.0]]), atol=1e-4, rtol=0)


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens():
    # groups (1, 0) and (0, 0): minus group mean -> 0.5, -0.5, 0, 0
    # whitened over 4 tokens: mean 0, unbiased var 0.5/3 -> +-0.5/0.4082 = +-1.2247
    adv = load_algorithm("reinforce_pp_baseline").advantages(torch.tensor([1.0, 0, 0, 0]), 2, torch.ones(4, 1))
    close(adv.squeeze(-1), torch.tensor([1.2247, -1.2247, 0.0, 0.0]), atol=1e-4, rtol=0)


def test_ppo_gae_and_clipped_value_loss():
    algo = load_algorithm("ppo", gamma=1.0, lam=0.5, value_clip=0.2)
    mask = torch.ones(1, 2)
    values = torch.tensor([[0.5, 0.8]])
    # r = (0, 1); delta_1 = 1 - 0.8 = 0.2 -> A_1 = 0.2; delta_0 = 0 + 0.8 - 0.5 = 0.3 -> A_0 = 0.3 + 0.5*0.2 = 0.4
    adv, ret = algo.gae(torch.tensor([1.0]), mask, None, values)
    close(adv, torch.tensor([[0.4, 0.2]]))
    close(ret, torch.tensor([[0.9, 1.0]]))
    # new values (0.6, 1.5) vs old (0.5, 0.8): token 1 clips to 1.0 -> max(0.25, 0) / 2
    vl = algo.value_loss(torch.tensor([[0.6, 1.5]]), values, ret, mask)
    close(vl, torch.tensor([[0.045, 0.125]]))
    with pytest.raises(ValueError, match="critic"):
        algo.advantages(torch.tensor([1.0]), 1, mask)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = -math.log(2)  # log(ref / pi)
    assert math.isclose(float(kl_penalty(logp, ref, "k1")), -d, rel_tol=1e-6)
    assert math.isclose(float(kl_penalty(logp, ref, "k2")), 0.5 * d * d, rel_tol=1e-6)
    assert math.isclose(float(kl_penalty(logp, ref, "k3")), math.exp(d) - d - 1, rel_tol=1e-6)
    assert float(kl_penalty(ref, ref, "k3")) == 0.0


def test_loss_aggregation_masks_padding():
    per = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 9.0 sits on padding and must not count
    assert float(aggregate(per, mask, "token_mean", 3, 2)) == 2.0  # (1+2+3)/3
    assert float(aggregate(per, mask, "seq_mean_token_sum", 3, 2)) == 3.0  # (3 + 3)/2
    assert float(aggregate(per, mask, "seq_mean_token_mean", 3, 2)) == 2.25  # (1.5 + 3)/2


@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_step_raises_the_rewarded_completion(name, tiny_text):
    torch.manual_seed(0)
    b = load_model("hf", path=str(tiny_text))
    algo = load_algorithm(name)
    prompt = b.encode([{"role": "user", "content": "What is 1 + 1?"}])
    prompts, comps = [prompt, prompt], [[20, 21, 22], [30, 31]]
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        before, _, _ = b.logprobs(prompts, comps)
    opt = b.make_optimizer(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    values = torch.zeros(2, 3) if algo.needs_critic else None
    adv = algo.advantages(torch.tensor([1.0, 0.0]), 2, mask, None, values) * mask
    logp, m, _ = b.logprobs(prompts, comps)
    per_token, _ = algo.policy_loss(logp, logp.detach(), adv, m)
    aggregate(per_token, m, algo.default_loss_agg, float(m.sum()), 2).backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = b.logprobs(prompts, comps)
    assert after[0].sum() > before[0].sum()
    assert after[1].sum() < before[1].sum()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_two_quickstart_steps(name, tiny_text, tmp_path):
    extra = ["--set", "stages.fre.algorithm.kl.in_reward=true"] if name.startswith(("reinforce", "ppo")) else []
    if name == "ppo":
        extra += ["--set", "stages.fre.algorithm.epochs=2", "--set", "stages.fre.algorithm.mini_batches=2"]
    result = CliRunner().invoke(main, [
        "run", "stages/quickstart.yaml", "--output-dir", str(tmp_path),
        "--set", f"model.path={tiny_text}", "--set", "stages.warmup.steps=1",
        "--set", "stages.fre.steps=2", "--set", "stages.fre.batch_size=2", "--set", f"stages.fre.algorithm.name={name}",
        "--set", "stages.fre.generation.max_new_tokens=8", *extra,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    rows = [json.loads(x) for x in (tmp_path / "quickstart/fre/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("entropy", "clip_frac", "approx_kl", "advantage/mean", "advantage/std", "groups/zero_variance_frac"):
        assert key in rows[-1]
    assert rows[-1]["kl"] is not None and rows[-1]["kl"] >= -1e-6
    if name == "ppo":
        assert "value_loss" in rows[-1]


def test_cosine_schedule_with_warmup_and_floor():
    from lmmr1_core.config import OptimConfig
    from lmmr1_core.trainer import lr_lambda

    f = lr_lambda(OptimConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_ratio=0.2), total_updates=10)
    # warm-up 2 updates: 1/2, 2/2; then cosine from 1.0 to 0.1 over the remaining 8
    assert [round(f(s), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.55, 0.1]
    assert lr_lambda(OptimConfig(lr=1.0), 10)(7) == 1.0


def test_freeze_prefixes(tiny_text):
    from lmmr1_core.errors import ConfigError

    b = load_model("hf", path=str(tiny_text))
    opt = b.make_optimizer(1e-3, 0.0, (0.9, 0.999), freeze=["model.layers.0."])
    frozen = {n for n, p in b.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("model.layers.0.") for n in frozen)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in b.model.named_parameters() if n in frozen)
    with pytest.raises(ConfigError, match="no parameter name starts with 'model.visual'"):
        b.make_optimizer(1e-3, 0.0, (0.9, 0.999), freeze=["model.visual"])


def test_dapo_drops_zero_variance_groups_and_keeps_sampling(tiny_text, tmp_path, plugin):
    import json

    from helper_plugins import TestRewardsPlugin

    plugin(TestRewardsPlugin(), name="test_rewards")
    result = CliRunner().invoke(main, [
        "run", "stages/quickstart.yaml", "--output-dir", str(tmp_path),
        "--set", f"model.path={tiny_text}", "--set", "stages.warmup.steps=1",
        "--set", "stages.fre.steps=1", "--set", "stages.fre.batch_size=2", "--set", "stages.fre.algorithm.name=dapo",
        "--set", "stages.fre.algorithm.max_sampling_rounds=3",
        "--set", "stages.fre.rewards=[{name: always_one}]", "--set", "stages.fre.generation.max_new_tokens=4",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "quickstart/fre/metrics.jsonl").read_text().splitlines()[-1])
    # every group scored all 1.0: all 3 rounds x 2 groups were seen and dropped, the step still ran
    assert row["groups/zero_variance_frac"] == 1.0
    assert row["advantage/std"] == 0.0 and row["reward/mean"] == 1.0


def test_returns_and_gae_flow_across_masked_env_tokens():
    # one episode of two turns: tokens [a a | env env | b], the env tokens masked out of the loss
    mask = torch.tensor([[1.0, 1, 0, 0, 1]])
    algo = load_algorithm("reinforce_pp", gamma=0.5)
    # outcome 1.0 on the last assistant token; gamma steps only over assistant tokens: 0.125, 0.25, -, -, 1
    from lmmr1_plugins.algorithms.common import discounted_returns, token_rewards

    ret = discounted_returns(token_rewards(torch.tensor([1.0]), mask), mask, 0.5)
    close(ret, torch.tensor([[0.25, 0.5, 0.0, 0.0, 1.0]]))
    adv = algo.advantages(torch.tensor([1.0]), 1, mask)
    assert adv[0, 2] == 0 and adv[0, 3] == 0
    ppo = load_algorithm("ppo", gamma=1.0, lam=1.0)
    values = torch.tensor([[0.2, 0.4, 9.0, 9.0, 0.6]])  # values at env tokens must not matter
    adv, ret = ppo.gae(torch.tensor([1.0]), mask, None, values)
    # lam = 1: A_t = G_t - V_t with G = 1 everywhere valid
    close(adv, torch.tensor([[0.8, 0.6, 0.0, 0.0, 0.4]]))
    close(ret, torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]]))
