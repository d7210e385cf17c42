"""Geometry answers: numbers within a relative tolerance, degrees vs radians, pi and root forms.

Figures' answers are often rounded (``≈ 8.66``) or given in the other angle unit, where exact
symbolic equality is too strict. A labelled number (``x = 3``, ``BC = \\sqrt{113}``,
``\\angle ABC = 79^\\circ``) is compared by its value; anything that is not a number on both sides
falls back to ``math_accuracy``'s equivalence. Choice questions go to ``choice_accuracy``. The same
answer policy (one final answer, no hedges) and time limit apply.
"""

from __future__ import annotations

import functools
import math
import re

from lmmr1_plugins.rewards.answer import Final, final_answer, normalize
from lmmr1_plugins.rewards.choice import choice_accuracy, gold_letter, options_map
from lmmr1_plugins.rewards.math import _parse, answer_matches, sides_disagree
from lmmr1_plugins.rewards.numbers import TimeUp, exact_number, time_limit, too_costly

_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\bdeg(?:rees?)?\b", re.IGNORECASE)
_NUMERIC = re.compile(
    r"^(?:[\d.\s+\-*/^(){}]|\\(?:[dt]?frac|sqrt|cdot|times|pi|circ|degree)(?![a-zA-Z])|π|°|deg(?:rees?)?)+$"
)
_LABEL = re.compile(r"^\s*([^=<>]*?[A-Za-z][^=<>]*?)\s*=\s*([^=<>]+)$")


def _unlabel(text: str) -> str:
    """``BC = \\sqrt{113}`` -> ``\\sqrt{113}``: a name (no digits) equal to a number is that number."""
    m = _LABEL.match(text)
    if m and not any(c.isdigit() for c in m.group(1)) and _NUMERIC.match(m.group(2).strip()):
        return m.group(2).strip()
    return text


@functools.lru_cache(maxsize=65536)
def numeric_value(text: str) -> float | None:
    """The real value of a bare number (``8.66``, ``5\\sqrt{3}``, ``\\frac{\\pi}{3}``, ``60^\\circ``), else None."""
    text = normalize(text)
    exact = exact_number(text)
    if exact is not None:
        return float(exact)
    if not _NUMERIC.match(text) or not any(c.isdigit() for c in text) or too_costly(text):
        return None
    parsed = _parse(text)
    expr = next((x for x in parsed if not isinstance(x, str)), None)
    try:
        if expr is not None and getattr(expr, "is_number", False):
            value = complex(expr.evalf())
            return value.real if abs(value.imag) < 1e-12 and math.isfinite(value.real) else None
        if isinstance(expr, (int, float)):
            return float(expr)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _in_degrees(text: str) -> bool:
    return bool(_DEGREES.search(text))


def _in_radians(text: str) -> bool:
    return "\\pi" in text or "π" in text or "rad" in text


def same_number(gold: str, pred: str, rel_tol: float, abs_tol: float = 1e-9) -> bool | None:
    """Tolerant numeric equality, converting between degrees and radians; None if either is not a number."""
    g, p = numeric_value(gold), numeric_value(pred)
    if g is None or p is None:
        return None
    candidates = [p]
    if _in_degrees(gold) and _in_radians(pred) and not _in_degrees(pred):
        candidates.append(math.degrees(p))
    if _in_radians(gold) and _in_degrees(pred) and not _in_radians(pred):
        candidates.append(math.radians(p))
    return any(math.isclose(g, c, rel_tol=rel_tol, abs_tol=abs_tol) for c in candidates)


def _score(gold: str, final: Final, rel_tol: float) -> float | None:
    if final.text is None or final.hedge or too_costly(final.text) or (not final.prose and sides_disagree(final.text)):
        return 0.0 if numeric_value(gold) is not None or answer_matches(gold, Final(None)) is not None else None
    same = None if final.prose else same_number(gold, _unlabel(final.text), rel_tol)
    if same is not None:
        return float(same)
    exact = answer_matches(gold, final)  # not a number on both sides: exact symbolic equality
    return None if exact is None else float(exact)


def geometry_answer(
    prompts, completions, answer, options=None, choices=None, rel_tol: float = 1e-2, time_limit_s: float = 2.0,
    **kwargs,
) -> list[float | None]:  # fmt: skip
    """1.0 for a numerically equal answer (``rel_tol``), or the right option of a choice question;
    ``time_limit_s`` bounds each sample's symbolic work (then it scores 0)."""
    n = len(completions)
    opts_col = options if options is not None else (choices if choices is not None else [None] * n)
    scores: list[float | None] = []
    for prompt, completion, gold, opts in zip(prompts, completions, answer, opts_col):
        if gold is None:
            scores.append(None)
            continue
        table = options_map(opts, prompt)
        if table and gold_letter(gold, table) is not None:
            scores.append(choice_accuracy([prompt], [completion], [gold], options=[opts])[0])
            continue
        try:
            with time_limit(time_limit_s):
                scores.append(_score(str(gold), final_answer(completion or ""), rel_tol))
        except TimeUp:
            scores.append(0.0)
        except Exception:
            scores.append(None)
    return scores
