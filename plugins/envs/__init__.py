"""Built-in environments: Sokoban (multi-turn env, and LMM-R1's single-turn plan mode) and Football."""

from lmmr1_plugins.envs.sokoban import SokobanEnv
from lmmr1_plugins.envs.sokoban_plan import sokoban_levels, sokoban_plan, sokoban_success

from lmmr1_core import hookimpl


def _sokoban(levels_file: str | None = None, **cfg):
    if levels_file is not None:
        from lmmr1_plugins.envs.sokoban import parse_xsb

        with open(levels_file) as f:
            cfg["levels"] = parse_xsb(f.read())
    if "dim" in cfg:
        cfg["dim"] = tuple(cfg["dim"])
    return SokobanEnv(**cfg)


def _football(**cfg):
    from lmmr1_plugins.envs.football import FootballEnv

    return FootballEnv(**cfg)


@hookimpl
def register_envs(register):
    register("sokoban", _sokoban)
    register("football", _football)


@hookimpl
def register_datasets(register):
    from lmmr1_core.episodes import env_seeds

    register("sokoban_levels", sokoban_levels)
    register("env_seeds", env_seeds)


@hookimpl
def register_rewards(register):
    register("sokoban_plan", sokoban_plan)
    register("sokoban_success", sokoban_success)
