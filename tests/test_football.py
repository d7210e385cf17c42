"""The football env on the real Google Research Football engine (installed by .ci/run)."""

import builtins

import pytest
from lmmr1_plugins.envs.football import ACTIONS, parse_action

from lmmr1_core import load_env
from lmmr1_core.errors import LmmError
from lmmr1_core.testing import GARBAGE, check_env


def test_actions_are_parsed_with_aliases():
    assert parse_action("<think>go</think><answer>Shoot</answer>") == ("shoot", None)
    assert parse_action("<answer>up_right</answer>") == ("up-right", None)
    assert parse_action("<answer>pass</answer>") == ("short pass", None)
    assert parse_action("<answer>fly</answer>")[1].startswith("not an action: 'fly'")
    assert parse_action("shoot")[1] == "no <answer>...</answer>"
    assert set(ACTIONS) >= {"left", "right", "up", "down", "shoot", "sprint", "short pass"}


def test_missing_engine_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_gfootball(name, *args, **kwargs):
        if name.startswith("gfootball"):
            raise ImportError("No module named 'gfootball'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gfootball)
    with pytest.raises(LmmError, match=r"pip install --no-build-isolation gfootball==2.10.2"):
        load_env("football")


def test_scoring_an_empty_goal_on_the_real_engine():
    pytest.importorskip("gfootball", reason="Google Research Football is not installed (see README)")
    env = load_env("football", scenario="empty_goal_close", frames_per_action=4)
    try:
        obs = env.reset(seed=1)
        assert obs.images[0].size == (288, 216) and "attack the goal on the right" in obs.text
        _, reward, done, info = env.step("<answer>Jump</answer>")  # invalid: penalty, player idles
        assert reward == pytest.approx(-0.1) and info["format_error"] and not info["success"]
        for action in ["Right", "Right", "Shoot", "Shoot", "Idle", "Idle", "Idle", "Idle", "Idle"]:
            _, reward, done, info = env.step(f"<answer>{action}</answer>")
            if done:
                break
        assert done and info["success"] and reward >= 1.0
        with pytest.raises(LmmError, match="unknown scenario 'penalty'"):
            load_env("football", scenario="penalty")
    finally:
        env.close()


def test_football_env_meets_the_env_kit():
    pytest.importorskip("gfootball", reason="Google Research Football is not installed (see README)")
    options = {"scenario": "empty_goal_close", "frames_per_action": 2, "max_steps": 12}
    garbage = [g for g in GARBAGE if len(g) < 100_000] + ["x" * 1_000_000]  # one megabyte, not three
    # academy scenarios start alike whatever the seed (seeds_differ=False); and the engine's episodes are not
    # replayable step for step from a seed (it found that: the same responses drift apart after a few frames),
    # so `lmmr1 episodes show` redraws a football episode approximately (deterministic_steps=False)
    check_env("football", options, actions=["<answer>Right</answer>", "<answer>Shoot</answer>"], max_turns=6,
              seeds=(0, 1), garbage=garbage, seeds_differ=False, deterministic_steps=False)  # fmt: skip


def test_multi_turn_episodes_on_football(tiny_vl):
    pytest.importorskip("gfootball", reason="Google Research Football is not installed (see README)")
    from lmmr1_plugins.envs import env_seeds

    from lmmr1_core import load_model
    from lmmr1_core.config import StageConfig
    from lmmr1_core.episodes import run_episodes
    from lmmr1_core.trainer import StageContext

    b = load_model("hf", path=str(tiny_vl), max_pixels=12544)
    cfg = StageConfig(kind="eval", data=[{"dataset": "env_seeds"}], generation={"max_new_tokens": 4},
                      env={"name": "football", "scenario": "empty_goal", "max_turns": 2})  # fmt: skip
    episodes = run_episodes(StageContext("t", cfg, None, None, b, [], "", None), env_seeds(n=2, seed=3), greedy=True)
    for ep in episodes:
        assert 1 <= len(ep.responses) <= 2 and len(ep.pixel_values) == len(ep.responses)
        assert not ep.success
        ep.env.close()


def test_rendered_frames_off_screen():
    pytest.importorskip("gfootball", reason="Google Research Football is not installed (see README)")
    env = load_env("football", scenario="empty_goal_close", render_frame=True, frames_per_action=1)
    try:
        import numpy as np

        env.reset(0)
        obs, _, _, _ = env.step("<answer>Right</answer>")
        frame = obs.images[0]
        assert frame.size == (320, 180)
        assert len(np.unique(np.asarray(frame.convert("L")))) > 20  # a real rendered picture, not a blank
    finally:
        env.close()
