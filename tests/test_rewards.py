import re

import pytest
from helper_plugins import always_one, hangs_on_seven, raises_on_seven, warmed_before_fork, warmup_fails, wrong_length

from lmmr1_core import hookimpl, load_reward
from lmmr1_core.errors import RewardError
from lmmr1_core.rewards import LoadedReward, RewardSet, TrainerState


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
    rs = RewardSet([LoadedReward("trl", trl_boxed_reward, 1.0, 5.0)])
    try:
        totals, per = rs(
            [[{"role": "user", "content": "q"}]] * 2,
            ["\\boxed{4}", "\\boxed{5}"],
            {"answer": ["4", "4"], "ground_truth": ["4", "4"], "id": ["a", "b"]},
        )
    finally:
        rs.close()
    assert totals == [1.0, 0.0] and per == {"trl": [1.0, 0.0]}


def trl_format_reward_func(completions, **kwargs):
    """TRL's docs' conversational example, verbatim: ``completion[0]["content"]``."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def trl_curriculum_reward(completions, trainer_state, **kwargs):
    """A reward reading TRL's ``trainer_state`` (a curriculum on the step)."""
    return [float(trainer_state.global_step) + 0.5 * (trainer_state.max_steps or 0) for _ in completions]


def _score(fn, completions, conversational=False, state=None, **columns):
    rs = RewardSet([LoadedReward("r", fn, 1.0, 5.0, 1, conversational)])
    try:
        cols = {"id": [str(i) for i in range(len(completions))], **columns}
        return rs([[{"role": "user", "content": "q"}]] * len(completions), completions, cols, state)[1]["r"]
    finally:
        rs.close()


def test_a_conversational_trl_reward_gets_conversational_completions():
    texts = ["<think>a</think><answer>b</answer>", "no"]
    assert _score(trl_format_reward_func, texts, conversational=True) == [1.0, 0.0]
    # as strings it raises (TypeError: string indices) and every sample is unscored: the flag is what fixes it
    assert _score(trl_format_reward_func, texts) == [None, None]


def test_a_reward_declares_conversational_or_the_stage_file_says_so(tmp_path):
    from lmmr1_core.config import RewardSpec
    from lmmr1_core.plugins import get_plugin_manager

    def declared(completions, **kwargs):
        return [1.0 if isinstance(c, list) and c[0]["role"] == "assistant" else 0.0 for c in completions]

    declared.conversational = True

    class P:
        @hookimpl
        def register_rewards(self, register):
            register("declared", declared)
            register("trl_format", trl_format_reward_func)

    pm = get_plugin_manager()
    pm.register(P(), name="conv")
    try:
        specs = [RewardSpec(name="declared"), RewardSpec(name="trl_format", completions="conversational")]
        rs = RewardSet.from_specs(specs)
        try:
            _, per = rs([[{"role": "user", "content": "q"}]], ["<think>a</think><answer>b</answer>"], {"id": ["0"]})
        finally:
            rs.close()
    finally:
        pm.unregister(name="conv")
    assert per == {"declared": [1.0], "trl_format": [1.0]}


def test_trl_trainer_state_reaches_a_reward_that_takes_it():
    assert _score(trl_curriculum_reward, ["a", "b"], state=TrainerState(7, 10, "fre")) == [12.0, 12.0]
    # rewards that do not name it (and have no **kwargs) are called without it
    assert _score(lambda prompts, completions, id: [1.0] * len(completions), ["a"], state=TrainerState(1)) == [1.0]


def test_math_accuracy_scores_none_when_the_verifier_raises(monkeypatch):
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", broken)
    # an equivalence only the symbolic check can see (no string or numeric fast path decides it)
    scores = load_reward("math_accuracy")(prompts=["p"], completions=["<answer>\\sec^2(y)</answer>"],
                                          answer=["\\tan^2(y)+1"])  # fmt: skip
    assert scores == [None]


def test_weighted_total_skips_not_applicable():
    rs = RewardSet([LoadedReward("math", load_reward("math_accuracy"), 0.9, 5.0),
                    LoadedReward("one", always_one, 0.1, 5.0)])  # fmt: skip
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
    rs = RewardSet([LoadedReward("raiser", raises_on_seven, 1.0, 5.0)])
    try:
        totals, _ = rs(["p"] * 3, ["a", "b", "c"], {"answer": ["1", "7", "2"], "id": ["s1", "s7", "s2"]})
        assert totals == [0.5, None, 0.5]
        assert rs.counters()["reward/raiser/errors"] == 1
        assert "raised on sample s7: KeyError" in capsys.readouterr().err
    finally:
        rs.close()


def test_reward_that_hangs_is_killed_scored_zero_and_counted():
    rs = RewardSet([LoadedReward("hanger", hangs_on_seven, 1.0, 0.5)])
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
    rs = RewardSet([LoadedReward("short", wrong_length, 1.0, 5.0, 1)])
    try:
        with pytest.raises(RewardError, match="reward 'short' returned 2 scores for 1 completions"):
            rs(["p", "p"], ["a", "b"], {"id": ["x", "y"]})
    finally:
        rs.close()


def test_a_rewards_warmup_runs_once_in_the_trainer_and_the_workers_fork_warm():
    sets = [RewardSet([LoadedReward("warm", warmed_before_fork, 1.0, 5.0, 2)]) for _ in range(2)]
    try:
        for rs in sets:
            totals, _ = rs(["p"] * 3, ["a", "b", "c"], {"id": ["x", "y", "z"]})
            assert totals == [1.0, 1.0, 1.0]
    finally:
        for rs in sets:
            rs.close()


def test_a_warmup_that_fails_is_a_warning_and_scoring_goes_on(capsys):
    rs = RewardSet([LoadedReward("cold", warmup_fails, 1.0, 5.0, 1)])
    try:
        assert rs(["p"], ["a"], {"id": ["x"]})[0] == [0.25]
    finally:
        rs.close()
    assert "warning: reward 'cold': its warmup failed (OSError: no such table); scoring goes on" in (
        capsys.readouterr().err)  # fmt: skip
