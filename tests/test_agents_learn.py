"""Agents learn: after a warm-up that clones the BFS solver, RL raises multi-turn Sokoban's success rate."""

import json

from conftest import run_stage_file

from lmmr1_core import load_dataset


def success(run, stage: str) -> float:
    """The success rate over the stage's sampled episodes (8 per seed, at temperature 1)."""
    return json.loads((run / stage / "final/results.json").read_text())["overall"]["success/mean@8"]


def test_solver_samples_are_the_turns_an_episode_shows():
    """Turn k's sample is the conversation an rl episode holds at turn k: k+1 boards, k earlier answers."""
    from lmmr1_plugins.envs.sokoban import SokobanEnv, solve

    env = {"name": "sokoban", "dim": [5, 5], "num_boxes": 1, "max_turns": 4, "instruction": "One move."}
    samples = load_dataset("sokoban_solver", n=6, seed=3, env=env)
    by_seed: dict[int, list] = {}
    for s in samples:
        by_seed.setdefault(s.meta["env_seed"], []).append(s)
    for seed, turns in by_seed.items():
        game = SokobanEnv(dim=(5, 5), num_boxes=1)
        game.reset(seed)
        plan = solve(game.level)
        assert [s.answer for s in turns] == [m.capitalize() for m in plan[:4]]
        for k, s in enumerate(turns):
            assert [m["role"] for m in s.messages] == ["user", "assistant"] * k + ["user"]
            assert len(s.images) == k + 1 and all(im[:4] == b"\x89PNG" for im in s.images)
            assert s.messages[-1]["content"][-1]["text"] == game.level.grid() + "\nOne move."
            game.step(f"<answer>{s.answer}</answer>")
        assert game.level.solved() == (len(plan) <= 4)
    two = load_dataset("sokoban_solver", n=6, seed=3, env={**env, "actions_per_turn": 2})
    assert all(len(s.answer.split(" || ")) <= 2 for s in two) and len(two) < len(samples)


def test_multiturn_sokoban_success_rises_through_rl(tmp_path):
    # one thread, as measured: the margin is a few episodes, and other thread counts sum floats in another order
    result = run_stage_file(tmp_path, "quickstart_sokoban_multiturn.yaml", ["model.threads=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/quickstart_sokoban_multiturn"
    before, after = success(run, "eval_before"), success(run, "eval_after")
    assert 0 < before < 1, before  # the warm-up leaves episodes that sometimes succeed: RL has a signal
    assert after > before, (before, after)
