"""Built-in rule-based rewards. Each is a plain TRL-style callable over completions."""

from lmmr1_plugins.rewards.choice import choice_accuracy
from lmmr1_plugins.rewards.format import think_answer_format
from lmmr1_plugins.rewards.geometry import geometry_answer
from lmmr1_plugins.rewards.http import http_reward
from lmmr1_plugins.rewards.judge import judge_accuracy
from lmmr1_plugins.rewards.length import length_penalty
from lmmr1_plugins.rewards.math import math_accuracy, warm_up

from lmmr1_core import hookimpl

# dataset columns these rewards read (the rest of their keyword parameters are stage-file options)
choice_accuracy.columns = geometry_answer.columns = ("options", "choices")
# math-verify's first parse of each kind of expression is slow: done once before the workers fork
math_accuracy.warmup = geometry_answer.warmup = warm_up
# http_reward sends a whole chunk in one request: called once per chunk, not once per sample
http_reward.batched = True
# options never written down (config.yaml shows *** unless given as ${env:NAME})
http_reward.secrets, judge_accuracy.secrets = ("headers",), ("api_key",)


@hookimpl
def register_rewards(register):
    register("math_accuracy", math_accuracy)
    register("choice_accuracy", choice_accuracy)
    register("geometry_answer", geometry_answer)
    register("think_answer_format", think_answer_format)
    register("length_penalty", length_penalty)
    register("http_reward", http_reward)
    register("judge_accuracy", judge_accuracy)
