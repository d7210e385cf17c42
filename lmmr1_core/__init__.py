"""lmmr1: verifiable-reward RL of multimodal models, built from plugins."""

from __future__ import annotations

import functools
from typing import Any

from lmmr1_core.hookspecs import hookimpl
from lmmr1_core.types import Observation, Sample

__all__ = [
    "hookimpl",
    "Sample",
    "Observation",
    "load_reward",
    "load_dataset",
    "load_env",
    "load_model",
    "load_algorithm",
]
__version__ = "0.1.0"


def load_reward(name: str, **cfg: Any):
    """The registered reward callable; ``cfg`` keys are bound as keyword arguments."""
    from lmmr1_core.plugins import lookup

    reward = lookup("rewards", name).obj
    return functools.partial(reward, **cfg) if cfg else reward


def load_dataset(name: str, **cfg: Any) -> list[Sample]:
    """The samples a registered dataset loader yields for ``cfg``."""
    from lmmr1_core.plugins import lookup

    return list(lookup("datasets", name).obj(**cfg))


def load_env(name: str, **cfg: Any):
    """A new environment from a registered env factory."""
    from lmmr1_core.plugins import lookup

    return lookup("envs", name).obj(**cfg)


def load_model(name: str, **cfg: Any):
    """A model backend (``hf``, ...) built with ``cfg`` (``path``, ``dtype``, ...)."""
    from lmmr1_core.plugins import lookup

    return lookup("models", name).obj(**cfg)


def load_algorithm(name: str, **cfg: Any):
    """A policy-optimisation algorithm (advantages + loss) built with ``cfg``."""
    from lmmr1_core.plugins import lookup

    return lookup("algorithms", name).obj(**cfg)
