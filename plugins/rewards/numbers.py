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
_WORD = re.compile(r"[A-Za-z]{2,}")
_CONSTANT_LETTERS = set("eEiI")  # sympy reads these alone as e and the imaginary unit: "ee" is e^2, "II" is -1
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


_MARK = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°|\\?%)$")


def _sequence(text: str) -> tuple[str, list[Exact]] | None:
    """``(a, b)``, ``[a, b)``, ``\\{a, b\\}`` of exact numbers: (brackets, values); sets as ``{}``."""
    s = _DELIMS.sub("", text)
    if s.startswith("\\{") and s.endswith("\\}"):
        s = "{" + s[2:-2] + "}"
    if len(s) < 3 or s[0] not in "([{" or s[-1] not in ")]}":
        return None
    items = [exact_number(x) for x in _split_top(s[1:-1])]
    if len(items) < 2 or any(x is None for x in items):
        return None
    return s[0] + s[-1], items


def _plain(text: str) -> tuple[str | None, str, Exact | None, tuple | None]:
    """(label, value text, exact number, sequence) of an answer, units of degrees and percent aside."""
    label, value = _unlabel(text)
    value = _MARK.sub("", value.strip())
    number = exact_number(value)
    return label, value, number, None if number is not None else _sequence(value)


def is_plain(text: str) -> bool:
    """An answer ``fast_equal`` decides alone: a number, or a tuple, interval or set of numbers."""
    _, _, number, seq = _plain(text)
    return number is not None or seq is not None


def _unlabel(text: str) -> tuple[str | None, str]:
    m = _LABEL.match(_DELIMS.sub("", text))
    return (m.group(1), m.group(2)) if m else (None, text)


def _sequences_equal(a: tuple, b: tuple, decimals: int) -> bool | None:
    (brackets_a, xs), (brackets_b, ys) = a, b
    if brackets_a == "{}" or brackets_b == "{}":
        if brackets_a != brackets_b or any(v.decimal for v in xs + ys):
            return None
        key = lambda v: (float(v), v.coef, v.radicand)  # noqa: E731
        return sorted(set(xs), key=key) == sorted(set(ys), key=key)
    if len(xs) != len(ys):
        return None
    if brackets_a != brackets_b:  # [1,3) is not (1,3); longer lists with other brackets: ask sympy
        return False if len(xs) == 2 else None
    verdicts = [_numbers_equal(x, y, decimals) for x, y in zip(xs, ys)]
    if all(v is True for v in verdicts):
        return True
    return False if False in verdicts else None


def fast_equal(gold: str, pred: str, decimals: int = 6) -> bool | None:
    """Equality of two normalised answers decided without sympy, or None when it needs sympy: equal
    strings, exact numbers (``x = 3`` against ``3``, ``30^\\circ`` against ``30``), tuples, intervals
    and sets of exact numbers, and a bare word against a number."""
    if gold == pred:
        return True
    if gold.rstrip().endswith("%") != pred.rstrip().endswith("%"):
        return None  # 50% is both 50 and 0.5: math-verify's rule
    (gold_label, _, a, seq_a), (pred_label, _, b, seq_b) = _plain(gold), _plain(pred)
    if gold_label and pred_label and gold_label != pred_label:
        return None
    if a is not None and b is not None:
        return _numbers_equal(a, b, decimals)
    if a is not None and _WORD.fullmatch(pred) and set(pred) - _CONSTANT_LETTERS:
        return False  # a word ("tan", "answer") is a product of free symbols, never a number: 25-50 ms in sympy
    if seq_a is not None and seq_b is not None:
        return _sequences_equal(seq_a, seq_b, decimals)
    if a is None and b is None and seq_a is None and seq_b is None and "=" not in gold + pred:
        return poly_equal(gold, pred)
    return None


# -- polynomials and rational functions of one variable, compared exactly at sample points ----------------

_POLY_CHARS = re.compile(r"^[0-9a-z+\-*/^(){}. ]+$")
_POLY_TOKEN = re.compile(r"\s*(?:(\d+)|([a-z])|(\*\*|[+\-*/^(){}]))")
_PROBES = [Fraction(2), Fraction(3), Fraction(5), Fraction(-7), Fraction(11, 3), Fraction(-5, 2), Fraction(13),
           Fraction(17, 7), Fraction(-19, 5), Fraction(23), Fraction(29, 11), Fraction(-31)]  # fmt: skip
_MAX_EXPONENT = 12


class _NotPoly(Exception):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.replace("\\cdot", "*").replace("\\left", "").replace("\\right", "").replace(" ", "")
    while pos < len(text):
        m = _POLY_TOKEN.match(text, pos)
        if not m:
            raise _NotPoly
        out.append(m.group(0).strip())
        pos = m.end()
    return ["^" if t == "**" else t for t in out]


class _Poly:
    """Evaluates a token list at ``x`` (exact), and bounds its degree: sums for products and quotients."""

    def __init__(self, tokens: list[str], var: str) -> None:
        self.tokens, self.var, self.i = tokens, var, 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        self.i += 1
        return self.tokens[self.i - 1]

    def expr(self, x: Fraction) -> tuple[Fraction, int]:
        value, degree = self.term(x)
        while self.peek() in ("+", "-"):
            sign = self.take()
            v, d = self.term(x)
            value, degree = (value + v if sign == "+" else value - v), max(degree, d)
        return value, degree

    def term(self, x: Fraction) -> tuple[Fraction, int]:
        value, degree = self.factor(x)
        while self.peek() is not None and (self.peek() in ("*", "/") or self.peek() in ("(", "{", self.var)
                                           or self.peek().isdigit()):  # fmt: skip
            op = self.take() if self.peek() in ("*", "/") else "*"  # 2x, 3(x+1), (x+1)(x-1): implicit products
            v, d = self.factor(x)
            if op == "/":
                if v == 0:
                    raise ZeroDivisionError
                value /= v
            else:
                value *= v
            degree += d
        return value, degree

    def factor(self, x: Fraction) -> tuple[Fraction, int]:
        if self.peek() in ("-", "+"):
            sign = self.take()
            v, d = self.factor(x)
            return (-v if sign == "-" else v), d
        value, degree = self.atom(x)
        if self.peek() == "^":
            self.take()
            exponent, exp_degree = self.atom(x)
            if exp_degree or exponent.denominator != 1 or not 0 <= exponent <= _MAX_EXPONENT:
                raise _NotPoly
            value, degree = value ** int(exponent), degree * int(exponent)
        return value, degree

    def atom(self, x: Fraction) -> tuple[Fraction, int]:
        token = self.take() if self.peek() is not None else None
        if token is None:
            raise _NotPoly
        if token.isdigit():
            return Fraction(int(token)), 0
        if token == self.var:
            return x, 1
        if token in ("(", "{"):
            value = self.expr(x)
            if self.peek() != (")" if token == "(" else "}"):
                raise _NotPoly
            self.take()
            return value
        raise _NotPoly


def _evaluate(tokens: list[str], var: str, x: Fraction) -> tuple[Fraction, int]:
    parser = _Poly(tokens, var)
    value = parser.expr(x)
    if parser.i != len(tokens):
        raise _NotPoly
    return value


def poly_equal(gold: str, pred: str) -> bool | None:
    """Two polynomials / rational functions of the same one variable (``x^2+14x+49``, ``(x+7)^2``),
    compared exactly at more points than their degrees allow to agree by chance; None otherwise."""
    gold, pred = _DELIMS.sub("", gold), _DELIMS.sub("", pred)
    if "\\" in gold.replace("\\cdot", "") or "\\" in pred.replace("\\cdot", ""):
        return None
    if not (_POLY_CHARS.match(gold) and _POLY_CHARS.match(pred)) or len(gold) + len(pred) > 200:
        return None
    letters = set(re.findall(r"[a-z]", gold + pred.replace("cdot", "")))
    if len(letters) != 1 or letters & {"e", "i"}:  # e and i may be constants to math-verify
        return None
    var = letters.pop()
    try:
        g_tokens, p_tokens = _tokens(gold), _tokens(pred)
        agreed = 0
        for x in _PROBES:
            try:
                (g, g_degree), (p, p_degree) = _evaluate(g_tokens, var, x), _evaluate(p_tokens, var, x)
            except ZeroDivisionError:
                continue
            if g != p:
                return False
            agreed += 1
        return True if agreed > g_degree + p_degree and agreed >= 6 else None
    except (_NotPoly, IndexError, UnboundLocalError):
        return None
