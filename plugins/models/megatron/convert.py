"""Weight conversion between the HF language model and megatron-core ``GPTModel`` shards.

HF names here are relative to the language model (``embed_tokens.weight``, ``layers.N.…``,
``norm.weight``, ``lm_head.weight`` when untied); ``hf_lm_params`` finds them in a Qwen2 or a
Qwen2.5-VL model. A megatron shard is one rank's state dict: pipeline stage ``pp_rank`` holds layers
``pp_rank * L/pp ..`` under local numbers; tensor rank ``tp_rank`` holds its slice of each split
matrix. Conversion only slices, concatenates and reshapes, so HF -> megatron -> HF is bit-exact.

Layouts (megatron's, per tensor rank):
- ``linear_qkv``: for each of its key/value groups, that group's query heads, then its key, then its value;
- ``linear_fc1``: this rank's slice of ``gate_proj`` stacked on its slice of ``up_proj``;
- ``linear_proj`` / ``linear_fc2``: split along the input dimension; embeddings / output layer along the
  (padded) vocabulary.
"""

from __future__ import annotations

import torch
from lmmr1_plugins.models.megatron.model import LMShape

_NORMS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
}


def hf_lm_params(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The language model's parameters by relative HF name (the tensors themselves, not copies)."""
    inner = hf_model.model
    lm = getattr(inner, "language_model", inner)
    params = {name: p for name, p in lm.named_parameters()}
    head = hf_model.get_output_embeddings().weight
    if head is not lm.embed_tokens.weight:
        params["lm_head.weight"] = head
    return params


def _pad_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _stage_layers(shape: LMShape, pp_rank: int, pp: int) -> range:
    n = shape.layers // pp
    return range(pp_rank * n, (pp_rank + 1) * n)


def has_output_layer(shape: LMShape, pp_rank: int, pp: int) -> bool:
    """Untied: the last stage owns the head. Tied with pipeline stages: the last stage keeps a copy."""
    return pp_rank == pp - 1 and (not shape.tied or pp > 1)


def to_megatron(hf: dict[str, torch.Tensor], shape: LMShape, tp_rank: int, tp: int, pp_rank: int,
                pp: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """One rank's megatron state dict from the full HF language-model state."""
    out: dict[str, torch.Tensor] = {}
    hd, groups, per_group = shape.head_dim, shape.kv_heads, shape.heads // shape.kv_heads
    if pp_rank == 0:
        out["embedding.word_embeddings.weight"] = _pad_vocab(hf["embed_tokens.weight"], shape.padded_vocab).chunk(tp)[
            tp_rank
        ]
    for local, layer in enumerate(_stage_layers(shape, pp_rank, pp)):
        src, dst = f"layers.{layer}.", f"decoder.layers.{local}."
        for mg, name in _NORMS.items():
            out[dst + mg] = hf[src + name]
        for kind in ("weight", "bias"):
            q = hf[f"{src}self_attn.q_proj.{kind}"].reshape(groups, per_group * hd, -1)
            k = hf[f"{src}self_attn.k_proj.{kind}"].reshape(groups, hd, -1)
            v = hf[f"{src}self_attn.v_proj.{kind}"].reshape(groups, hd, -1)
            qkv = torch.cat([q, k, v], dim=1).chunk(tp)[tp_rank]
            out[f"{dst}self_attention.linear_qkv.{kind}"] = qkv.reshape(
                -1, *hf[f"{src}self_attn.q_proj.{kind}"].shape[1:]
            )
        out[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"].chunk(tp, dim=1)[tp_rank]
        gate = hf[src + "mlp.gate_proj.weight"].chunk(tp)[tp_rank]
        up = hf[src + "mlp.up_proj.weight"].chunk(tp)[tp_rank]
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([gate, up])
        out[dst + "mlp.linear_fc2.weight"] = hf[src + "mlp.down_proj.weight"].chunk(tp, dim=1)[tp_rank]
    if pp_rank == pp - 1:
        out["decoder.final_layernorm.weight"] = hf["norm.weight"]
        if has_output_layer(shape, pp_rank, pp):
            head = hf["embed_tokens.weight"] if shape.tied else hf["lm_head.weight"]
            out["output_layer.weight"] = _pad_vocab(head, shape.padded_vocab).chunk(tp)[tp_rank]
    return {k: v.contiguous() for k, v in out.items()}


def from_megatron(shards: list[dict[str, torch.Tensor]], shape: LMShape, pp_rank: int,
                  pp: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """The HF tensors one pipeline stage holds, merged from its tensor-parallel shards (in rank order)."""
    out: dict[str, torch.Tensor] = {}
    hd, groups, per_group = shape.head_dim, shape.kv_heads, shape.heads // shape.kv_heads

    def cat(key: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([s[key] for s in shards], dim=dim)

    if pp_rank == 0:
        out["embed_tokens.weight"] = cat("embedding.word_embeddings.weight")[: shape.vocab]
    for local, layer in enumerate(_stage_layers(shape, pp_rank, pp)):
        src, dst = f"decoder.layers.{local}.", f"layers.{layer}."
        for mg, name in _NORMS.items():
            out[dst + name] = shards[0][src + mg]
        for kind in ("weight", "bias"):
            qkv = cat(f"{src}self_attention.linear_qkv.{kind}")
            rest = qkv.shape[1:]
            qkv = qkv.reshape(groups, (per_group + 2) * hd, *rest)
            q, k, v = qkv.split([per_group * hd, hd, hd], dim=1)
            out[f"{dst}self_attn.q_proj.{kind}"] = q.reshape(-1, *rest)
            out[f"{dst}self_attn.k_proj.{kind}"] = k.reshape(-1, *rest)
            out[f"{dst}self_attn.v_proj.{kind}"] = v.reshape(-1, *rest)
        out[dst + "self_attn.o_proj.weight"] = cat(src + "self_attention.linear_proj.weight", dim=1)
        fc1 = [s[src + "mlp.linear_fc1.weight"].chunk(2) for s in shards]
        out[dst + "mlp.gate_proj.weight"] = torch.cat([g for g, _ in fc1])
        out[dst + "mlp.up_proj.weight"] = torch.cat([u for _, u in fc1])
        out[dst + "mlp.down_proj.weight"] = cat(src + "mlp.linear_fc2.weight", dim=1)
    if pp_rank == pp - 1:
        out["norm.weight"] = shards[0]["decoder.final_layernorm.weight"]
        if not shape.tied:
            out["lm_head.weight"] = cat("output_layer.weight")[: shape.vocab]
    return {k: v.contiguous() for k, v in out.items()}
