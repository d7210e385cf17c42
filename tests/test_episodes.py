"""Multi-turn episodes: the training sequence is exactly what the model saw and said, env tokens masked."""

import pytest
import torch
from lmmr1_plugins.envs import env_seeds

from lmmr1_core import load_algorithm, load_model
from lmmr1_core.config import StageConfig
from lmmr1_core.episodes import run_episodes
from lmmr1_core.trainer import StageContext


def ctx_for(backend, **env):
    cfg = StageConfig(kind="rl", data=[{"dataset": "env_seeds"}], steps=1, micro_batch_size=4,
                      env={"name": "sokoban", "dim": [6, 6], "num_boxes": 1, "max_turns": 3, **env},
                      generation={"max_new_tokens": 6})  # fmt: skip
    return StageContext("t", cfg, None, None, backend, [], "", None)


def test_episode_sequences_masks_and_images(tiny_vl):
    torch.manual_seed(0)
    b = load_model("hf", path=str(tiny_vl), max_pixels=12544)
    episodes = run_episodes(ctx_for(b), env_seeds(n=2, seed=5))
    for ep in episodes:
        assert len(ep.responses) == 3  # a random model never solves it: max_turns ends the episode
        assert len(ep.completion) == len(ep.loss_mask)
        assert ep.turn_rewards == [-0.1] * 3  # format penalty each turn
        ids = ep.prompt.input_ids + ep.completion
        image_token = b.model.config.image_token_id
        merge = b.image_processor.merge_size**2
        prompt = ep.training_prompt()
        assert len(ep.pixel_values) == 3  # the first board and two later ones
        assert ids.count(image_token) == sum(int(g.prod()) // merge for g in prompt.image_grid_thw)
        # env tokens (the next board, chat headers) carry mask 0 and hold the image placeholders
        assert all(m == 0.0 for t, m in zip(ep.completion, ep.loss_mask) if t == image_token)
        assert 0 < sum(ep.loss_mask) < len(ep.loss_mask)
    # the whole episode scores in one forward; the first turn's log-probs equal scoring it alone
    with torch.no_grad():
        logp, mask, _ = b.logprobs([e.training_prompt() for e in episodes], [e.completion for e in episodes])
        ep = episodes[0]
        n1 = ep.loss_mask.index(0.0)  # the first model turn, before any env token
        alone, _, _ = b.logprobs([ep.prompt], [ep.completion[:n1]])
    torch.testing.assert_close(logp[0, :n1], alone[0], atol=1e-4, rtol=0)
    assert mask[0].sum() == len(ep.completion)


def test_budget_ends_an_episode(tiny_vl):
    torch.manual_seed(0)
    b = load_model("hf", path=str(tiny_vl), max_pixels=12544)
    [ep] = run_episodes(ctx_for(b, max_turns=5, max_episode_tokens=120), env_seeds(n=1, seed=2))
    assert len(ep.responses) < 5 and len(ep.prompt.input_ids) + len(ep.completion) <= 120


def test_per_turn_rewards_sit_on_each_turns_last_model_token(tiny_vl):
    from lmmr1_core.episodes import dense_rewards

    torch.manual_seed(1)
    b = load_model("hf", path=str(tiny_vl), max_pixels=12544)
    episodes = run_episodes(ctx_for(b, reward="per_turn"), env_seeds(n=2, seed=7))
    T = max(len(e.completion) for e in episodes)
    dense = dense_rewards(episodes, T)
    for i, ep in enumerate(episodes):
        assert len(ep.turn_ends) == len(ep.responses)
        assert all(ep.loss_mask[end] == 1.0 for end in ep.turn_ends)  # a model token, not the env's
        assert float(dense[i].sum()) == pytest.approx(sum(ep.turn_rewards))
        assert int((dense[i] != 0).sum()) == len(ep.turn_ends)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_per_turn_rewards_train_with_token_and_outcome_algorithms(tiny_vl, tmp_path, algorithm):
    import json

    from click.testing import CliRunner

    from lmmr1_core.cli import main

    sets = [f"model.path={tiny_vl}", "model.tiny=null", "stages.warmup.steps=1", "stages.warmup.data.0.n=2",
            "stages.mgt_sokoban.steps=1",
            "stages.mgt_sokoban.batch_size=1", "stages.mgt_sokoban.env.reward=per_turn",
            "stages.mgt_sokoban.env.max_turns=2", f"stages.mgt_sokoban.algorithm.name={algorithm}",
            "stages.eval_after.data.0.n=1", "stages.eval_after.env.max_turns=1"]  # fmt: skip
    args = ["run", "stages/quickstart_sokoban_multiturn.yaml", "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "quickstart_sokoban_multiturn/mgt_sokoban/metrics.jsonl").read_text())
    assert row["reward/env/turns"] <= 2 and row["reward/mean"] == pytest.approx(row["reward/env/return"])


def test_last_images_view_keeps_the_last_k():
    from lmmr1_core.prompts import last_images_view

    def user(tag):
        return {"role": "user", "content": [{"type": "image", "image": tag}, {"type": "text", "text": f"board {tag}"}]}

    messages = [user("a"), {"role": "assistant", "content": "Up"}, user("b"), {"role": "assistant", "content": "Up"},
                user("c")]  # fmt: skip
    view, images = last_images_view(messages, 2)
    assert images == ["b", "c"]
    assert view[0]["content"][0] == {"type": "text", "text": "[an earlier observation image, not shown]"}
    assert messages[0]["content"][0]["image"] == "a"  # the episode's own history is untouched


def test_keep_images_trains_each_turn_with_its_episodes_advantage(tiny_vl, tmp_path):
    import json

    from click.testing import CliRunner

    from lmmr1_core.cli import main

    torch.manual_seed(0)
    b = load_model("hf", path=str(tiny_vl), max_pixels=12544)
    episodes = run_episodes(ctx_for(b, keep_images=1), env_seeds(n=1, seed=3))
    image_token = b.model.config.image_token_id
    merge = b.image_processor.merge_size**2
    for prompt, _ in episodes[0].units:  # every turn's context holds exactly one (the latest) board
        assert prompt.image_grid_thw.shape[0] == 1
        assert prompt.input_ids.count(image_token) == int(prompt.image_grid_thw[0].prod()) // merge
    assert len(episodes[0].units) == len(episodes[0].responses) == 3

    sets = [f"model.path={tiny_vl}", "model.tiny=null", "stages.warmup.steps=1", "stages.warmup.data.0.n=2",
            "stages.mgt_sokoban.steps=1", "stages.mgt_sokoban.batch_size=1",
            "stages.mgt_sokoban.env.keep_images=1", "stages.mgt_sokoban.env.max_turns=2",
            "stages.eval_after.data.0.n=1", "stages.eval_after.env.max_turns=1"]  # fmt: skip
    args = ["run", "stages/quickstart_sokoban_multiturn.yaml", "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "quickstart_sokoban_multiturn/mgt_sokoban/metrics.jsonl").read_text())
    assert row["reward/env/turns"] <= 2 and "groups/zero_variance_frac" in row
    bad = CliRunner().invoke(main, [*args, *(a for s in [*sets, "stages.mgt_sokoban.algorithm.name=ppo"]
                                            for a in ("--set", s))])  # fmt: skip
    assert bad.exit_code == 2 and "env.keep_images: each turn trains as its own sequence" in bad.output


def _two_turn_rollout():
    """Two episodes of one group: model tokens 0-1 (turn 1), env tokens 2-3, model tokens 4-5 (turn 2)."""
    from lmmr1_core.rollout import Rollout

    mask = torch.tensor([[1.0, 1, 0, 0, 1, 1]] * 2)
    dense = torch.zeros(2, 6)
    dense[0, 1], dense[0, 5], dense[1, 1] = 1.0, 10.0, -1.0  # each turn's reward on its last model token
    return Rollout(samples=[None, None], prompts=[None, None], completions=[[1] * 6, [1] * 6], texts=["", ""],
                   rewards=torch.tensor([11.0, -1.0]), per_reward={}, groups_seen=1, groups_dropped=0,
                   loss_mask=mask, dense_rewards=dense)  # fmt: skip


@pytest.mark.parametrize("algorithm", ["reinforce_pp", "grpo"])
def test_per_turn_advantages_by_hand(algorithm):
    """Token-level algorithms credit each turn with the rewards from it on (a later turn's reward flows back
    across the env's tokens); outcome-level ones give every model token the episode's advantage. Env tokens: 0."""
    from lmmr1_core.rl import make_targets

    cfg = StageConfig(kind="rl", data=[{"dataset": "env_seeds"}], steps=1,
                      algorithm={"name": algorithm, "group_size": 2},
                      env={"name": "sokoban", "reward": "per_turn"})  # fmt: skip
    ctx = StageContext("t", cfg, None, None, None, [], "", None)
    tg = make_targets(ctx, load_algorithm(algorithm), _two_turn_rollout(), reuse_old=True)
    if algorithm == "reinforce_pp":
        returns = torch.tensor([[11.0, 11, 0, 0, 10, 10], [-1, -1, 0, 0, 0, 0]])
        valid = torch.tensor([[1.0, 1, 0, 0, 1, 1]] * 2).bool()
        mean, std = returns[valid].mean(), returns[valid].std()
        expected = torch.where(valid, (returns - mean) / std, torch.zeros_like(returns))
    else:
        expected = torch.tensor([[1.0, 1, 0, 0, 1, 1], [-1, -1, 0, 0, -1, -1]]) / 2**0.5
    assert torch.allclose(tg.advantages, expected, atol=1e-5)
    assert tg.advantages[0, 0] != tg.advantages[1, 0]
