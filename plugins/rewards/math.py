"""Math answers checked by math-verify (symbolic equality, not string matching).

Chosen behaviour where math-verify is lenient or blind (each pinned by a test):
- ``50%`` equals both ``50`` and ``0.5`` (math-verify's percentage rule);
- ``2,5`` is the set {2, 5}, not 2.5 (no decimal commas); ``1,000`` / ``1,000,000`` are thousands;
- ``0.333`` does not equal ``1/3`` (no rounding tolerance; use ``geometry_answer`` for that);
- trigonometry in degrees (``\\sin(60^\\circ)``) is not evaluated as degrees.
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])")
MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer; parsing it only costs time


def extract_answer(completion: str) -> str | None:
    """The last ``<answer>...</answer>`` (its ``\\boxed{}`` if it holds one), else the last ``\\boxed{}``."""
    found = _ANSWER.findall(completion)
    if found:
        inner = found[-1].strip()
        return last_boxed(inner) or inner
    return last_boxed(completion)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def normalize(text: str) -> str:
    text = text.strip().replace("\\$", "").replace("\\!", "")
    return _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)


def parse_math(text: str) -> list:
    """math-verify's parse, trying the text as LaTeX first; [] when nothing symbolic comes out."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = normalize(text)
    if not text or len(text) > MAX_ANSWER_CHARS:
        return []
    delimited = "$" in text or "\\(" in text or "\\[" in text
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    for candidate in [text] if delimited else [f"${text}$", text]:
        parsed = parse(candidate, extraction_config=configs)
        if any(not isinstance(x, str) for x in parsed):
            return parsed
    return []


def math_accuracy(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 if the extracted answer equals the gold ``answer`` per math-verify, else 0.0.

    A gold answer math-verify cannot parse, or a verifier exception, gives ``None`` (not
    applicable, counted), never a free 1.0: that would reward the policy for breaking the verifier.
    """
    from math_verify import verify

    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        try:
            gold_parsed = parse_math(str(gold)) if gold is not None else []
            if not gold_parsed:
                scores.append(None)
                continue
            pred = extract_answer(completion or "")
            pred_parsed = parse_math(pred) if pred else []
            scores.append(1.0 if pred_parsed and verify(gold_parsed, pred_parsed) else 0.0)
        except Exception:
            scores.append(None)
    return scores
