"""Qwen2 / Qwen2.5-VL's language model as a megatron-core ``GPTModel``.

Qwen2's decoder in megatron terms: RMSNorm, SwiGLU MLP without bias, QKV with bias and an output
projection without, grouped-query attention, rotary embeddings (not interleaved) with the HF
config's theta — multimodal (``mrope``, 3-D positions split by ``mrope_section``) for Qwen2.5-VL,
plain 1-D for text-only Qwen2 (as mrope with three equal position rows). The vision tower is not
rebuilt here: the backend keeps the HF one and passes its features in as ``decoder_input``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lmmr1_core.errors import ConfigError


@dataclass
class LMShape:
    """The numbers conversion and the model both need, read once from the HF config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    padded_vocab: int  # a multiple of the tensor-parallel size (megatron splits the vocabulary)
    tied: bool
    eps: float
    rope_theta: float
    mrope_section: list[int]
    is_vl: bool


def text_config(hf_config: Any) -> Any:
    return getattr(hf_config, "text_config", None) or hf_config


def lm_shape(hf_config: Any, tensor_parallel: int = 1) -> LMShape:
    text = text_config(hf_config)
    rope = getattr(text, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"megatron backend: rope_type {rope['rope_type']!r} is not supported (only default)")
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    if heads % tensor_parallel or kv % tensor_parallel:
        raise ConfigError(
            f"model.tensor_parallel: {tensor_parallel} must divide the attention heads ({heads}) and "
            f"key/value heads ({kv})"
        )
    is_vl = getattr(hf_config, "vision_config", None) is not None
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    tied = getattr(hf_config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False))
    return LMShape(
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        ffn=text.intermediate_size,
        vocab=text.vocab_size,
        padded_vocab=-(-text.vocab_size // tensor_parallel) * tensor_parallel,
        tied=bool(tied),
        eps=text.rms_norm_eps,
        rope_theta=float(theta),
        mrope_section=list(rope["mrope_section"]) if is_vl else _even_split(head_dim // 2),
        is_vl=is_vl,
    )


def _even_split(n: int) -> list[int]:
    """A text-only model gets the same (t, h, w) position in all three sections: plain 1-D RoPE.

    megatron's ``rope`` ignores ``position_ids`` (positions are 0..S-1), which left padding breaks;
    ``mrope`` with three equal rows honours them.
    """
    return [n - 2 * (n // 3), n // 3, n // 3]


def layer_spec():
    """megatron-core's local (no Transformer Engine) GPT layer with RMSNorm and our SDPA core attention."""
    from lmmr1_plugins.models.megatron.attention import SDPAttention
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def build_gpt(shape: LMShape, tensor_parallel: int, pipeline_parallel: int, dtype: torch.dtype,
              device: torch.device):  # fmt: skip
    """This rank's stage of the model (weights uninitialised: conversion fills them)."""
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    if shape.layers % pipeline_parallel:
        raise ConfigError(f"model.pipeline_parallel: {pipeline_parallel} must divide the {shape.layers} layers")
    config = TransformerConfig(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.heads,
        num_query_groups=shape.kv_heads,
        kv_channels=shape.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=shape.eps,
        add_bias_linear=False,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=device.type != "cuda",
        perform_initialization=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        rotary_interleaved=False,
        mrope_section=shape.mrope_section,
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(),
        vocab_size=shape.padded_vocab,
        max_sequence_length=1 << 20,
        pre_process=mpu.is_pipeline_first_stage(),
        post_process=mpu.is_pipeline_last_stage(),
        parallel_output=False,  # gather the vocabulary: log-probs are taken over full logits
        # Across pipeline stages megatron ties the two copies with a CUDA-only setup; we keep them
        # as separate weights loaded from the same HF tensor, their gradients summed (train.py).
        share_embeddings_and_output_weights=shape.tied and pipeline_parallel == 1,
        position_embedding_type="mrope",
        rotary_base=shape.rope_theta,
    )
    model.tied_across_stages = shape.tied and pipeline_parallel > 1
    return model.to(device)
