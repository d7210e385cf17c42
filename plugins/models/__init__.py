"""Built-in model backends (hf, megatron), tiny local models for tests and quickstarts, and the vLLM
rollout engine."""

import importlib.util

from lmmr1_plugins.models.vllm_engine import vllm_engine  # torch and pydantic; vLLM loads on first use

from lmmr1_core import hookimpl
from lmmr1_core.errors import ConfigError


def _build_tiny(path, kind: str = "text", **kw):
    """A tiny random HF model directory of ``kind`` (``text``: Qwen2, ``vl``: Qwen2.5-VL) at ``path``."""
    from lmmr1_plugins.models.tiny import build_tiny_model

    return build_tiny_model(path, kind, **kw)


def _hf(**cfg):
    from lmmr1_plugins.models.hf import HFBackend

    return HFBackend(**cfg)


def _megatron(**cfg):
    """Imported only when named: megatron-core is an optional extra."""
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
        raise ConfigError("model.backend: megatron needs megatron-core: pip install 'lmmr1[megatron]'")
    from lmmr1_plugins.models.megatron.backend import MegatronBackend

    return MegatronBackend(**cfg)


for _factory in (_hf, _megatron):  # both load Hugging Face directories, so both can start from a tiny one
    _factory.build_tiny = _build_tiny


@hookimpl
def register_models(register):
    register("hf", _hf)
    register("megatron", _megatron)


@hookimpl
def register_rollout_engines(register):
    register("vllm", vllm_engine)
