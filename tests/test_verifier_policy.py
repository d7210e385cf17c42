"""The verifier policy (docs/plugins.md, "Verifier policy"): every category of leak found in issue 16 pinned."""

import pytest

from lmmr1_core import load_reward


def math(completion, gold, **options):
    return load_reward("math_accuracy", **options)(prompts=["p"], completions=[completion], answer=[gold])[0]


def geometry(completion, gold, **cols):
    cols = {k: [v] for k, v in cols.items()}
    return load_reward("geometry_answer")(prompts=["p"], completions=[completion], answer=[gold], **cols)[0]


def choice(completion, gold="C", options=("1", "2", "3", "4")):
    return load_reward("choice_accuracy")(prompts=["p"], completions=[completion], answer=[gold], options=[options])[0]


@pytest.mark.parametrize(
    "answer",
    [
        "3 \\text{ (or maybe 4, 5, 6)}",  # a qualifier naming other values, hidden in \text
        "5=3",  # an equation whose sides disagree
        "x = 5+5+1 = 7 = 3",
        "\\frac{1}{3} \\approx 3",  # an approximation of another value
        "not \\boxed{3}",  # a negation
        "1, 2, \\boxed{3}",  # other values beside the box
        "\\boxed{\\boxed{1}\\boxed{2}\\boxed{3}}",  # nested boxes are a list, not the last one
        "\\boxed{1}\\boxed{2}\\boxed{3}",
        "3 or 4",  # a disjunction is a list of values
        "\\boxed{3} \\text{ or } \\boxed{4}",
        "3 \\lor 4",
        "maybe 3",
        "3?",
        "\\text{3}",
    ],
)
def test_hedged_answers_score_zero(answer):
    assert math(f"<think>.</think><answer>{answer}</answer>", "3") == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is not \\boxed{3}.",
        "It is \\boxed{3} or \\boxed{4}.",
        "The answer is 3 or 4.",  # prose: the sentence that states the answer hedges
        "So x = 3, maybe 4.",
        "The answer is not 3.",
    ],
)
def test_hedges_without_answer_tags_score_zero(completion):
    assert math(completion, "3") == 0.0


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("<answer>\\boxed{3}</answer>", "3"),
        ("<answer>x = \\boxed{3}</answer>", "3"),
        ("<answer>\\boxed{3} \\text{ cm}^2</answer>", "3"),  # a unit and its exponent are not other values
        ("<answer>x = \\frac{1}{3} \\approx 0.33</answer>", "\\frac{1}{3}"),  # a fair approximation
        ("<answer>2+1 = 3</answer>", "3"),  # sides that agree
        ("Thus \\boxed{3}. Checking: \\boxed{3}", "3"),  # the same value twice is one answer
        ("\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}", "(2,2),(6,2)"),  # boxes that together form the gold
        ("\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}", "(2,2),(6,2)"),
        ("The integers are \\boxed{-2} and \\boxed{1}.", "1, -2"),
        ("<answer>\\boxed{2}, \\boxed{3}</answer>", "\\{2, 3\\}"),
        ("<answer>x = 2 \\text{ or } x = 3</answer>", "2, 3"),  # "or" between the solutions of the gold
        ("The final answer is $3$. I hope it is correct.", "3"),
        ("<answer>3</answer> and then some text", "3"),
    ],
)
def test_one_final_answer_earns_credit(completion, gold):
    assert math(completion, gold) == 1.0


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}", "(2,2)"),  # several boxes against one value
        ("\\boxed{2} and \\boxed{3}", "2"),
        ("\\boxed{2} and \\boxed{3}", "2, 3, 4"),  # a part of the set is not the set
        ("\\boxed{3} later \\boxed{4}", "3"),  # without tags the final group counts: 4
    ],
)
def test_several_boxes_earn_credit_only_as_the_whole_gold(completion, gold):
    assert math(completion, gold) == 0.0


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("(0,100)", "100", 0.0),  # thousands separators never turn tuples or intervals into numbers
        ("(1,234)", "1234", 0.0),
        ("3500", "(3,500)", 0.0),
        ("[0,100]", "[0, 100]", 1.0),
        ("[0, 100]", "[0,100]", 1.0),
        ("11111", "11,\\! 111", 1.0),  # LaTeX thin spaces between digit groups
        ("11111111100", "11,\\! 111,\\! 111,\\! 100", 1.0),
        ("1000", "1\\,000", 1.0),
        ("1000", "1~000", 1.0),
        ("1000", "1 000", 1.0),  # a space-grouped number alone is one number, not 1*000
        ("7425000", "7,425,000", 1.0),
        ("32349", "32, 349", 0.0),  # a comma and a space separate list items
        ("2.5", "2,5", 0.0),  # no decimal commas
        ("(1, 2, 3)", "(1,2,3)", 1.0),
    ],
)
def test_normalisation_never_changes_a_values_type(gold, pred, expected):
    assert math(f"<answer>{pred}</answer>", gold) == expected


@pytest.mark.parametrize(
    "gold, pred",
    [("3", "x = 3"), ("\\sqrt{113}", "BC = \\sqrt{113}"), ("79", "\\angle ABC = 79^\\circ"), ("16\\pi", "A = 16\\pi"),
     ("10.63", "BC = \\sqrt{113}"), ("3", "\\boxed{3}")],
)  # fmt: skip
def test_geometry_answer_takes_labelled_and_non_bare_answers(gold, pred):
    assert geometry(f"<answer>{pred}</answer>", gold) == 1.0
    assert math(f"<answer>{pred}</answer>", gold) == (0.0 if gold == "10.63" else 1.0)


@pytest.mark.parametrize("pred", ["x = 3 \\text{ or } 4", "BC = 5 = 7", "not 3", "3 \\text{ (or 4)}"])
def test_geometry_answer_hedges_score_zero(pred):
    assert geometry(f"<answer>{pred}</answer>", "3") == 0.0


@pytest.mark.parametrize(
    "pred", ["C or D", "C) or D)", "C. D.", "(C) or (D)", "\\boxed{C}\\boxed{D}", "C and D", "not C"]
)
def test_choice_hedges_score_zero(pred):
    assert choice(f"<answer>{pred}</answer>") == 0.0


@pytest.mark.parametrize("pred", ["C", "(C)", "C.", "C. 3", "\\boxed{C}", "The answer is C", "3"])
def test_choice_single_letter_earns_credit(pred):
    assert choice(f"<answer>{pred}</answer>") == 1.0


def test_choice_option_text_naming_a_letter_is_not_a_hedge():
    opts = {"A": "angle B", "B": "angle C"}
    assert choice("<answer>B. angle C</answer>", gold="B", options=opts) == 1.0
    assert choice("The answer is C or D.", gold="C") == 0.0
    assert choice("The answer is C.", gold="C") == 1.0


def test_math_verify_settings_are_options():
    assert math("<answer>0.3333</answer>", "\\frac{1}{3}") == 0.0
    assert math("<answer>0.3333</answer>", "\\frac{1}{3}", float_rounding=4) == 1.0
    assert math("<answer>f(y)</answer>", "f(x)") == 0.0
    assert math("<answer>f(y)</answer>", "f(x)", strict=False) == 1.0


@pytest.mark.parametrize("word", ["tan", "finadngth", "pi", "answer", "inf", "nan", "oo", "xe", "Ie", "ee", "II"])
@pytest.mark.parametrize("gold", ["12", "7.389056", "-1", "3.141593", "0"])
def test_a_bare_word_against_a_number_is_decided_as_math_verify_decides_it(word, gold):
    """Words are decided without sympy (a common answer of an untrained model, 25-50 ms each in sympy),
    except those made of e and i alone, which sympy reads as constants ("ee" is e^2, "II" is -1)."""
    import math_verify
    from lmmr1_plugins.rewards.numbers import fast_equal

    fast = fast_equal(gold, word)
    assert fast is (False if set(word) - set("eEiI") else None)
    verdict = math_verify.verify(math_verify.parse(gold), math_verify.parse(f"${word}$"), float_rounding=6)
    assert math(f"<answer>{word}</answer>", gold) == float(verdict)
