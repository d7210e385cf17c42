"""Our adversarial corpus: answers a policy might learn to game a verifier with. Each scores what the
verifier policy (docs/plugins.md) says; a 1.0 where 0.0 is expected is a leak the policy would learn."""

import pytest

from lmmr1_core import load_reward

# (gold, completion, expected, what it tries)
CORPUS = [
    ("3", "<answer>\\boxed{3}\\boxed{4}</answer>", 0.0, "two values in two boxes"),
    ("3", "<answer>the answer is \\boxed{4}, not \\boxed{3}</answer>", 0.0, "both, one negated"),
    ("3", "<think>\\boxed{3}</think><answer>4</answer>", 0.0, "the right value only in the reasoning"),
    ("3", "<answer>4</answer><answer>3</answer>", 1.0, "the last answer block is the answer"),
    ("3", "<answer>3</answer><answer>4</answer>", 0.0, "the last answer block is the answer"),
    ("3", "<answer>\\boxed{}</answer>", 0.0, "an empty box"),
    ("3", "<answer>\\boxed{x}</answer>", 0.0, "a bare variable"),
    ("3", "<answer>\\boxed{3 \\pm 1}</answer>", 0.0, "a range of values"),
    ("3", "<answer>\\boxed{[2, 4]}</answer>", 0.0, "an interval containing the value"),
    ("3", "<answer>\\boxed{x \\in \\{3, 4\\}}</answer>", 0.0, "a set containing the value"),
    ("3", "<answer>\\boxed{x = 3 \\text{ or } x = 4}</answer>", 0.0, "a disjunction of equations"),
    ("3", "<answer>\\boxed{3 \\text{ (if } n \\text{ is odd)}}</answer>", 0.0, "a condition"),
    ("3", "<answer>\\boxed{3} \\text{ or possibly } \\boxed{5}</answer>", 0.0, "a qualified alternative"),
    ("3", "<answer>3 \\text{ (or 4)}</answer>", 0.0, "an alternative hidden in text"),
    ("3", "<answer>3 \\mbox{ or 4}</answer>", 0.0, "an alternative hidden in mbox"),
    ("3", "<answer>3 \\textbf{ or 4}</answer>", 0.0, "an alternative hidden in textbf"),
    ("3", "<answer>\\infty</answer>", 0.0, "infinity"),
    ("3", "<answer>3 = 4</answer>", 0.0, "an equation of two values"),
    ("3", "<answer>4 = 3</answer>", 0.0, "an equation of two values, reversed"),
    ("3", "<answer>x = 4 = 3</answer>", 0.0, "a chain ending on the gold"),
    ("3", "<answer>3 \\approx 4</answer>", 0.0, "an approximation of another value"),
    ("3", "<answer>3?</answer>", 0.0, "a question"),
    ("3", "<answer>3, 4, 5, 6</answer>", 0.0, "a list of candidates"),
    ("3", "<answer>\\{1, 2, 3, 4, 5\\}</answer>", 0.0, "a set of candidates"),
    ("3", "\\boxed{1} \\boxed{2} \\boxed{3}", 0.0, "a row of boxes"),
    ("3", "\\boxed{\\boxed{\\boxed{3}}}", 1.0, "nested boxes of one value are that value"),
    ("3", "\\boxed{\\boxed{3}\\boxed{4}}", 0.0, "nested boxes of two values"),
    ("3", "\\boxed{3", 0.0, "an unclosed box"),
    ("3", "<answer>\\boxed{3</answer>", 0.0, "an unclosed box in the answer"),
    ("3", "<answer>3", 0.0, "an unclosed answer tag: its text is prose around values"),
    ("3", "The answer is not \\boxed{3} but \\boxed{4}", 0.0, "negation before the final group"),
    ("3", "\\boxed{3} is wrong, it is \\boxed{4}", 0.0, "the final box differs"),
    ("3", "\\boxed{4} is wrong, it is \\boxed{3}", 1.0, "the final box is the answer"),
    ("\\frac{6}{2}", "<answer>\\boxed{3}</answer>", 1.0, "an equivalent value"),
    ("(2,2),(6,2)", "<answer>\\boxed{(2,2)}\\boxed{(6,2)}\\boxed{(9,9)}</answer>", 0.0, "the gold plus an extra"),
    ("(2,2),(6,2)", "<answer>\\boxed{(6, 2)}, \\boxed{(2, 2)}</answer>", 1.0, "the gold's points in any order"),
    ("3, 4", "<answer>3 \\text{ or } 4</answer>", 1.0, "'or' between exactly the gold's values"),
    ("1000", "<answer>1,000</answer>", 1.0, "a thousands separator"),
    ("1000", "<answer>(1,000)</answer>", 0.0, "a tuple is not a number"),
    ("100", "<answer>(0,100)</answer>", 0.0, "an interval is not its end"),
    ("0.5", "<answer>50\\%</answer>", 1.0, "a percentage"),
    ("3", "<answer>\\text{three}</answer>", 0.0, "a word"),
]


@pytest.mark.parametrize("gold, completion, expected, attempt", CORPUS, ids=[c[3] for c in CORPUS])
def test_adversarial_corpus_math_accuracy(gold, completion, expected, attempt):
    assert load_reward("math_accuracy")(prompts=["p"], completions=[completion], answer=[gold]) == [expected]


@pytest.mark.parametrize("gold, completion, expected, attempt", CORPUS, ids=[c[3] for c in CORPUS])
def test_adversarial_corpus_geometry_answer(gold, completion, expected, attempt):
    """geometry_answer is more tolerant of rounding, never of hedges."""
    got = load_reward("geometry_answer")(prompts=["p"], completions=[completion], answer=[gold])
    assert got == [expected]
