"""Math answers checked by math-verify (symbolic equality, not string matching), under the verifier
policy of docs/plugins.md: one final answer (``answer.py``), no hedges, time-limited sympy.

Chosen behaviour where math-verify is lenient or blind (each pinned by a test):
- ``50%`` equals both ``50`` and ``0.5`` (math-verify's percentage rule);
- ``2,5`` is the set {2, 5}, not 2.5 (no decimal commas); ``1,000`` / ``1,000,000`` are thousands;
- ``0.333`` does not equal ``1/3`` (floats compare rounded to ``float_rounding`` places; use
  ``geometry_answer`` for rounded answers);
- trigonometry in degrees (``\\sin(60^\\circ)``) is not evaluated as degrees;
- an equation or approximation whose numeric sides disagree (``5=3``, ``x = 7 = 11``) is a hedge.

Speed: a gold answer is parsed once per process (cache); plain numbers, tuples and intervals of them
and identical strings are decided without sympy. ``warm_up`` runs in the trainer before the reward's worker
processes fork from it: the first ``\\tan`` math-verify parses took 0.46 s, the first of each other kind
of expression 50-130 ms, and a step that met them waited that long (README, Benchmarks).
"""

from __future__ import annotations

import functools
import logging
import math
import re

import math_verify  # imported here, not lazily: forked reward workers then start ready (sympy takes ~0.5 s)
from lmmr1_plugins.rewards.answer import Final, final_answer, normalize, prose_hedge
from lmmr1_plugins.rewards.numbers import TimeUp, exact_number, fast_equal, is_plain, time_limit, too_costly

# We pass math-verify no timeout of its own (its signal.alarm would cancel ours): say so once, quietly.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_RELATION = re.compile(r"\\approx|≈|(?<![<>!:=\\])=(?!=)")
_NUMERIC_SIDE = re.compile(r"^(?:[\d.\s+\-*/^(){}]|\\(?:[dt]?frac|sqrt|cdot|times|div|pi|circ)(?![a-zA-Z])|\\?%)+$")


def _parse(text: str, prose: bool = False) -> list:
    """math-verify's parse (LaTeX, then plain expressions); [] when nothing symbolic comes out."""
    if not text or too_costly(text):
        return []
    configs = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
    delimited = prose or "$" in text or "\\(" in text or "\\[" in text or "\\boxed" in text
    for candidate in [text] if delimited else [f"${text}$", text]:
        parsed = math_verify.parse(candidate, extraction_config=configs, parsing_timeout=None)
        if any(not isinstance(x, str) for x in parsed):
            return parsed
    return []


_SLOW_GOLDS: set[str] = set()


@functools.lru_cache(maxsize=65536)
def parse_gold(gold: str) -> tuple[str, tuple]:
    """A gold answer normalised and parsed, once per process."""
    text = normalize(gold)
    return text, tuple(_parse(text))


def _value(side: str) -> float | None:
    exact = exact_number(side)
    if exact is not None:
        return float(exact)
    parsed = _parse(side)
    try:
        value = complex(parsed[0].evalf()) if parsed and hasattr(parsed[0], "evalf") else None
    except (TypeError, ValueError, AttributeError):
        return None
    return value.real if value is not None and abs(value.imag) < 1e-12 else None


def sides_disagree(text: str) -> bool:
    """An equation chain whose numeric sides differ (``5=3``, ``x = 5+5+1 = 7 = 11``), or an
    approximation off by more than 2% (``1/3 \\approx 1.3``): the answer hedges between values."""
    if "=" not in text and "approx" not in text and "≈" not in text:
        return False
    sides, approx, depth, start = [], [False], 0, 0
    for m in re.finditer(r"[{}]|\\approx|≈|(?<![<>!:=\\])=(?!=)", text):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
        elif depth == 0:
            sides.append(text[start : m.start()])
            approx.append(m.group() != "=")
            start = m.end()
    sides.append(text[start:])
    values = []
    for side, is_approx in zip(sides, approx):
        side = side.strip()
        if _NUMERIC_SIDE.match(side) and any(c.isdigit() for c in side):
            value = _value(side)
            if value is not None:
                values.append((value, is_approx))
    exact = [v for v, a in values if not a]
    reference = exact[-1] if exact else (values[-1][0] if values else 0.0)
    for value, is_approx in values:
        tol = (0.02, 0.01) if is_approx else (1e-9, 1e-9)
        if not math.isclose(value, reference, rel_tol=tol[0], abs_tol=tol[1]):
            return True
    return False


def _verdict(gold: str, pred: str, prose: bool, float_rounding: int, strict: bool, set_relations: bool) -> bool:
    """Is the (normalised) prediction equivalent to the gold? Fast paths first, then math-verify."""
    if not prose:
        fast = fast_equal(gold, pred, float_rounding)
        if fast is not None:
            return fast
    _, gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return False
    pred_parsed = _parse(pred, prose)
    if not pred_parsed:
        return False
    if prose:  # the answer math-verify found in prose must not hedge either
        found = next((x for x in pred_parsed if isinstance(x, str)), "")
        if sides_disagree(found) or prose_hedge(pred, found):
            return False
    return bool(
        math_verify.verify(
            list(gold_parsed), pred_parsed, float_rounding=float_rounding, strict=strict,
            allow_set_relation_comp=set_relations, timeout_seconds=None,
        )
    )  # fmt: skip


def answer_matches(
    gold: str, final: Final, float_rounding: int = 6, strict: bool = True, set_relations: bool = False
) -> bool | None:
    """True/False for a final answer against ``gold``; None when the gold cannot be parsed."""
    gold_text = _gold_text(gold)
    plain = is_plain(gold_text)  # a plain number needs no sympy to be known parseable
    if not plain:
        if gold in _SLOW_GOLDS:
            return None
        try:
            if not parse_gold(gold_text)[1]:
                return None
        except TimeUp:
            _SLOW_GOLDS.add(gold)  # not cached by lru_cache: remember it, or every sample would wait again
            raise
    if final.text is None or final.hedge or too_costly(final.text):
        return False
    if not final.prose and sides_disagree(final.text):
        return False
    return _verdict(gold_text, final.text, final.prose, float_rounding, strict, set_relations)


@functools.lru_cache(maxsize=65536)
def _gold_text(gold: str) -> str:
    return normalize(gold)


def extract_answer(completion: str) -> str | None:
    """The completion's final answer text, or None when it has none or hedges (see ``answer.py``)."""
    final = final_answer(completion or "")
    return None if final.hedge else final.text


WARM_UP = (
    ("\\tan(x)+\\sin(x)\\cos(x)", "\\cot(x)"),
    ("x^2+\\log(3)-e^{x}", "\\ln(2)"),
    ("\\frac{\\pi}{2}", "\\sqrt{2}"),
    ("[1,2]", "(1,2]"),
    ("x=3", "3.5\\%"),
    ("\\{1,2\\}", "\\infty"),
    ("2\\sqrt{3}", "y=2x+1"),
)
"""(answer, gold) pairs whose checks load what math-verify and sympy load on first use: functions, logs
and powers, constants, intervals, sets, equations, percentages."""


def warm_up() -> None:
    """Check ``WARM_UP`` once, so that this process (and the workers that fork from it) has loaded it."""
    for text, gold in WARM_UP:
        math_accuracy(prompts=[""], completions=[f"<answer>{text}</answer>"], answer=[gold])


def math_accuracy(
    prompts,
    completions,
    answer,
    float_rounding: int = 6,
    strict: bool = True,
    allow_set_relation_comp: bool = False,
    time_limit_s: float = 2.0,
    **kwargs,
) -> list[float | None]:
    """1.0 if the one final answer equals the gold ``answer`` per math-verify, else 0.0.

    ``float_rounding``, ``strict`` and ``allow_set_relation_comp`` are math-verify's ``verify``
    settings; ``time_limit_s`` bounds each sample's parsing and comparison (then it scores 0). A gold
    answer math-verify cannot parse, or a verifier exception, gives ``None`` (not applicable, counted),
    never a free 1.0: that would reward the policy for breaking the verifier.
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            scores.append(None)
            continue
        try:
            with time_limit(time_limit_s):
                final = final_answer(completion or "")
                same = answer_matches(str(gold), final, float_rounding, strict, allow_set_relation_comp)
            scores.append(None if same is None else float(same))
        except TimeUp:
            scores.append(0.0)
        except Exception:
            scores.append(None)
    return scores
