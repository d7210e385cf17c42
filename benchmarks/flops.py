"""Model FLOPs of a step, counted the same way for every backend, for MFU.

A figure that counts ``6 x parameters x tokens`` charges a text prompt for the vision tower it never runs
and every prompt token for the vocabulary projection whose logits nobody reads; and since the hf backend's
parameters include the vision tower while the megatron backend's are the language model alone, the two
backends' MFU were not comparable. Here each token pays for what it really costs:

- the language model's matrix products (attention projections and MLP) on every real token (padding is free);
- causal attention scores: ``4 x hidden x (keys it attends to)`` per token and layer;
- the LM head (hidden x vocabulary) only where a logit is read: the completion tokens when scoring,
  each generated token when generating (plus the prompt's last position, which predicts the first one);
- the vision tower on image patches only (patch embedding, blocks with windowed or full attention, and the
  patch merger), once per image (generation: in the prefill).

Embedding lookups, norms, rotary and softmax are left out (small, and not matrix-engine work); a backward
pass costs twice its forward; gradient checkpointing's recomputation is not counted (MFU, not HFU).
Shapes come from the HF config (``AutoConfig``), which both backends read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One sequence of a batch: ``prompt`` tokens (image placeholders included), ``completion`` tokens, and
    the patches (``t x h x w`` of ``image_grid_thw``) of each image the prompt shows."""

    prompt: int
    completion: int
    image_patches: list[int] = field(default_factory=list)


def _text(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def lm_flops_per_token(config: Any) -> float:
    """Forward FLOPs of the decoder's matrix products for one token (no attention scores, no LM head)."""
    t = _text(config)
    d, ff, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    head = getattr(t, "head_dim", None) or d // t.num_attention_heads
    q, kv = t.num_attention_heads * head, t.num_key_value_heads * head
    per_layer = 2 * d * (q + 2 * kv) + 2 * q * d + 3 * 2 * d * ff  # q/k/v, o, SwiGLU gate/up/down
    return float(layers * per_layer)


def attention_flops(config: Any, start: int, n: int) -> float:
    """Causal attention scores and the weighted sum for tokens ``start .. start + n - 1`` of a sequence
    (token i attends to i + 1 keys): ``4 x heads x head_dim`` per key, per layer."""
    t = _text(config)
    head = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    keys = n * start + n * (n + 1) // 2
    return 4.0 * t.num_attention_heads * head * keys * t.num_hidden_layers


def lm_head_flops(config: Any) -> float:
    t = _text(config)
    return 2.0 * t.hidden_size * t.vocab_size


def vision_flops(config: Any, patches: int) -> float:
    """The vision tower's forward on one image of ``patches`` patches (0 for a text-only model)."""
    v = getattr(config, "vision_config", None)
    if v is None or not patches:
        return 0.0
    d, ff = v.hidden_size, v.intermediate_size
    pixels = getattr(v, "in_channels", 3) * getattr(v, "temporal_patch_size", 2) * v.patch_size**2
    merge = getattr(v, "spatial_merge_size", 2) ** 2
    full = set(getattr(v, "fullatt_block_indexes", []) or [])
    window = (getattr(v, "window_size", 0) or 0) // v.patch_size  # a window of window x window patches
    window_keys = min(patches, window * window) if window else patches
    flops = 2.0 * pixels * d * patches  # patch embedding (a linear map of each patch's pixels)
    for i in range(v.depth):
        flops += patches * (2 * d * 3 * d + 2 * d * d + 3 * 2 * d * ff)  # qkv, proj, SwiGLU MLP
        keys = patches if (i in full or not window) else window_keys  # bidirectional, within the image/window
        flops += 4.0 * d * patches * keys
    out = getattr(v, "out_hidden_size", d)
    flops += patches / merge * (2 * (merge * d) * (merge * d) + 2 * (merge * d) * out)  # the merger's MLP
    return flops


def forward_flops(config: Any, rows: list[Row]) -> float:
    """One scoring forward (log-probs of each row's completion given its prompt)."""
    total = 0.0
    for r in rows:
        n = r.prompt + r.completion
        total += lm_flops_per_token(config) * n + attention_flops(config, 0, n)
        total += lm_head_flops(config) * r.completion
        total += sum(vision_flops(config, p) for p in r.image_patches)
    return total


def train_flops(config: Any, rows: list[Row], vision_trained: bool = True) -> float:
    """Forward + backward (twice the forward) of a training pass; a frozen vision tower runs forward only
    (nothing before it needs its gradient)."""
    vision = sum(vision_flops(config, p) for r in rows for p in r.image_patches)
    return 3 * (forward_flops(config, rows) - vision) + (3 if vision_trained else 1) * vision


def generate_flops(config: Any, rows: list[Row]) -> float:
    """Prefill of the prompt (vision tower included), then one token at a time against the KV cache: every
    generated token but the last is fed back; the LM head runs at the prompt's last position and at each token
    fed back (one logit row per generated token)."""
    total = 0.0
    for r in rows:
        fed = max(r.completion - 1, 0)
        total += lm_flops_per_token(config) * (r.prompt + fed)
        total += attention_flops(config, 0, r.prompt) + attention_flops(config, r.prompt, fed)
        total += lm_head_flops(config) * max(r.completion, 1)
        total += sum(vision_flops(config, p) for p in r.image_patches)
    return total


def mfu(flops: float, seconds: float, peak_tflops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: the FLOPs above per second over the devices' dense peak."""
    return flops / seconds / (peak_tflops * 1e12 * devices)


def rows_of(prompts: list[Any], completions: list[list[int]]) -> list[Row]:
    """Rows from the backends' ``Prompt`` objects (token ids, ``image_grid_thw``) and completions."""
    rows = []
    for p, c in zip(prompts, completions):
        grid = getattr(p, "image_grid_thw", None)
        patches = [int(g.prod()) for g in grid] if grid is not None else []
        rows.append(Row(len(p.input_ids), len(c), patches))
    return rows
