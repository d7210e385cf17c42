"""The LMM-R1 output format: reasoning inside <think>, then the final answer inside <answer>."""

import re

_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"  # text that holds no think/answer tag
_FORMAT = re.compile(rf"^\s*<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>\s*$", re.DOTALL)


def think_answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion is exactly one ``<think>...</think>`` then one ``<answer>...</answer>``.

    Repeated or nested tags fail: a policy otherwise learns to pad with stray ``</answer>``s.
    """
    return [1.0 if _FORMAT.match(c) else 0.0 for c in completions]
