"""The LMM-R1 output format: reasoning inside <think>, then the final answer inside <answer>."""

import re

_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def think_answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``."""
    return [1.0 if _FORMAT.match(c) else 0.0 for c in completions]
