"""Sokoban: generation, solver, XSB files, env invariants under bad input, LMM-R1's plan reward."""

import json
import subprocess
import sys

import pytest
from conftest import run_stage_file
from lmmr1_plugins.envs.sokoban import generate_level, parse_xsb, solve
from lmmr1_plugins.envs.sokoban_plan import execute, plan_bonus

from lmmr1_core import load_dataset, load_env, load_reward
from lmmr1_core.testing import check_env, check_reward

MICROBAN = """; Microban-style levels
####
# .#
#  ###
#*@  #
#  $ #
#  ###
####
; Level 1

######
#    #
# #@ #
# $* #
# .* #
#    #
######
Title: Level 2
"""


def invariants(env, n_boxes):
    lv = env.level
    grid = lv.grid()
    assert sum(grid.count(ch) for ch in "PS") == 1  # one player
    assert len(lv.boxes) == n_boxes  # box count constant
    assert not (lv.boxes & lv.walls) and lv.player not in lv.walls  # nothing inside walls
    assert lv.player not in lv.boxes


@pytest.mark.parametrize("dim, boxes", [((6, 6), 1), ((7, 7), 2), ((8, 8), 2)])
def test_generated_levels_are_solvable_and_the_plan_succeeds(dim, boxes):
    for seed in range(15):
        level = generate_level(seed, dim, boxes)
        assert level == generate_level(seed, dim, boxes)  # same seed, same level
        plan = solve(level)
        assert plan, (seed, level.grid())
        env = load_env("sokoban", dim=list(dim), num_boxes=boxes, actions_per_turn=len(plan))
        env.reset(seed)
        _, reward, done, info = env.step("<answer>" + " || ".join(a.title() for a in plan) + "</answer>")
        assert done and info["success"] and reward >= 10.0 - 0.1 * len(plan)


def test_text_observation_symbols_and_image():
    env = load_env("sokoban", levels_file=None)
    env.levels = parse_xsb(MICROBAN)
    obs = env.reset(0)
    assert obs.text.splitlines()[3] == "#√P__#"  # box on target, player
    assert obs.images[0].size == (6 * 32, 7 * 32)


def test_xsb_levels_keep_titles_and_count_boxes_already_on_targets(tmp_path):
    levels = parse_xsb(MICROBAN)
    assert [lv.title for lv in levels] == ["Level 1", "Level 2"]
    assert len(levels[1].boxes & levels[1].targets) == 2  # two boxes start on targets
    (tmp_path / "micro.xsb").write_text(MICROBAN)
    env = load_env("sokoban", levels_file=str(tmp_path / "micro.xsb"), actions_per_turn=50)
    env.reset(1)
    plan = solve(env.level)
    _, _, done, info = env.step("<answer>" + "||".join(plan) + "</answer>")
    assert info["success"] and info["boxes_on_target"] == 3
    with pytest.raises(ValueError, match="has 2 boxes but 1 targets"):
        parse_xsb("#####\n#@$$.#\n#####\n")


@pytest.mark.parametrize(
    "response, error",
    [
        ("", "no <answer>"),
        ("I would go left", "no <answer>"),
        ("<answer></answer>", "empty answer"),
        ("<answer>Jump</answer>", "not an action: 'jump'"),
        ("<answer>" + "||".join(["Up"] * 10_000) + "</answer>", "10000 actions in one turn"),
    ],
)
def test_bad_responses_cost_a_penalty_and_keep_the_board(response, error):
    env = load_env("sokoban", dim=[6, 6], num_boxes=1)
    env.reset(4)
    before = env.level
    _, reward, _, info = env.step(response)
    assert error in info["format_error"] and reward == -0.1
    assert env.level == before


def test_sokoban_env_meets_the_env_kit():
    options = {"dim": [6, 6], "num_boxes": 1, "max_steps": 20}
    moves = [f"<answer>{m}</answer>" for m in ("Up", "Right", "Down", "Left")]
    solutions = {s: [f"<answer>{a.title()}</answer>" for a in solve(generate_level(s, (6, 6), 1))] for s in (0, 1)}
    check_env("sokoban", options, actions=moves, max_turns=20, solutions=solutions)
    check_env("sokoban", {**options, "images": False}, actions=moves, max_turns=20, require_images=False)


def test_sokoban_plan_rewards_meet_the_reward_kit():
    level = parse_xsb("######\n#@$ .#\n######\n")[0].xsb()
    good, bad = "<think>a</think><answer>Right, Right</answer>", "<think>a</think><answer>Left</answer>"
    check_reward("sokoban_success", [good, bad], expected=[1.0, 0.0], level=[level, level],
                 not_applicable={"level": [None]})  # fmt: skip
    check_reward("sokoban_plan", [good, bad, "<answer>Right</answer>"], level=[level] * 3,
                 not_applicable={"level": [None]})  # fmt: skip


def test_walls_and_blocked_boxes_keep_invariants():
    env = load_env("sokoban", actions_per_turn=4)
    env.levels = parse_xsb("#######\n#@$$ .#\n#  . .#\n#   $ #\n#######\n")
    env.reset(0)
    _, _, _, info = env.step("<answer>Up||Left||Right||Right</answer>")  # wall, wall, two boxes in a row
    assert env.level.player == (1, 1) and info["format_error"] is None
    invariants(env, 3)
    for moves in (
        ["Down", "Right", "Right", "Up"],
        ["Right", "Right", "Right", "Right"],
        ["Down", "Down", "Down", "Down"],
    ):
        env.step("<answer>" + "||".join(moves) + "</answer>")
        invariants(env, 3)


def test_step_rewards():
    env = load_env("sokoban", actions_per_turn=3)
    env.levels = parse_xsb("#######\n#@$. .#\n#  $  #\n#######\n")
    env.reset(0)
    _, reward, _, _ = env.step("<answer>Right</answer>")  # push onto a target: -0.1 + 1
    assert reward == pytest.approx(0.9)
    _, reward, _, _ = env.step("<answer>Right</answer>")  # push it off again: -0.1 - 1
    assert reward == pytest.approx(-1.1)


def test_lmmr1_plan_reward_preset():
    level = parse_xsb("######\n#@$ .#\n######\n")[0].xsb()
    reward = load_reward("sokoban_plan")
    think = "push the box right twice"  # 5 words -> 0.005
    good = f"<think>{think}</think><answer>Right, Right</answer>"
    # env: -0.1, -0.1 + 1 + 10 -> best cumulative 10.8; + 0.5 format + 0.05 * 2 plan + 0.005 thinking
    assert reward(prompts=[0], completions=[good], level=[level]) == [pytest.approx(10.8 + 0.5 + 0.1 + 0.005)]
    # wrong plan: cumulative return never above 0 -> floored at 0; format and bonuses remain
    bad_plan = "<think>x</think><answer>Left, Left</answer>"
    assert reward(prompts=[0], completions=[bad_plan], level=[level]) == [pytest.approx(0.5 + 0.1 + 0.001)]
    for broken in ("<answer>Right</answer>", "<think>a</think><answer>Right, Fly</answer>",
                   "<think>a</think><answer>Right</answer><answer>Right</answer>"):  # fmt: skip
        assert reward(prompts=[0], completions=[broken], level=[level]) == [0.0]
    ok = load_reward("sokoban_success")
    assert ok(prompts=[0, 0], completions=[good, bad_plan], level=[level, level]) == [1.0, 0.0]


def test_plan_bonus_shape_and_repetition():
    assert plan_bonus(["up"] * 3 + ["left"]) == pytest.approx(0.2)
    assert plan_bonus(["up", "left"] * 10) == 0.0  # a 2-gram repeated 10 times back to back
    varied = (["up", "left", "down", "right", "left"] * 5)[:23]
    assert plan_bonus(varied) == pytest.approx(1 - 0.2 * (3 / 30) ** 2)
    assert plan_bonus(["up"] * 8) == 0.0 and plan_bonus(["up"] * 7) == pytest.approx(0.35)
    assert execute("#####\n#@$.#\n#####", ["right"] * 60)[1]


def test_sokoban_levels_dataset():
    samples = load_dataset("sokoban_levels", n=6, seed=2, dim=[6, 6], num_boxes=1, max_solution=8)
    assert 0 < len(samples) <= 6
    for s in samples:
        assert s.meta["optimal_steps"] <= 8 and len(s.images) == 1 and s.images[0][:4] == b"\x89PNG"
        assert load_reward("sokoban_success")(prompts=[0], completions=[f"<think>a</think><answer>{s.answer}</answer>"],
                                              level=[s.meta["level"]]) == [1.0]  # fmt: skip


def test_quickstart_sokoban_runs_plan_mode_end_to_end(tmp_path):
    sets = ["stages.warmup.steps=4", "stages.mgt_sokoban.steps=3", "stages.eval_before.data.0.n=4"]
    result = run_stage_file(tmp_path, "quickstart_sokoban.yaml", sets)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/quickstart_sokoban"
    rows = [json.loads(x) for x in (run / "mgt_sokoban/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "reward/sokoban_plan" in rows[0]
    before = json.loads((run / "eval_before/final/results.json").read_text())
    assert before["datasets"]["sokoban-5x5"]["n"] == 4 and "sokoban_success" in before["overall"]


def test_multiturn_quickstart_and_episode_viewer(tmp_path):
    from PIL import Image

    sets = ["stages.warmup.steps=1", "stages.warmup.data.0.n=2", "stages.mgt_sokoban.steps=1",
            "stages.mgt_sokoban.batch_size=1", "stages.eval_after.data.0.n=2",  # eval_before shares the data
            "stages.eval_before.eval_samples=1", "stages.eval_after.eval_samples=1"]
    result = run_stage_file(tmp_path, "quickstart_sokoban_multiturn.yaml", sets)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs/quickstart_sokoban_multiturn"
    row = json.loads((run / "mgt_sokoban/metrics.jsonl").read_text())
    assert {"reward/env/return", "reward/env/success", "reward/env/turns"} <= set(row)
    res = json.loads((run / "eval_after/final/results.json").read_text())
    assert res["overall"]["n"] == 2 and 0.0 <= res["overall"]["success"] <= 1.0
    show = ["episodes", "show", str(run), "--stage", "mgt_sokoban", "--out", str(tmp_path / "ep.gif")]
    view = subprocess.run([sys.executable, "-m", "lmmr1_core.cli", *show], capture_output=True, text=True)
    assert view.returncode == 0, view.stderr
    episode = json.loads((run / "mgt_sokoban/samples.jsonl").read_text().splitlines()[0])
    gif = Image.open(tmp_path / "ep.gif")
    assert gif.n_frames == 1 + len(episode["responses"])  # the start, then one frame per turn
