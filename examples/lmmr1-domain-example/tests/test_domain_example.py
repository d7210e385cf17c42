"""The example domains against lmmr1's test kit (run after `pip install .`, which registers them)."""

from lmmr1_core import load_dataset
from lmmr1_core.testing import check_env, check_reward
from lmmr1_domain_example.maze import MazeEnv

MAZE = {"size": 3, "max_steps": 20}
MOVES = ["<answer>Up</answer>", "<answer>Down</answer>", "<answer>Left</answer>", "<answer>Right</answer>"]


def test_maze_env_contract():
    solutions = {}
    for seed in (0, 1, 2):
        env = MazeEnv(**MAZE)
        env.reset(seed)
        solutions[seed] = [f"<answer>{move}</answer>" for move in env.solution()]
    check_env("maze", MAZE, actions=MOVES, max_turns=20, solutions=solutions)


def test_chart_verifier_contract():
    completions = ["<answer>7</answer>", "<think>x</think><answer> 7.0 </answer>", "<answer>b</answer>", "7"]
    check_reward("chart_answer", completions, expected=[1.0, 1.0, 0.0, 0.0], answer=["7", "7", "A", "7"],
                 not_applicable={"answer": [None]})  # fmt: skip


def test_bar_charts_are_seeded_and_every_gold_answer_scores_one(tmp_path):
    charts = load_dataset("bar_charts", n=12, seed=3, dir=str(tmp_path / "a"))
    again = load_dataset("bar_charts", n=12, seed=3, dir=str(tmp_path / "b"))
    assert [s.answer for s in charts] == [s.answer for s in again] and all(len(s.images) == 1 for s in charts)
    check_reward("chart_answer", [f"<answer>{s.answer}</answer>" for s in charts], expected=[1.0] * 12,
                 answer=[s.answer for s in charts])  # fmt: skip
