"""The hf backend's generation loop: one forward over the prompts, then one per new token on a KV cache.

Why not ``model.generate``:

- the log-prob of each sampled token is read as it is sampled, where ``generate(output_logits=True)`` keeps
  every step's full-vocabulary logits (``[B, T, V]``: 10 GB for 16 rows of 1024 tokens at Qwen's 151k
  vocabulary) to be reduced afterwards;
- rows that have ended leave the batch (their KV-cache rows with them), so one long completion does not
  drag every finished row through each remaining step;
- the prompt forward runs once per distinct prompt (``distinct_rows``: GRPO repeats each one), and a token
  is drawn from one uniform number per row (``draw``), not ``torch.multinomial``'s one per vocabulary entry;
- on a CPU the one-token steps run on the thread count that is faster for them (``PhaseThreads``), which is
  often fewer than the prompt's forward wants;
- less Python per token: no logits-processor and stopping-criteria lists, and for Llama-family decoders
  (Qwen2, Llama, Qwen2.5-VL's language model) a one-token step of a few lines over the model's own modules
  and a preallocated KV cache (``LeanStep``) instead of the general forward, which builds a 4-D mask, rotary
  tables and output records and grows the cache by concatenation on every step.

What it keeps from ``generate``'s semantics: temperature, nucleus (``top_p``) sampling over the tempered
distribution, greedy decoding, tokens that are never sampled (``suppress``), and a completion that ends at
(and includes) its first end-of-sequence token.
"""

from __future__ import annotations

from typing import Any

import torch

from lmmr1_core.threads import PhaseThreads


def sampling_logits(
    logits: torch.Tensor, temperature: float, suppress: list[int] = (), floor: float = float("-inf")
) -> torch.Tensor:
    """The logits of the distribution tokens are sampled from: tempered, the ``suppress`` tokens set to
    ``floor``. Sampling (``pick_tokens``) and training (``hf.token_logprobs``) must agree on it."""
    logits = logits.float() / temperature
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(list(suppress), device=logits.device), floor)
    return logits


def pick_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, greedy: bool, suppress: list[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits [B, V]``, and its log-prob under the sampling distribution ``[B]``.

    That distribution is the tempered softmax without the ``suppress`` tokens (temperature 1 when greedy),
    before the nucleus cut: the quantity ``token_logprobs`` computes in training and vLLM reports.
    """
    logp = torch.log_softmax(sampling_logits(logits, 1.0 if greedy else temperature, suppress), dim=-1)
    if greedy:
        tokens = logp.argmax(-1)
    else:
        probs = logp.exp()
        if top_p < 1.0:  # keep the most likely tokens until their mass reaches top_p (at least one)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        tokens = draw(probs)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs [B, V]`` (non-negative, not necessarily normalised), drawn in proportion.

    By the inverse of the cumulative distribution, summed in float64, at one uniform number per row.
    ``torch.multinomial`` draws one exponential number per vocabulary entry instead: at a small batch's step
    that cost more than the rest of the sampling (280 us of ~300 at vocabulary 523; at Qwen's 151k it is
    2.4 million draws a step). The point is in (0, total], and the first entry whose cumulative sum reaches
    it has mass of its own: a zero-probability entry is never drawn, and the last entry bounds every point.
    """
    cdf = probs.double().cumsum_(-1)
    total = cdf[:, -1:]
    if not bool(((total > 0) & (total < float("inf"))).all()):  # NaN fails both
        raise ValueError("cannot sample: a row's probabilities are NaN, infinite or all zero (NaN logits?)")
    point = (1.0 - torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device)) * total
    return torch.searchsorted(cdf, point).squeeze(-1)


LEAN_MODEL_TYPES = {"llama", "qwen2", "qwen2_vl_text", "qwen2_5_vl_text"}
"""Decoders whose one-token step ``LeanStep`` computes exactly (RMSNorm, rotary on all of each head, grouped-query
attention over every earlier token, gated MLP); any other model takes the general forward."""


FUSE_BYTES = 2 << 30
"""The most weight bytes a CPU model may have for ``LeanStep`` to keep transposed and concatenated copies of
its weights during a generation: they double the weights' memory."""


class LeanStep:
    """One-token steps over a decoder's own modules (so LoRA layers and hooks on them still apply).

    ``None`` from ``build`` when the model is not one whose step it reproduces. The KV cache the prompt forward
    filled is copied once into buffers with room for every new token; each step writes one column.

    A step of a small batch costs its number of ops more than its arithmetic, so it rotates q and k together,
    normalises with one fused RMSNorm, and attends with two batched matmuls (for a single query
    ``scaled_dot_product_attention``'s CPU kernel took 330 us where these take tens). The keys are kept
    transposed (``[rows, kv heads, head dim, positions]``), so the scores' matmul reads them as stored.

    On a CPU it also multiplies by q/k/v and by gate/up as one matrix each, and by every weight stored
    transposed (``x @ W.T`` read row by row; ~10% less time than ``linear`` on weights that come from
    memory, as a step's do). Those copies are made once per generation, only of plain ``Linear`` weights: a
    LoRA layer is called as itself.
    """

    @staticmethod
    def build(model: torch.nn.Module, cache, rows: int, total: int) -> LeanStep | None:
        inner = getattr(model, "model", None)
        text = getattr(inner, "language_model", inner)  # Qwen2.5-VL: the language model inside
        cfg = getattr(text, "config", None)
        rotary = getattr(text, "rotary_emb", None)
        if (cfg is None or rotary is None or getattr(cfg, "model_type", None) not in LEAN_MODEL_TYPES
                or getattr(rotary, "rope_type", None) not in ("default", "linear", "llama3", "yarn")
                or getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "_attn_implementation", None) != "sdpa"
                or any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ["full_attention"])
                or model.get_output_embeddings() is None or model.training
                or len(getattr(cache, "layers", ())) != len(text.layers)):  # fmt: skip
            return None
        return LeanStep(model, text, rotary, cache, rows, total)

    def __init__(self, model, text, rotary, cache, rows: int, total: int) -> None:
        self.text, head = text, model.get_output_embeddings()
        self.inv_freq, self.scale = rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0))
        # the weight copies below: on a GPU, or for weights past FUSE_BYTES, they would cost more memory than
        # they save time
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        fuse = head.weight.device.type == "cpu" and weights <= FUSE_BYTES
        self.layers = [_LeanLayer(layer, fuse) for layer in text.layers]
        self.norm, self.head = _rms_norm(text.norm), _projections(fuse, head)
        self.length = cache.get_seq_length()
        self.keys, self.values = [], []  # [rows, kv heads, head dim, total] and [rows, kv heads, total, head dim]
        for layer in cache.layers:
            _, kv, prompt, d = layer.keys.shape
            self.keys.append(layer.keys.new_empty(rows, kv, d, total))
            self.keys[-1][..., :prompt] = layer.keys.transpose(-1, -2)
            self.values.append(layer.values.new_empty(rows, kv, total, d))
            self.values[-1][:, :, :prompt] = layer.values
        cache.layers.clear()  # the prompt's copy is no longer needed

    def select(self, keep: torch.Tensor) -> None:
        """Keep only these rows (the others have ended)."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of the token after ``tokens [rows]``, at ``positions [rows, 1]``; ``mask``
        covers every cached position and this one."""
        col, self.length = self.length, self.length + 1
        freqs = positions.float() * self.inv_freq.to(positions.device)  # [rows, half]
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)  # [rows, 1, head dim]: broadcast over the heads
        h = self.text.embed_tokens(tokens)  # [rows, hidden]
        cos, sin = (emb.cos() * self.scale).to(h.dtype), (emb.sin() * self.scale).to(h.dtype)  # once, not per layer
        # 0 where a position is attended, -inf where it is padding: [rows, 1, 1, positions]
        bias = torch.zeros(mask.shape[0], col + 1, dtype=torch.float32, device=h.device)
        bias = bias.masked_fill_(mask[:, : col + 1] == 0, float("-inf"))[:, None, None]
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            h = layer(h, cos, sin, bias, keys, values, col)
        return self.head(self.norm(h))


class _LeanLayer:
    """One decoder layer's one-token step (``LeanStep``)."""

    def __init__(self, layer, fuse: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.heads, self.head_dim = attn.config.num_attention_heads, attn.head_dim
        self.kv_heads, self.scaling = attn.config.num_key_value_heads, attn.scaling
        self.input_norm, self.post_norm = _rms_norm(layer.input_layernorm), _rms_norm(layer.post_attention_layernorm)
        self.o_proj, self.down_proj = _projections(fuse, attn.o_proj), _projections(fuse, mlp.down_proj)
        self.qkv = _projections(fuse, attn.q_proj, attn.k_proj, attn.v_proj)
        self.gate_up = _projections(fuse, mlp.gate_proj, mlp.up_proj)

    def __call__(self, h, cos, sin, bias, keys, values, col: int) -> torch.Tensor:
        rows, H, KV, d = h.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv(self.input_norm(h))  # [rows, (H + 2 KV) d]
        qk = qkv[:, : (H + KV) * d].view(rows, H + KV, d)
        qk = qk * cos + _rotate_half(qk) * sin  # rotary on q and k at once
        keys[..., col] = qk[:, H:]
        values[:, :, col] = qkv[:, (H + KV) * d :].view(rows, KV, d)
        # one matrix per (row, kv head): its query heads [H / KV, d] against its positions
        q = qk[:, :H].reshape(rows * KV, H // KV, d) * self.scaling
        scores = torch.bmm(q, keys.view(rows * KV, d, -1)[..., : col + 1]).view(rows, KV, H // KV, col + 1) + bias
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype).view(rows * KV, H // KV, col + 1)
        out = torch.bmm(probs, values.view(rows * KV, -1, d)[:, : col + 1]).reshape(rows, H * d)
        h = h + self.o_proj(out)
        gate, up = self.gate_up(self.post_norm(h)).chunk(2, dim=-1)
        return h + self.down_proj(torch.nn.functional.silu(gate) * up)


def _projections(fuse: bool, *linears: torch.nn.Module):
    """One or more projections of the same input, outputs concatenated: one matmul by their concatenated
    weights, stored transposed, where ``fuse`` and all are plain ``Linear`` layers, else each module called
    as itself (LoRA layers)."""
    if not fuse or not all(type(m) is torch.nn.Linear for m in linears):
        if len(linears) == 1:
            return linears[0]
        return lambda x: torch.cat([m(x) for m in linears], -1)
    weight_t = torch.cat([m.weight for m in linears]).t().contiguous()  # [in, out]
    if all(m.bias is None for m in linears):
        return lambda x: torch.mm(x, weight_t)
    bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
    return lambda x: torch.addmm(bias, x, weight_t)


def _rms_norm(module: torch.nn.Module):
    """The decoder's RMSNorm as torch's fused op (the module's forward is six), or the module itself."""
    eps, weight = getattr(module, "variance_epsilon", None), getattr(module, "weight", None)
    if not type(module).__name__.endswith("RMSNorm") or eps is None or weight is None:
        return module
    shape = (weight.shape[-1],)
    return lambda x: weight * torch.nn.functional.rms_norm(x.float(), shape, eps=eps).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def distinct_rows(batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(first, each)``: the first row of each distinct prompt and each row's index among them, so the prompt
    forward runs once per distinct prompt, not once per sample (GRPO samples each prompt ``group_size``
    times; vLLM's prefix cache does the same). ``(None, None)`` when every row differs, or when the batch
    carries images (their pixel rows are not aligned with the batch's)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if "pixel_values" in batch or any(not torch.is_tensor(v) or v.shape[:1] != ids.shape[:1] for v in batch.values()):
        return None, None
    index: dict[tuple, int] = {}
    each = [index.setdefault((tuple(i), tuple(m)), len(index)) for i, m in zip(ids.tolist(), mask.tolist())]
    if len(index) == len(each):
        return None, None
    first = [each.index(k) for k in range(len(index))]
    return torch.tensor(first, device=ids.device), torch.tensor(each, device=ids.device)


@torch.inference_mode()  # not no_grad: no version counters or view tracking either (a step is 15-25% faster)
def sample(
    model: torch.nn.Module,
    batch: dict[str, Any],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    eos_ids: set[int],
    suppress: list[int] = (),
    prefill_threads: PhaseThreads | None = None,
    decode_threads: PhaseThreads | None = None,
    lean_steps: bool = True,
) -> tuple[list[list[int]], list[list[float]]]:
    """Completions for a left-padded ``batch`` (``input_ids``, ``attention_mask`` and whatever else the
    model's forward takes: images, positions) and each token's log-prob.

    Each new token's position follows its row's last prompt position. A multimodal-RoPE model (Qwen2.5-VL)
    numbers the tokens after an image from where the image's grid positions end: its forward over the
    prompts leaves that offset in ``rope_deltas``.
    """
    from transformers import DynamicCache

    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, prompt_len = ids.shape
    prefill_threads = prefill_threads or PhaseThreads(None)
    decode_threads = decode_threads or PhaseThreads(None)
    entry_threads = torch.get_num_threads()  # what the caller's own work runs on: put back at the end
    cache = DynamicCache(config=model.config)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    live = list(range(rows))  # each batch row's index in the input: ended rows leave the batch
    eos = torch.tensor(sorted(eos_ids), device=ids.device)
    full_mask = torch.cat([mask, mask.new_ones(rows, max_new_tokens)], dim=1)
    try:
        first, each = distinct_rows(batch)
        prefill = batch if first is None else {k: v[first] for k, v in batch.items()}
        logits = prefill_threads.run(
            lambda: model(**prefill, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1],
            prefill["input_ids"].numel(),
        )
        if first is not None:  # each row gets its prompt's logits and KV cache
            logits = logits[each]
            cache.batch_select_indices(each)
        positions = (mask.cumsum(-1) - 1)[:, -1:]
        if "pixel_values" in batch:  # only then: after a text-only forward the attribute is stale
            positions = positions + model.model.rope_deltas.to(positions)
        lean = LeanStep.build(model, cache, rows, prompt_len + max_new_tokens) if lean_steps else None
        for step in range(max_new_tokens):
            new, logp = pick_tokens(logits, temperature, top_p, greedy, suppress)
            for r, t, lp in zip(live, new.tolist(), logp.tolist()):
                tokens[r].append(t)
                logps[r].append(lp)
            if step == max_new_tokens - 1:
                break
            going = torch.isin(new, eos, invert=True)
            if not bool(going.all()):
                keep = going.nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                lean.select(keep) if lean is not None else cache.batch_select_indices(keep)
                full_mask, positions, new = full_mask[keep], positions[keep], new[keep]
                live = [live[i] for i in keep.tolist()]
            positions = positions + 1
            step_mask = full_mask[:, : prompt_len + step + 1]

            def forward(new=new, step_mask=step_mask, positions=positions):
                if lean is not None:
                    return lean(new, step_mask, positions)
                return model(input_ids=new.unsqueeze(-1), attention_mask=step_mask, position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # fmt: skip

            logits = decode_threads.run(forward)
    finally:
        if torch.get_num_threads() != entry_threads:
            torch.set_num_threads(entry_threads)
    return tokens, logps
