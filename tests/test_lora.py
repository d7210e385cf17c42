"""LoRA on the hf backend (peft): the reference is the base with the adapter off, checkpoints hold the adapter,
final/ the merged weights too, resume restores adapter and optimizer, megatron refuses it."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from conftest import run_stage_file  # noqa: E402

from lmmr1_core import contracts, load_model  # noqa: E402
from lmmr1_core.errors import ConfigError  # noqa: E402

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": None}


def _image_prompt(backend):
    from PIL import Image

    image = Image.new("RGB", (56, 56), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2 + 3?"}]}]
    return backend.encode(messages, [image], "img")


def _perturb(backend, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for name, p in backend.model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_the_adapter_disabled_reference_is_the_initial_model_without_a_copy(tiny_vl):
    initial = load_model("hf", path=str(tiny_vl), device="cpu")
    backend = load_model("hf", path=str(tiny_vl), device="cpu", lora=LORA)
    assert contracts.ADAPTER in backend.capabilities
    prompts = [_image_prompt(backend), backend.encode([{"role": "user", "content": "1 + 1?"}])]
    completions = backend.generate(prompts, 6)
    _perturb(backend)  # a trained adapter: the policy moves away from the initial model
    backend.make_reference(str(tiny_vl))
    assert backend.reference is None  # no second model held
    want, mask, _ = initial.logprobs(prompts, completions)
    ref, _, _ = backend.logprobs(prompts, completions, reference=True)
    policy, _, _ = backend.logprobs(prompts, completions)
    assert torch.equal(ref, want)
    assert (policy - want).abs().max() > 1e-3
    # the merged weights (what vLLM loads) are the policy
    initial.model.load_state_dict(backend.rollout_state_dict())
    merged, _, _ = initial.logprobs(prompts, completions)
    assert torch.allclose(merged, policy, atol=1e-5)


def test_default_targets_leave_the_vision_tower_frozen_unless_named(tiny_vl):
    from lmmr1_plugins.models.lora import target_names

    backend = load_model("hf", path=str(tiny_vl), device="cpu", lora=LORA)
    trainable = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}  # fmt: skip
    plain = load_model("hf", path=str(tiny_vl), device="cpu").model
    names = target_names(plain, ["gate_proj", "visual.blocks.0.attn.qkv"])
    assert "model.visual.blocks.0.attn.qkv" in names and not any("visual" in n and "gate" in n for n in names)
    with pytest.raises(ConfigError, match="no linear module matches"):
        load_model("hf", path=str(tiny_vl), device="cpu", lora={**LORA, "target_modules": ["nope_proj"]})


def test_checkpoints_hold_the_adapter_and_resume_restores_it_with_the_optimizer(tiny_text, tmp_path):
    backend = load_model("hf", path=str(tiny_text), device="cpu", lora=LORA)
    prompts = [backend.encode([{"role": "user", "content": "2 + 2?"}])] * 2
    completions = backend.generate(prompts, 5)
    optimizer = backend.make_optimizer(1e-2, 0.0, (0.9, 0.999))

    def step(b, opt):
        logp, mask, _ = b.logprobs(prompts, completions)
        opt.zero_grad()
        (-(logp * mask).sum()).backward()
        opt.step()

    step(backend, optimizer)
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    backend.save(ckpt)
    torch.save(optimizer.state_dict(), ckpt / "optim.pt")
    assert (ckpt / "adapter/adapter_model.safetensors").exists() and not list(ckpt.glob("*.safetensors"))
    adapter_cfg = json.loads((ckpt / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_text) and adapter_cfg["r"] == 4

    resumed = load_model("hf", path=str(ckpt), device="cpu", lora=LORA)
    assert resumed.path == str(tiny_text)  # the base: what a rollout engine loads, and the KL reference
    optimizer2 = resumed.make_optimizer(1e-2, 0.0, (0.9, 0.999))
    optimizer2.load_state_dict(torch.load(ckpt / "optim.pt"))
    assert torch.equal(resumed.logprobs(prompts, completions)[0], backend.logprobs(prompts, completions)[0])
    step(backend, optimizer)  # one more step on each: the same weights come out only if Adam's moments came back
    step(resumed, optimizer2)
    assert torch.equal(resumed.logprobs(prompts, completions)[0], backend.logprobs(prompts, completions)[0])
    # without lora (lmmr1 eval on a checkpoint) the adapter is merged into plain weights
    plain = load_model("hf", path=str(ckpt), device="cpu")
    assert contracts.ADAPTER not in plain.capabilities
    mid, _, _ = plain.logprobs(prompts, completions)
    assert not torch.equal(mid, load_model("hf", path=str(tiny_text), device="cpu").logprobs(prompts, completions)[0])


def test_a_lora_stage_writes_the_adapter_and_merged_weights_to_final(tiny_text, tmp_path):
    from lmmr1_core.config import RunConfig
    from lmmr1_core.run import run

    cfg = RunConfig.model_validate({
        "name": "lora", "output_dir": str(tmp_path / "runs"),
        "model": {"backend": "hf", "path": str(tiny_text), "device": "cpu", "lora": {"r": 4}},
        "stages": {"a": {"kind": "rl", "data": [{"dataset": "arithmetic", "n": 8}], "steps": 2, "batch_size": 2,
                         "rewards": [{"name": "math_accuracy", "workers": 1}], "generation": {"max_new_tokens": 4},
                         "algorithm": {"group_size": 2, "kl": {"coef": 0.01}}, "optim": {"lr": 1e-2}}},
    })  # fmt: skip
    final = run(cfg, "test") / "a/final"
    assert (final / "adapter/adapter_config.json").exists() and (final / "model.safetensors").exists()
    assert "lora" in (final / "README.md").read_text()
    merged = load_model("hf", path=str(final), device="cpu")  # like any checkpoint (vLLM, lmmr1 eval)
    assert contracts.ADAPTER not in merged.capabilities
    rows = [json.loads(x) for x in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("kl" in r for r in rows)


def test_megatron_refuses_lora(tiny_text):
    pytest.importorskip("megatron.core")
    from lmmr1_plugins.models.megatron.backend import MegatronBackend

    with pytest.raises(ConfigError, match="model.lora: the megatron backend"):
        MegatronBackend(str(tiny_text), device="cpu", lora=LORA)


def test_quickstart_with_lora_still_rises(tmp_path):
    """The README's quickstart with LoRA adapters (r 16), the same steps: the rl reward rises as much."""
    sets = ["model.lora.r=16", "stages.warmup.optim.lr=1e-2", "stages.fre.optim.lr=3e-3"]
    result = run_stage_file(tmp_path, "quickstart.yaml", sets)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/quickstart/fre/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 160
    q = len(rows) // 4
    first = sum(r["reward/mean"] for r in rows[:q]) / q
    last = sum(r["reward/mean"] for r in rows[-q:]) / q
    assert last - first >= 0.2, (first, last)
    final = Path(tmp_path / "runs/quickstart/fre/final")
    assert (final / "model.safetensors").exists() and (final / "adapter/adapter_model.safetensors").exists()
