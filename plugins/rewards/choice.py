"""Multiple-choice answers: a letter (``B``, ``(B)``, ``B.``) or the option's text, against the gold letter.

One letter only: ``C or D``, ``C) or D)``, ``C. D.``, ``\\boxed{C}\\boxed{D}`` and "not C" hedge and score 0.
"""

from __future__ import annotations

import re
from typing import Any

from lmmr1_plugins.rewards.answer import HEDGE_WORD, final_answer

from lmmr1_core.prompts import message_text

LETTERS = "ABCDEFGH"
_LETTER_ONLY = re.compile(r"^\s*\(?([A-H])\)?\s*[.:)]?\s*$")
_LETTER_LEAD = re.compile(r"^\s*\(?([A-H])[.:)]\s+\S")  # "B. 45°", "(B) 45°", "B: 45°"
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\(?([A-H])\b\)?", re.IGNORECASE)
_STANDALONE = re.compile(r"(?<![A-Za-z\\])\(?([A-H])\)?(?![A-Za-z])")
_OR_AND = re.compile(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.:)]\s*(.+?)\s*$", re.MULTILINE)


def _norm(text: str) -> str:
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    return re.sub(r"[\s$\\{}]|\^\\?circ|°", "", text).lower().rstrip(".")


def options_map(options: Any, prompt: Any = None) -> dict[str, str]:
    """Letter -> option text, from an ``options``/``choices`` column (list or dict) or the prompt."""
    if isinstance(options, dict):
        return {str(k).strip("() .").upper(): str(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)) and options:
        out = {}
        for i, opt in enumerate(options):
            m = _OPTION_LINE.match(str(opt))
            out[m.group(1) if m else LETTERS[i]] = m.group(2) if m else str(opt)
        return out
    text = _prompt_text(prompt)
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(text)}


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message_text(m) for m in prompt or [] if isinstance(m, dict))


def _single(letter: str, rest: str, options: dict[str, str]) -> str | None:
    """``letter``, unless the text after it names another option or qualifies the choice."""
    if options.get(letter) is not None and _norm(rest) == _norm(options[letter]):
        return letter  # "B. 45°": the letter and its own option's text
    others = set(options) - {letter} if options else set(LETTERS) - {letter}
    if any(m.group(1) in others for m in _STANDALONE.finditer(rest)) or HEDGE_WORD.search(rest):
        return None
    return None if _OR_AND.search(rest) else letter


def predicted_letter(completion: str, options: dict[str, str]) -> str | None:
    final = final_answer(completion or "")
    if final.hedge:
        return None
    text = final.text
    if text is None:  # no <answer> and no box: "the answer is B" in the last sentences
        tail = (completion or "")[-2000:]
        found = list(_ANSWER_IS.finditer(tail))
        if not found:
            return None
        m = found[-1]
        return _single(m.group(1).upper(), re.split(r"[.!\n]\s", tail[m.end() :])[0], options)
    m = _LETTER_ONLY.match(text)
    if m:
        return m.group(1)
    m = _LETTER_LEAD.match(text)
    if m:
        return _single(m.group(1), text[m.end(1) :].lstrip(".:) "), options)
    m = _ANSWER_IS.search(text)
    if m:
        return _single(m.group(1).upper(), text[m.end() :], options)
    wanted = _norm(text)
    hits = [k for k, v in options.items() if _norm(v) == wanted]
    return hits[0] if len(hits) == 1 else None


def gold_letter(answer: Any, options: dict[str, str]) -> str | None:
    text = str(answer).strip()
    m = _LETTER_ONLY.match(text) or _LETTER_LEAD.match(text)
    if m:
        return m.group(1) if not options or m.group(1) in options else None
    hits = [k for k, v in options.items() if _norm(v) == _norm(text)]
    return hits[0] if len(hits) == 1 else None


def choice_accuracy(prompts, completions, answer, options=None, choices=None, **kwargs) -> list[float | None]:
    """1.0 when the chosen option is the gold one; ``None`` when the gold is not a known option."""
    n = len(completions)
    opts_col = options if options is not None else (choices if choices is not None else [None] * n)
    scores: list[float | None] = []
    for prompt, completion, gold, opts in zip(prompts, completions, answer, opts_col):
        table = options_map(opts, prompt)
        want = gold_letter(gold, table)
        if want is None:
            scores.append(None)
            continue
        scores.append(1.0 if predicted_letter(completion, table) == want else 0.0)
    return scores
