"""Tiny random models, saved as complete HF directories.

Tests, the quickstart and the benchmarks load these through the same ``from_pretrained`` code
a real Qwen2.5-VL checkpoint goes through; nothing is downloaded. Head size stays at 32 because
vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Literal

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat format: images inside a message's content list become a vision block.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "what is the sum of plus minus times answer think question solve find value number image "
    "picture shows how many red blue green yellow circle square triangle angle degrees length "
    "area radius side box target wall player move up down left right first then so because "
    "a an the of in on to and or is are be put your final inside tags reason step by "
    "You are helpful assistant. Answer with the result only."
).split()


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(["+", "-", "*"])
        lines.append(f"What is {a} {op} {b}? <think>{a}{op}{b}</think> <answer>{a}</answer>")
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(12)))
    return lines


def build_tokenizer(out_dir: str | Path, vocab_size: int = 1024):
    """A byte-level BPE tokenizer with Qwen's special tokens, digits split one per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens(TAGS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def _text_config(vocab: int, hidden: int, layers: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


def _vl_model(text: dict, ids: dict[str, int], hidden: int, tmp: Path):
    """A tiny Qwen2.5-VL (real classes, small sizes) whose processor and chat template are written to ``tmp``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    head = 32
    section = [head // 8, head * 3 // 16, head * 3 // 16]  # sums to head/2, as Qwen's [16,24,24]
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": section,
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    proc = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    proc.save_pretrained(str(tmp))
    (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return model


def build_tiny_model(
    out_dir: str | Path,
    kind: Literal["text", "vl"] = "text",
    hidden: int = 128,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a complete HF model directory (weights, config, tokenizer, chat template[, processor]).

    Written to a temporary directory and renamed, so a half-built model is never left behind.
    """
    import torch
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tok = build_tokenizer(tmp)
        vocab = len(tok)
        ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
        torch.manual_seed(seed)
        text = _text_config(vocab, hidden, layers)
        text.update(bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        if kind == "text":
            from transformers import Qwen2Config, Qwen2ForCausalLM

            cfg = Qwen2Config(**text)
            model = Qwen2ForCausalLM(cfg)
        else:
            model = _vl_model(text, ids, hidden, tmp)
        model.generation_config = GenerationConfig(
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"],
            do_sample=True,
        )
        model.save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
