"""Module-level rewards for tests: reward workers are forked, and these stay importable."""

import os
import time

from lmmr1_core import hookimpl


def always_one(prompts, completions, **kwargs):
    return [1.0 for _ in completions]


def raises_on_seven(prompts, completions, answer, **kwargs):
    if any(str(a) == "7" for a in answer):
        raise KeyError("solution")
    return [0.5 for _ in completions]


def hangs_on_seven(prompts, completions, answer, **kwargs):
    if any(str(a) == "7" for a in answer):
        time.sleep(60)
    return [0.5 for _ in completions]


def wrong_length(prompts, completions, **kwargs):
    return [1.0] * (len(completions) + 1)


WARMED: list[int] = []  # the pids of the processes a warmup ran in


def warmed_before_fork(prompts, completions, **kwargs):
    """1.0 where the warmup ran once, in the process that forked this worker."""
    return [float(WARMED == [os.getppid()] and os.getpid() != WARMED[0]) for _ in completions]


warmed_before_fork.warmup = lambda: WARMED.append(os.getpid())


def warmup_fails(prompts, completions, **kwargs):
    return [0.25 for _ in completions]


def _broken_warmup():
    raise OSError("no such table")


warmup_fails.warmup = _broken_warmup


class TestRewardsPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("always_one", always_one)
        register("raises_on_seven", raises_on_seven)
        register("hangs_on_seven", hangs_on_seven)
        register("wrong_length", wrong_length)
