"""LoRA for the hf backend, through ``peft``.

The adapter's layers are injected into the transformers model itself, so the backend's forward, generate and
log-prob code run unchanged with the adapter on; ``disable_adapter()`` gives the base model back for the KL
reference without a second copy. A checkpoint keeps the adapter in ``adapter/`` (peft's own layout, whose
``base_model_name_or_path`` names the weights it sits on); merged weights are computed per layer as
``W + scale * B @ A`` without touching the live model (merging in place and back would drift in bf16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmmr1_core.errors import ConfigError

ADAPTER_DIR = "adapter"
NAME = "default"  # peft's adapter name
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION = ("visual", "vision_tower", "vision_model")  # Qwen2.5-VL, LLaVA-style and others' vision towers


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora needs peft: pip install 'lmmr1[lora]'") from None
    return peft


def target_names(model: torch.nn.Module, targets: list[str] | None) -> list[str]:
    """The full names of the linear modules to adapt: those ending in a target; under the vision tower only
    when the target itself names the vision tower."""
    wanted = list(targets or DEFAULT_TARGETS)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for t in wanted:
            if (name == t or name.endswith("." + t)) and (
                not any(v in name.split(".") for v in VISION) or any(v in t for v in VISION)
            ):
                found.append(name)
                break
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"model.lora.target_modules: no linear module matches {wanted} (linear modules here end "
                          f"in: {linear})")  # fmt: skip
    return found


def wrap(model: torch.nn.Module, options: dict[str, Any], base_path: str):
    """A fresh adapter on ``model`` (injected in place); returns the ``PeftModel`` around it."""
    peft = _peft()
    config = peft.LoraConfig(
        r=options.get("r", 16),
        lora_alpha=options.get("alpha", 32.0),
        lora_dropout=options.get("dropout", 0.0),
        target_modules=target_names(model, options.get("target_modules")),
        base_model_name_or_path=base_path,
    )
    # the adapter's random init from a fixed seed: a run and its rerun (or a resumed run's twin) start alike
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed(0)
        return peft.get_peft_model(model, config)


def adapter_base(path: str | Path) -> str | None:
    """For a directory that holds an adapter but no weights (a LoRA checkpoint): the weights it sits on."""
    path = Path(path)
    cfg = path / ADAPTER_DIR / "adapter_config.json"
    if not cfg.exists() or any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return None
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{cfg}: no base_model_name_or_path: cannot tell which weights the adapter belongs to")
    return base


def load_adapter(model: torch.nn.Module, path: str | Path, trainable: bool):
    """The adapter saved in ``path``/adapter, injected into ``model``; returns the ``PeftModel``."""
    return _peft().PeftModel.from_pretrained(model, str(Path(path) / ADAPTER_DIR), is_trainable=trainable)


def save_adapter(peft_model, out_dir: Path, base_path: str) -> None:
    peft_model.peft_config[NAME].base_model_name_or_path = base_path
    peft_model.save_pretrained(str(out_dir / ADAPTER_DIR))


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under their Hugging Face names with every adapter folded in (``W + scale * B @ A``);
    the live model is left as it is. Layers without an adapter are returned as they are, not copied."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and NAME in module.lora_A:
            deltas[f"{name}.weight"] = module.get_delta_weight(NAME)
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        if key in deltas:
            value = (value.float() + deltas[key].float()).to(value.dtype)
        out[key] = value
    return out
