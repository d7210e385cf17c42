"""Geometry answers: numbers within a relative tolerance, degrees vs radians, pi and root forms.

Figures' answers are often rounded (``≈ 8.66``) or given in the other angle unit, where exact
symbolic equality is too strict; choice questions go to ``choice_accuracy``.
"""

from __future__ import annotations

import math
import re

from lmmr1_plugins.rewards.choice import choice_accuracy, gold_letter, options_map
from lmmr1_plugins.rewards.math import extract_answer, math_accuracy, parse_math

_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\bdeg(?:rees?)?\b", re.IGNORECASE)


def numeric_value(text: str) -> float | None:
    parsed = parse_math(text)
    expr = next((x for x in parsed if not isinstance(x, str)), None)
    try:
        if expr is not None and getattr(expr, "is_number", False):
            value = complex(expr.evalf())
            return value.real if abs(value.imag) < 1e-12 else None
        if isinstance(expr, (int, float)):
            return float(expr)
    except (TypeError, ValueError):
        return None
    return None


def _in_degrees(text: str) -> bool:
    return bool(_DEGREES.search(text))


def _in_radians(text: str) -> bool:
    return "\\pi" in text or "π" in text or "rad" in text


def same_number(gold: str, pred: str, rel_tol: float, abs_tol: float = 1e-9) -> bool | None:
    """Tolerant numeric equality, converting between degrees and radians; None if not numeric."""
    g, p = numeric_value(gold), numeric_value(pred)
    if g is None or p is None:
        return None if g is None else False
    candidates = [p]
    if _in_degrees(gold) and _in_radians(pred) and not _in_degrees(pred):
        candidates.append(math.degrees(p))
    if _in_radians(gold) and _in_degrees(pred) and not _in_radians(pred):
        candidates.append(math.radians(p))
    return any(math.isclose(g, c, rel_tol=rel_tol, abs_tol=abs_tol) for c in candidates)


def geometry_answer(
    prompts, completions, answer, options=None, choices=None, rel_tol: float = 1e-2, **kwargs
) -> list[float | None]:
    """1.0 for a numerically equal answer (``rel_tol``), or the right option of a choice question."""
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
        pred = extract_answer(completion or "")
        if not pred:
            scores.append(0.0 if numeric_value(str(gold)) is not None else None)
            continue
        try:
            same = same_number(str(gold), pred, rel_tol)
        except Exception:
            same = None
        if same is None:  # not a number (an expression, a set, ...): exact symbolic equality
            scores.append(math_accuracy([prompt], [completion], [gold])[0])
        else:
            scores.append(float(same))
    return scores
