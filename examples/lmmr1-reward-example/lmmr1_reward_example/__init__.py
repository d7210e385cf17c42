"""An example reward plugin: rewards completions whose answer is a plain digit string.

Kept deliberately small: the point is the packaging, shown in lmmr1's docs/plugins.md.
"""

import re

from lmmr1_core import hookimpl

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def answer_is_digits(prompts, completions, **kwargs):
    """1.0 when the last <answer> holds only digits (a format check for numeric tasks)."""
    scores = []
    for completion in completions:
        found = _ANSWER.findall(completion)
        scores.append(1.0 if found and found[-1].strip().isdigit() else 0.0)
    return scores


@hookimpl
def register_rewards(register):
    register("answer_is_digits", answer_is_digits)
