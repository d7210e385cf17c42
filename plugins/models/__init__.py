"""Built-in model backends."""

import importlib.util

from lmmr1_core import hookimpl
from lmmr1_core.errors import ConfigError


def _hf(**cfg):
    from lmmr1_plugins.models.hf import HFBackend

    return HFBackend(**cfg)


def _megatron(**cfg):
    """Imported only when named: megatron-core is an optional extra."""
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
        raise ConfigError("model.backend: megatron needs megatron-core: pip install 'lmmr1[megatron]'")
    from lmmr1_plugins.models.megatron.backend import MegatronBackend

    return MegatronBackend(**cfg)


@hookimpl
def register_models(register):
    register("hf", _hf)
    register("megatron", _megatron)
