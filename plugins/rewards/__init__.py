"""Built-in rule-based rewards. Each is a plain TRL-style callable over completions."""

from lmmr1_plugins.rewards.format import think_answer_format
from lmmr1_plugins.rewards.math import math_accuracy

from lmmr1_core import hookimpl


@hookimpl
def register_rewards(register):
    register("math_accuracy", math_accuracy)
    register("think_answer_format", think_answer_format)
