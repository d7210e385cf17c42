"""Built-in environments: Sokoban (multi-turn env, and LMM-R1's single-turn plan mode) and Football."""

from lmmr1_plugins.envs.football import FootballEnv  # the engine itself is imported on construction
from lmmr1_plugins.envs.sokoban import SokobanEnv
from lmmr1_plugins.envs.sokoban_plan import sokoban_levels, sokoban_plan, sokoban_success
from lmmr1_plugins.envs.sokoban_solver import sokoban_solver

from lmmr1_core import Sample, hookimpl


def env_seeds(n: int = 100, seed: int = 0) -> list[Sample]:
    """Episode seeds for an env stage (training and evaluation use different ``seed``s)."""
    return [Sample(messages=[], meta={"env_seed": seed * 1_000_003 + i}, id=f"seed-{seed}-{i}") for i in range(n)]


sokoban_plan.columns = sokoban_success.columns = ("level",)  # a dataset column, not an option


@hookimpl
def register_envs(register):
    register("sokoban", SokobanEnv)
    register("football", FootballEnv)


@hookimpl
def register_datasets(register):
    register("sokoban_levels", sokoban_levels)
    register("env_seeds", env_seeds)
    register("sokoban_solver", sokoban_solver)


@hookimpl
def register_rewards(register):
    register("sokoban_plan", sokoban_plan)
    register("sokoban_success", sokoban_success)
