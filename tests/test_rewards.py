import re

import pytest
from helper_plugins import always_one, hangs_on_seven, raises_on_seven, wrong_length

from lmmr1_core import load_reward
from lmmr1_core.errors import RewardError
from lmmr1_core.rewards import RewardSet


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("<think>3+4</think> <answer>7</answer>", "7", 1.0),
        ("<think>.</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
        ("so the result is \\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("<answer>8</answer>", "7", 0.0),
        ("no answer at all", "7", 0.0),
        ("<answer>1</answer> then <answer>7</answer>", "7", 1.0),  # the last answer counts
        ("<answer>\\sqrt{2}</answer>", "\\sqrt{2}", 1.0),
    ],
)
def test_math_accuracy(completion, gold, expected):
    assert load_reward("math_accuracy")(prompts=["p"], completions=[completion], answer=[gold]) == [expected]


def test_math_accuracy_unparseable_gold_is_not_applicable_not_free():
    # LMM-R1's reward server scored an unparseable gold as 1.0; here it is None (excluded).
    scores = load_reward("math_accuracy")(prompts=["p"], completions=["<answer>???</answer>"], answer=["???"])
    assert scores == [None]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>a</think> <answer>b</answer>", 1.0),
        ("  <think>\nmulti\nline</think>\n<answer>b</answer>\n", 1.0),
        ("<answer>b</answer>", 0.0),
        ("<think>a</think> <answer>b</answer></answer>", 0.0),
        ("<think></think><think>a</think><answer>b</answer>", 0.0),
        ("<think>a</think> <answer>b</answer> trailing", 0.0),
    ],
)
def test_think_answer_format(completion, expected):
    assert load_reward("think_answer_format")(prompts=["p"], completions=[completion]) == [expected]


def trl_boxed_reward(completions, ground_truth, **kwargs):
    """A reward function as TRL's GRPOTrainer docs write one, used here unchanged."""
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def test_trl_reward_function_works_unchanged():
    rs = RewardSet([("trl", trl_boxed_reward, 1.0, 5.0)])
    try:
        totals, per = rs(
            [[{"role": "user", "content": "q"}]] * 2,
            ["\\boxed{4}", "\\boxed{5}"],
            {"answer": ["4", "4"], "ground_truth": ["4", "4"], "id": ["a", "b"]},
        )
    finally:
        rs.close()
    assert totals == [1.0, 0.0] and per == {"trl": [1.0, 0.0]}


def test_weighted_total_skips_not_applicable():
    rs = RewardSet([("math", load_reward("math_accuracy"), 0.9, 5.0), ("one", always_one, 0.1, 5.0)])
    try:
        totals, per = rs(
            ["p"] * 3,
            ["<answer>2</answer>", "<answer>3</answer>", "x"],
            {"answer": ["2", "2", "???"], "id": ["a", "b", "c"]},
        )
    finally:
        rs.close()
    assert per["math"] == [1.0, 0.0, None]
    assert totals == pytest.approx([1.0, 0.1, 0.1])


def test_reward_that_raises_scores_none_for_that_sample_and_is_counted(capsys):
    rs = RewardSet([("raiser", raises_on_seven, 1.0, 5.0)])
    try:
        totals, _ = rs(["p"] * 3, ["a", "b", "c"], {"answer": ["1", "7", "2"], "id": ["s1", "s7", "s2"]})
        assert totals == [0.5, None, 0.5]
        assert rs.counters()["reward/raiser/errors"] == 1
        assert "raised on sample s7: KeyError" in capsys.readouterr().err
    finally:
        rs.close()


def test_reward_that_hangs_is_killed_scored_zero_and_counted():
    rs = RewardSet([("hanger", hangs_on_seven, 1.0, 0.5)])
    try:
        totals, _ = rs(["p"] * 3, ["a", "b", "c"], {"answer": ["1", "7", "2"], "id": ["s1", "s7", "s2"]})
        assert totals == [0.5, 0.0, 0.5]
        assert rs.counters()["reward/hanger/timeouts"] == 1
        # the worker was restarted: the next batch is scored normally
        totals, _ = rs(["p"], ["d"], {"answer": ["3"], "id": ["s3"]})
        assert totals == [0.5]
    finally:
        rs.close()


def test_reward_returning_wrong_length_is_a_clear_error():
    rs = RewardSet([("short", wrong_length, 1.0, 5.0, 1)])
    try:
        with pytest.raises(RewardError, match="reward 'short' returned 2 scores for 1 completions"):
            rs(["p", "p"], ["a", "b"], {"id": ["x", "y"]})
    finally:
        rs.close()
