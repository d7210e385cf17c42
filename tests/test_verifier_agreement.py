"""``math_accuracy`` against Math-Verify's own test suite (tests/data/math_verify_cases.json, extracted by
tests/data/make_math_verify_cases.py from huggingface/Math-Verify at the commit the file names).

Each case runs with its own settings (float precision, strict, set-relation comparison), the suite's
prediction as the completion and its gold as ``answer``: in-process and through ``RewardSet``, the
path a run uses. Every disagreement is a decision of our verifier policy (docs/plugins.md), listed
here with its reason; any other disagreement fails.
"""

import json
from pathlib import Path

import pytest

from lmmr1_core import load_reward
from lmmr1_core.config import RewardSpec
from lmmr1_core.rewards import RewardSet

DATA = json.loads((Path(__file__).parent / "data" / "math_verify_cases.json").read_text())
CASES = DATA["cases"]

CHAINED = "an equation chain whose numeric sides disagree (7 vs 11, 1/3 vs 11) hedges between values: 0"
DECIMAL_COMMA = "no decimal commas: '1000,99' and '1,22' are lists (sets), never 1000.99 / 1.22"
NEWLINE_MATH = "a value alone in $...$ is the answer even across line breaks (math-verify's LaTeX-only mode: no)"
UNPARSEABLE_GOLD = "a gold math-verify cannot parse is not applicable (None), never matched as a string"
DECISIONS = {
    "test_number_extraction[1000.99-1000,99-1]": DECIMAL_COMMA,
    "test_number_extraction[1,22-1.22-1]": DECIMAL_COMMA,
    "test_latex_notation[$9$-Answer $ \\n 9 \\n $-0]": NEWLINE_MATH,
    "test_latex_notation[$9$-Answer \\\\( \\n 9 \\n \\\\)-0]": NEWLINE_MATH,
    "test_relations_math[$x = 11$-$x = 5+5+1 = 7 =11$-1_0]": CHAINED,
    "test_relations_math[$x = 11$-$x = 5+5+1 = 7 =11$-1_1]": CHAINED,
    "test_relations_math[$x = 1/3$-$x = 5+5+1 = 1/3 \\\\approx 11$-1]": CHAINED,
    "test_open_thoughts[$$x = \\\\frac{1}{2}, x = \\\\frac{-1 \\\\pm \\\\sqrt{13}}{4}$$-"
    "$$\\\\boxed{x = \\\\frac{1}{2}, x = \\\\frac{-1 \\\\pm \\\\sqrt{13}}{4}}$$-1]": UNPARSEABLE_GOLD,
}


def _options(case) -> dict:
    s = case["settings"]
    return {
        "float_rounding": s["precision"],
        "strict": s["strict"],
        "allow_set_relation_comp": s["allow_set_relation_comp"],
    }


def _report(scores) -> tuple[int, dict]:
    wrong = {c["test"]: (c["expected"], s) for c, s in zip(CASES, scores) if (s or 0.0) != c["expected"]}
    return len(CASES) - len(wrong), wrong


def test_the_data_file_names_its_source():
    assert DATA["commit"] and len(DATA["commit"]) == 40 and "Math-Verify" in DATA["source"]
    assert len(CASES) >= 250 and all(c["expected"] == c["math_verify"] for c in CASES)


def test_agreement_in_process():
    scores = [load_reward("math_accuracy", **_options(c))(prompts=["p"], completions=[c["pred"]], answer=[c["gold"]])[0]
              for c in CASES]  # fmt: skip
    agreed, wrong = _report(scores)
    print(f"math_accuracy agrees with Math-Verify's suite on {agreed}/{len(CASES)} cases")
    assert {k: v for k, v in wrong.items() if k not in DECISIONS} == {}
    assert set(wrong) == set(DECISIONS), "a documented disagreement now agrees: drop it from DECISIONS"


@pytest.mark.parametrize("workers", [2])
def test_agreement_through_reward_set(workers):
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(CASES):
        groups.setdefault(tuple(sorted(_options(c).items())), []).append(i)
    scores: list = [None] * len(CASES)
    for options, idx in groups.items():
        rs = RewardSet.from_specs([RewardSpec(name="math_accuracy", workers=workers, timeout_s=30, **dict(options))])
        try:
            _, per = rs(["p"] * len(idx), [CASES[i]["pred"] for i in idx],
                        {"answer": [CASES[i]["gold"] for i in idx], "id": [CASES[i]["test"] for i in idx]})  # fmt: skip
        finally:
            rs.close()
        for i, s in zip(idx, per["math_accuracy"]):
            scores[i] = s
    agreed, wrong = _report(scores)
    assert set(wrong) == set(DECISIONS) and agreed == len(CASES) - len(DECISIONS)
