"""Math answers checked by math-verify (symbolic equality, not string matching)."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(completion: str) -> str | None:
    """The last ``<answer>...</answer>``, else the last ``\\boxed{...}``, else None."""
    found = _ANSWER.findall(completion)
    if found:
        return found[-1].strip()
    boxed = last_boxed(completion)
    return boxed


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


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = parse(text, extraction_config=configs)
    if not parsed and "$" not in text:  # bare LaTeX such as \frac{1}{2}
        parsed = parse(f"${text}$", extraction_config=configs)
    return parsed


def math_accuracy(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 if the extracted answer equals the gold ``answer`` per math-verify, else 0.0.

    A gold answer math-verify cannot parse gives ``None`` (not applicable), never a free 1.0:
    scoring it as correct would reward the policy for whatever it writes.
    """
    from math_verify import verify

    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        gold_parsed = _parse(str(gold)) if gold is not None else []
        if not any(not isinstance(x, str) for x in gold_parsed):  # only the raw string came back
            scores.append(None)
            continue
        pred = extract_answer(completion)
        if pred is None:
            scores.append(0.0)
            continue
        pred_parsed = _parse(pred)
        scores.append(1.0 if pred_parsed and verify(gold_parsed, pred_parsed) else 0.0)
    return scores
