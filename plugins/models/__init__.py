"""Built-in model backends."""

from lmmr1_core import hookimpl


def _hf(**cfg):
    from lmmr1_plugins.models.hf import HFBackend

    return HFBackend(**cfg)


@hookimpl
def register_models(register):
    register("hf", _hf)
