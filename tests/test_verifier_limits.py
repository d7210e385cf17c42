"""Bad input costs at most its time limit, and a slow sample costs only its own time limit."""

import time

import pytest
from helper_plugins import hangs_on_seven

from lmmr1_core import load_reward
from lmmr1_core.rewards import RewardWorkers

BAD = {
    "100k characters, no answer": "x" * 100_000,
    "100k characters of braces": "\\boxed{" * 50_000,
    "unclosed answer tag": "<answer>" + "3 " * 100_000,
    "many unclosed answer tags": "<answer>3" * 20_000,
    "deeply nested braces": "<answer>" + "{" * 5_000 + "3" + "}" * 5_000 + "</answer>",
    "power tower": "<answer>9^{9^{9^{9}}}</answer>",
    "power tower, plain": "<answer>9**9**9**9</answer>",
    "huge exponent": "<answer>2^{99999999}</answer>",
    "huge factorial": "<answer>100000000!</answer>",
    "nested factorial": "<answer>(100!)!</answer>",
    "huge answer": "<answer>" + "1+" * 50_000 + "1</answer>",
    "huge boxed list": "\\boxed{" + ", ".join(["1"] * 20_000) + "}",
}


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("reward", ["math_accuracy", "geometry_answer"])
def test_bad_input_scores_zero_within_the_time_limit(name, reward):
    fn = load_reward(reward, time_limit_s=1.0)
    start = time.perf_counter()
    assert fn(prompts=["p"], completions=[BAD[name]], answer=["3"]) == [0.0]
    assert time.perf_counter() - start < 1.5


def test_geometry_evaluation_is_time_limited():
    fn = load_reward("geometry_answer", time_limit_s=1.0)
    start = time.perf_counter()
    tower = "9^{9^{9^{9}}}"
    assert fn(prompts=["p"], completions=[f"<answer>{tower}</answer>"], answer=[tower]) in ([0.0], [None])
    assert time.perf_counter() - start < 1.5


def test_choice_tag_extraction_is_linear():
    fn = load_reward("choice_accuracy")
    start = time.perf_counter()
    fn(prompts=["p"], completions=["<answer>" * 100_000], answer=["A"], options=[["1", "2"]])
    assert time.perf_counter() - start < 1.0


def test_one_hanging_sample_costs_only_its_own_time_limit():
    workers = RewardWorkers("hanger", hangs_on_seven, timeout_s=1.0, workers=2)
    try:
        workers.score(["p"], ["a"], {"answer": ["1"]})  # start the processes
        answers = [str(i % 5) for i in range(40)]
        answers[3] = answers[30] = "7"  # two hanging samples, one per chunk
        start = time.perf_counter()
        scores = workers.score(["p"] * 40, ["c"] * 40, {"answer": answers, "id": [f"s{i}" for i in range(40)]})
        wall = time.perf_counter() - start
    finally:
        workers.close()
    assert scores[3] == scores[30] == 0.0 and all(s == 0.5 for i, s in enumerate(scores) if i not in (3, 30))
    assert workers.stats.timeouts == 2
    assert wall < 2 * 1.0 + 1.5  # the two limits (in parallel at best) plus restarts, never 40 x the limit


def test_math_accuracy_through_workers_matches_in_process():
    fn = load_reward("math_accuracy")
    completions = [f"<answer>{i}</answer>" for i in range(20)] + [BAD["power tower"], BAD["unclosed answer tag"]]
    answers = [str(i if i % 3 else i + 1) for i in range(20)] + ["3", "3"]
    workers = RewardWorkers("math", fn, timeout_s=5.0, workers=2)
    try:
        through = workers.score(["p"] * len(completions), completions, {"answer": answers})
    finally:
        workers.close()
    assert through == fn(prompts=["p"] * len(completions), completions=completions, answer=answers)
