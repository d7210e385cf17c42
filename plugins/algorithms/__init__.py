"""Built-in policy-optimisation algorithms (see docs/algorithms.md for when to pick which)."""

from lmmr1_plugins.algorithms.grpo import DAPO, GRPO, GSPO, RLOO, DrGRPO
from lmmr1_plugins.algorithms.ppo import PPO
from lmmr1_plugins.algorithms.reinforce import ReinforcePP, ReinforcePPBaseline

from lmmr1_core import hookimpl


@hookimpl
def register_algorithms(register):
    register("grpo", GRPO)
    register("dr_grpo", DrGRPO)
    register("dapo", DAPO)
    register("gspo", GSPO)
    register("rloo", RLOO)
    register("reinforce_pp", ReinforcePP)
    register("reinforce_pp_baseline", ReinforcePPBaseline)
    register("ppo", PPO)
