"""A core-attention module for megatron-core layer specs built on ``F.scaled_dot_product_attention``.

megatron-core's own ``DotProductAttention`` builds its causal mask on ``cuda`` and reads a global
CUDA memory buffer; its fast paths (Transformer Engine, flash) need a GPU too. This module runs on
any device and honours padding: ``attention_mask`` is megatron's boolean ``[b, 1, sq, sk]`` mask
(True = masked out). Every query may always see itself, so a padding row (left-padded prompts)
never softmaxes over nothing — its output is never read, but a NaN there would poison gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    """``[sq, b, np, hn]`` queries, ``[sk, b, ng, hn]`` keys/values -> ``[sq, b, np * hn]``."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        tp = config.tensor_model_parallel_size
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):  # fmt: skip
        assert packed_seq_params is None and attention_bias is None, "SDPAttention: no packing, no bias"
        sq, sk = query.shape[0], key.shape[0]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        if self.heads != self.groups:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        if attention_mask is not None:
            allowed = allowed & ~attention_mask
            allowed = allowed | torch.eye(sq, sk, dtype=torch.bool, device=q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0, scale=self.softmax_scale
        )
        return out.permute(2, 0, 1, 3).reshape(sq, q.shape[0], -1)
