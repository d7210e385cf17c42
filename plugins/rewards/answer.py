"""The one final answer of a completion, and whether it hedges (the verifier policy of docs/plugins.md).

Everything here is linear in the completion's length (no backtracking regex over it), so a 100,000
character completion or an unclosed tag costs milliseconds.

- The answer region is the last closed ``<answer>...</answer>``; without one, the whole completion.
- Its ``\\boxed{}``es are the answer. Inside ``<answer>`` every box counts, and the text around them
  must not carry other values or qualifiers (``1, 2, \\boxed{3}``, ``not \\boxed{3}``). Without tags
  the final group of boxes counts: the last box and those just before it joined only by commas,
  "and", "or" or spacing (``\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}``); nested boxes flatten.
  Several boxes are one answer: their values joined as a list, so they earn credit only where together
  they form the gold (a set of solutions, a list of points); repeats of one value count once.
- Without boxes, the region is the answer: as a whole when it is a formula, else (prose, "the final
  answer is $3$") math-verify finds the answer in its last 5,000 characters, and the sentence that
  states it must not hedge ("3 or 4", "not 3", "3, maybe 4").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ANSWER_CHARS = 1000  # a longer "answer" is a derivation, not an answer
MAX_PROSE_CHARS = 5000  # prose inside <answer> is searched for its final answer in this many last characters

_OPEN, _CLOSE = "<answer>", "</answer>"
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|operatorname)\s*\{([^{}]*)\}")
HEDGE_WORD = re.compile(
    r"(?<![A-Za-z\\])(?:maybe|perhaps|possibly|probably|either|neither|nor|not|unless|except|otherwise|might|"
    r"guess|unsure|uncertain|alternatively)(?![A-Za-z])|n't|\\lor(?![a-z])|\\vee(?![a-z])|\?",
    re.IGNORECASE,
)
_CONDITION = re.compile(r"(?<![A-Za-z])(?:if|when|whenever|assuming|provided)(?![A-Za-z])", re.IGNORECASE)
_NEGATION = re.compile(r"(?<![A-Za-z\\])(?:not|never|neither|nor|isn't|aren't|wasn't|cannot)(?![A-Za-z])", re.I)
# the text allowed between boxes of one group: spacing, punctuation, delimiters, "and"/"or", labels
# ("y_2 ="), and \text{} without values ("\text{ for part (b) and }"); it is then checked for hedges
_JOINER = re.compile(
    r"^(?:\s|[,;.&]|\$|\\[()\[\]]|\\[,;:! ]|\\q?quad|~|and|or|\\text\{[^{}0-9]*\}"
    r"|\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*=)*$"
)
_FINAL_STATEMENT = re.compile(r"final\s+answer|answer\s+is", re.IGNORECASE)
_SCRIPT = re.compile(r"[\^_]\s*(?:\{[^{}]*\}|\\?\w)")  # ^2, _{12}: exponents and subscripts, not values
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_MATH_WORDS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "lg", "exp", "max", "min", "gcd", "lcm", "mod",
    "and", "or", "cm", "mm", "km", "kg", "deg", "rad", "in", "is", "of", "units", "sq", "ft", "pi",
}  # fmt: skip

# LaTeX spacing, and digit groups it (or a plain space) separates: 1\,000 and 11,\! 111 are one number
_THIN = r"(?:(?<!\\)\\[,!; ]|~|[\u2009\u202f\u00a0])"
_THIN_GROUPS = re.compile(rf"(?<![\d.])\d{{1,3}}(?:,?\s*{_THIN}\s*\d{{3}})+(?![\d])")
_SPACE_GROUPS = re.compile(r"^(-?)(\d{1,3}(?: \d{3})+)(\.\d+)?$")
_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad(?![a-zA-Z])|~|[\u2009\u202f\u00a0]")


@dataclass
class Final:
    """A completion's final answer: ``text`` (None when there is none), ``hedge`` (why it earns nothing),
    ``prose`` (True when ``text`` is prose to search for its answer, as math-verify does)."""

    text: str | None
    hedge: str | None = None
    prose: bool = False


def normalize(text: str) -> str:
    """LaTeX spacing and digit groups; never changes a value's type (a tuple keeps its commas)."""
    text = text.strip().replace("\\$", "").replace("\\left", "").replace("\\right", "")
    text = _THIN_GROUPS.sub(lambda m: re.sub(rf",?\s*{_THIN}\s*", "", m.group(0)), text)
    text = _SPACING.sub(" ", text).strip()
    m = _SPACE_GROUPS.match(text)  # "1 000" alone is one number, not 1*000
    if m:
        text = m.group(1) + m.group(2).replace(" ", "") + (m.group(3) or "")
    return text


def answer_region(completion: str) -> tuple[str, bool]:
    """The last closed ``<answer>`` block's content and True, else the whole completion and False."""
    end = completion.rfind(_CLOSE)
    if end >= 0:
        start = completion.rfind(_OPEN, 0, end)
        if start >= 0:
            return completion[start + len(_OPEN) : end], True
    return completion, False


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> its ``}``, in one pass; unbalanced braces stay unmatched."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Top-level ``\\boxed{...}``: (start, end, content), with nested boxes flattened into a list."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs = _matching_braces(text)
    out: list[tuple[int, int, str]] = []
    covered = -1
    for m in _BOX.finditer(text):
        if m.start() < covered:
            continue  # inside a box already taken
        close = pairs.get(m.end() - 1)
        if close is None:
            continue
        content = text[m.end() : close]
        inner = boxes(content) if "\\boxed" in content or "\\fbox" in content else []
        if inner:
            content = ", ".join(c for _, _, c in inner)
        out.append((m.start(), close + 1, content))
        covered = close + 1
    return out


def _text_hedge(text: str) -> str | None:
    """Why ``text`` hedges: a qualifier, a negation, a disjunction, or values hidden in ``\\text{}``."""
    for m in _TEXT_CMD.finditer(text):
        inner = m.group(1)
        if any(c.isdigit() for c in inner):
            return f"a value inside text: {m.group(0)!r}"
    m = HEDGE_WORD.search(_TEXT_CMD.sub(lambda t: f" {t.group(1)} ", text))
    if m is None:  # a condition on the answer ("3 \text{ if } n \text{ is odd}") qualifies it too
        m = _CONDITION.search(" ".join(t.group(1) for t in _TEXT_CMD.finditer(text)))
    return f"qualifier {m.group(0)!r}" if m else None


def _outside_hedge(outside: str) -> str | None:
    """The text around the boxes inside ``<answer>`` may name no other value and no qualifier."""
    hedge = _text_hedge(outside)
    if hedge:
        return hedge
    bare = _SCRIPT.sub("", _TEXT_CMD.sub("", outside))
    if any(c.isdigit() for c in bare):
        return "other values beside the boxed answer"
    return None


def _group(text: str, found: list[tuple[int, int, str]], tagged: bool) -> tuple[list[str], str | None]:
    """The boxes that form the answer, and a hedge found between or around them."""
    if tagged:
        outside = text[: found[0][0]] + " ".join(text[a:b] for (_, a, _), (b, _, _) in zip(found, found[1:]))
        return [c for _, _, c in found], _outside_hedge(outside + " " + text[found[-1][1] :])
    first = len(found) - 1
    while first > 0 and _JOINER.match(text[found[first - 1][1] : found[first][0]]):
        first -= 1
    gaps = " ".join(text[a:b] for (_, a, _), (b, _, _) in zip(found[first:], found[first + 1 :]))
    # the sentence that introduces the group must not negate it ("the answer is not \boxed{3}")
    lead = text[max(0, found[first][0] - 80) : found[first][0]]
    lead = re.split(r"[.!:\n]\s", lead)[-1]
    negated = _NEGATION.search(lead + " " + gaps) or HEDGE_WORD.search(_TEXT_CMD.sub(r" \1 ", gaps))
    return [c for _, _, c in found[first:]], (f"qualified: {negated.group(0)!r}" if negated else None)


_SENTENCE_END = re.compile(r"(?<!\d)[.!?;](?=\s|$)|\n")
_OR = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])", re.IGNORECASE)


def prose_hedge(text: str, found: str) -> str | None:
    """Why the sentence of ``text`` that states ``found`` (math-verify's pick) hedges, if it does."""
    found = found.strip()
    pos = text.rfind(found) if found else -1
    if pos < 0 and found:
        pos = text.rfind(found.split()[0])
    if pos < 0:
        return None
    end = pos + max(len(found), 1)
    starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, pos)]
    stop = _SENTENCE_END.search(text, end)
    before, after = text[starts[-1] if starts else 0 : pos], text[end : stop.start() if stop else len(text)]
    around = before + " " + after
    m = HEDGE_WORD.search(around) or _NEGATION.search(around) or _OR.search(around)
    return f"qualifier {m.group(0)!r} in {(before + found + after).strip()!r}" if m else None


def _is_prose(text: str) -> bool:
    words = [w for w in _PROSE_WORD.findall(_TEXT_CMD.sub(" ", text)) if w.lower() not in _MATH_WORDS]
    return len(words) >= 2


def final_answer(completion: str) -> Final:
    """The completion's one final answer (see the module docstring), normalised."""
    region, tagged = answer_region(completion or "")
    found = boxes(region)
    if found and not tagged and _FINAL_STATEMENT.search(region, found[-1][1]):
        region, found = region[found[-1][1] :], []  # a box in the working, then "the final answer is 4"
    if found:
        elements, hedge = _group(region, found, tagged)
        unique: list[str] = []
        for element in (normalize(e).replace("$", "") for e in elements):
            hedge = hedge or _text_hedge(element)
            if element and element not in unique:
                unique.append(element)
        text = ", ".join(unique)
        if not text or len(text) > MAX_ANSWER_CHARS:
            return Final(None)
        return Final(text, hedge)
    text = normalize(region)
    if not text:
        return Final(None)
    if _is_prose(text):
        return Final(text[-MAX_PROSE_CHARS:], prose=True)
    if len(text) > MAX_ANSWER_CHARS:
        return Final(None)
    return Final(text, _text_hedge(text))
