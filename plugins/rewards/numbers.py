"""Fast paths and limits for the verifiers: exact numbers without sympy, a working time limit, and a
guard against expressions no time limit can stop (a C-level ``9**(9**9)`` ignores signals)."""

from __future__ import annotations

import math
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

# -- a time limit that interrupts Python code (sympy) in the main thread --------------------------------


class TimeUp(BaseException):
    """Raised by ``time_limit``; a BaseException so that ``except Exception`` in sympy or math-verify
    cannot swallow it."""


@contextmanager
def time_limit(seconds: float | None):
    """Raise ``TimeUp`` after ``seconds`` (SIGALRM via ``setitimer``); no limit outside the main thread,
    where the reward workers' own per-sample limit still applies."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):
        raise TimeUp()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- expressions too costly to evaluate at all -------------------------------------------------------------

_TOWER = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\(?[\w.]+\)?\s*\^|\w\s*\*\*\s*\(?\w+\)?\s*\*\*\s*\(?\w")  # a^{b^c}, a**b**c
_BIG_POWER = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*\d{6,}")  # an exponent of a million or more
_BIG_FACTORIAL = re.compile(r"\d{5,}\s*\)?\s*!|!\s*\)?\s*!|\\(?:binom|choose)\s*\{\s*\d{6,}")
_DEEP = 60  # nesting deeper than this is not an answer, and sympy's parser recurses on it


def too_costly(text: str) -> bool:
    """Power towers, exponents of a million or more, factorials of 10,000 or more, very deep nesting:
    such answers score 0 without being parsed (their big-integer arithmetic cannot be interrupted)."""
    if _TOWER.search(text) or _BIG_POWER.search(text) or _BIG_FACTORIAL.search(text):
        return True
    depth = deepest = 0
    for ch in text:
        if ch in "{(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})":
            depth -= 1
    return deepest > _DEEP


# -- exact numbers: integers, decimals, fractions, k*sqrt(n), and tuples of them ---------------------------

_FRAC = re.compile(r"^\\[dt]?frac\{(\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}$|^\\[dt]?frac(\d)(\d)$")
_SLASH = re.compile(r"^(\d+)/(\d+)$")
_DECIMAL = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_ROOT = re.compile(r"^(\d+(?:\.\d+)?)?(?:\\cdot|\*)?\\sqrt(?:\{(\d+)\}|(\d))$")
_ROOT_FRAC = re.compile(r"^\\[dt]?frac\{(\d+)?\\sqrt\{(\d+)\}\}\{(\d+)\}$")
_DELIMS = re.compile(r"\s+|^\$+|\$+$|^\\\(|\\\)$|^\\\[|\\\]$")
_LABEL = re.compile(r"^([A-Za-z](?:_\{?\w+\}?)?)=([^=<>]+)$")
_MAX_DIGITS = 200


@dataclass(frozen=True)
class Exact:
    """``coef * sqrt(radicand)`` (radicand squarefree, 1 for a rational); ``decimal`` when written with
    a decimal point, which math-verify compares rounded to 6 places rather than exactly."""

    coef: Fraction
    radicand: int = 1
    decimal: bool = False

    def __float__(self) -> float:
        return float(self.coef) * math.sqrt(self.radicand)


def _squarefree(n: int) -> tuple[int, int]:
    """n = k^2 * m with m squarefree: (k, m)."""
    k, m, p = 1, n, 2
    while p * p <= m:
        while m % (p * p) == 0:
            m //= p * p
            k *= p
        p += 1 if p == 2 else 2
    return k, m


def _root(coef: Fraction, n: int, decimal: bool) -> Exact | None:
    if n >= 10**10:
        return None
    k, m = _squarefree(n)
    coef *= k
    return Exact(coef, m if coef else 1, decimal)


def exact_number(text: str) -> Exact | None:
    """The exact value of a plain number (``-3``, ``0.75``, ``\\frac{3}{4}``, ``3/4``, ``2\\sqrt{2}``,
    ``\\frac{\\sqrt{3}}{2}``); None for anything else (left to sympy)."""
    s = _DELIMS.sub("", text)
    sign = 1
    while s[:1] in ("-", "+"):
        sign, s = (-sign if s[0] == "-" else sign), s[1:]
    if not s or len(s) > _MAX_DIGITS:
        return None
    if _DECIMAL.match(s):
        return Exact(sign * Fraction(s), 1, "." in s)
    m = _FRAC.match(s) or _SLASH.match(s)
    if m:
        num, den = [g for g in m.groups() if g is not None]
        if float(den) == 0:
            return None
        return Exact(sign * Fraction(num) / Fraction(den), 1, "." in num + den)
    m = _ROOT.match(s)
    if m:
        coef = Fraction(m.group(1) or 1)
        return _root(sign * coef, int(m.group(2) or m.group(3)), "." in (m.group(1) or ""))
    m = _ROOT_FRAC.match(s)
    if m and int(m.group(3)):
        return _root(sign * Fraction(int(m.group(1) or 1), int(m.group(3))), int(m.group(2)), False)
    return None


def _numbers_equal(a: Exact, b: Exact, decimals: int) -> bool | None:
    if a.coef == b.coef and a.radicand == b.radicand:
        return True
    if not (a.decimal or b.decimal):
        return False  # two exact values in canonical form differ
    # math-verify compares floats rounded to `decimals` places: only a clear difference is decided here
    return False if abs(float(a) - float(b)) > 3 * 10.0**-decimals else None


def _split_top(s: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    return parts + [s[start:]]


def _sequence(text: str) -> tuple[str, list[Exact]] | None:
    s = _DELIMS.sub("", text)
    if len(s) < 5 or s[0] not in "([" or s[-1] not in ")]":
        return None
    items = [exact_number(x) for x in _split_top(s[1:-1])]
    if len(items) < 2 or any(x is None for x in items):
        return None
    return s[0] + s[-1], items


def _unlabel(text: str) -> tuple[str | None, str]:
    m = _LABEL.match(_DELIMS.sub("", text))
    return (m.group(1), m.group(2)) if m else (None, text)


def fast_equal(gold: str, pred: str, decimals: int = 6) -> bool | None:
    """Equality of two normalised answers decided without sympy, or None when it needs sympy: equal
    strings, exact numbers (``x = 3`` against ``3`` too), tuples and intervals of exact numbers."""
    if gold == pred:
        return True
    (gold_label, gold_value), (pred_label, pred_value) = _unlabel(gold), _unlabel(pred)
    if gold_label and pred_label and gold_label != pred_label:
        return None
    a, b = exact_number(gold_value), exact_number(pred_value)
    if a is not None and b is not None:
        return _numbers_equal(a, b, decimals)
    if a is not None or b is not None:
        return None
    seq_a, seq_b = _sequence(gold_value), _sequence(pred_value)
    if seq_a is None or seq_b is None or seq_a[0] != seq_b[0] or len(seq_a[1]) != len(seq_b[1]):
        return None
    verdicts = [_numbers_equal(x, y, decimals) for x, y in zip(seq_a[1], seq_b[1])]
    if all(v is True for v in verdicts):
        return True
    return False if False in verdicts else None
