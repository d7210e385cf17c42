"""benchmarks/flops.py: each token pays only for what it runs, the same for both backends (MFU)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import flops  # noqa: E402
from megatron_step import QWEN25_VL_3B  # noqa: E402


@pytest.fixture(scope="module")
def qwen3b():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=QWEN25_VL_3B["text"], vision_config=QWEN25_VL_3B["vision"])


def test_decoder_products_are_two_flops_per_non_embedding_weight(qwen3b):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen3b)
    lm = model.model.language_model
    weights = sum(p.numel() for n, p in lm.named_parameters() if n.endswith("proj.weight"))
    assert flops.lm_flops_per_token(qwen3b) == 2 * weights
    assert flops.lm_head_flops(qwen3b) == 2 * 2048 * 151936
    vision = sum(p.numel() for n, p in model.model.visual.named_parameters() if "merger" not in n and p.dim() > 1)
    per_patch = flops.vision_flops(qwen3b, 64) / 64  # one 8 x 8 window: every block attends to all 64 patches
    attention = 4 * 1280 * 64 * 32
    merger = (2 * 5120 * 5120 + 2 * 5120 * 2048) / 4  # its MLP runs once per 2 x 2 patches
    assert per_patch == pytest.approx(2 * vision + attention + merger, rel=1e-12)


def test_a_text_prompt_pays_nothing_for_the_vision_tower(qwen3b):
    text = [flops.Row(prompt=300, completion=100)]
    image = [flops.Row(prompt=300, completion=100, image_patches=[1024])]
    assert flops.forward_flops(qwen3b, image) - flops.forward_flops(qwen3b, text) == flops.vision_flops(qwen3b, 1024)
    assert flops.vision_flops(qwen3b, 0) == 0.0
    text_only_model = qwen3b.text_config
    assert flops.vision_flops(text_only_model, 1024) == 0.0


def test_the_lm_head_only_where_a_logit_is_read(qwen3b):
    base = flops.forward_flops(qwen3b, [flops.Row(prompt=100, completion=10)])
    longer_prompt = flops.forward_flops(qwen3b, [flops.Row(prompt=200, completion=10)])
    longer_completion = flops.forward_flops(qwen3b, [flops.Row(prompt=100, completion=110)])
    head = flops.lm_head_flops(qwen3b)
    # the same 100 more tokens: the completion's also pay for their logits, the prompt's do not
    assert longer_completion - longer_prompt == pytest.approx(100 * head, rel=1e-9)
    assert base > 0


def test_training_is_three_forwards_and_a_frozen_tower_runs_forward_only(qwen3b):
    rows = [flops.Row(prompt=400, completion=50, image_patches=[256, 1024]), flops.Row(prompt=30, completion=5)]
    fwd, vision = flops.forward_flops(qwen3b, rows), flops.vision_flops(qwen3b, 256) + flops.vision_flops(qwen3b, 1024)
    assert flops.train_flops(qwen3b, rows) == pytest.approx(3 * fwd)
    assert flops.train_flops(qwen3b, rows, vision_trained=False) == pytest.approx(3 * fwd - 2 * vision)


def test_generation_feeds_back_all_but_the_last_token(qwen3b):
    one = flops.generate_flops(qwen3b, [flops.Row(prompt=10, completion=1)])
    two = flops.generate_flops(qwen3b, [flops.Row(prompt=10, completion=2)])
    # the second token costs one decoder pass over the first (attending to 11 keys) and one more logit row
    step = flops.lm_flops_per_token(qwen3b) + flops.attention_flops(qwen3b, 10, 1) + flops.lm_head_flops(qwen3b)
    assert two - one == pytest.approx(step)


def test_rows_come_from_the_backends_prompts_alike():
    import torch
    from lmmr1_plugins.models.hf import Prompt

    prompts = [Prompt([1] * 20, torch.zeros(64, 8), torch.tensor([[1, 8, 8]])), Prompt([2] * 5)]
    rows = flops.rows_of(prompts, [[3, 4], [5]])
    assert rows == [flops.Row(20, 2, [64]), flops.Row(5, 1, [])]
    assert flops.mfu(989e12, 2.0, 989.0, devices=1) == pytest.approx(0.5)
