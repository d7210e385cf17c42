"""Built-in policy-optimisation algorithms."""

from lmmr1_plugins.algorithms.grpo import GRPO

from lmmr1_core import hookimpl


@hookimpl
def register_algorithms(register):
    register("grpo", GRPO)
