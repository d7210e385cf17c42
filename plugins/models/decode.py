"""The hf backend's generation loop: one forward over the prompts, then one per new token on a KV cache.

Why not ``model.generate``:

- the log-prob of each sampled token is read as it is sampled, where ``generate(output_logits=True)`` keeps
  every step's full-vocabulary logits (``[B, T, V]``: 10 GB for 16 rows of 1024 tokens at Qwen's 151k
  vocabulary) to be reduced afterwards;
- rows that have ended leave the batch (their KV-cache rows with them), so one long completion does not
  drag every finished row through each remaining step;
- on a CPU the one-token steps run on the thread count that is faster for them (``PhaseThreads``), which is
  often fewer than the prompt's forward wants;
- less Python per token than the general-purpose loop (no logits-processor and stopping-criteria lists).

What it keeps from ``generate``'s semantics: temperature, nucleus (``top_p``) sampling over the tempered
distribution, greedy decoding, tokens that are never sampled (``suppress``), and a completion that ends at
(and includes) its first end-of-sequence token.
"""

from __future__ import annotations

from typing import Any

import torch

from lmmr1_core.threads import PhaseThreads


def pick_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, greedy: bool, suppress: list[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits [B, V]``, and its log-prob under the sampling distribution ``[B]``.

    That distribution is the tempered softmax without the ``suppress`` tokens (temperature 1 when greedy),
    before the nucleus cut: the quantity ``token_logprobs`` computes in training and vLLM reports.
    """
    logits = logits.float() / (1.0 if greedy else temperature)
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(list(suppress), device=logits.device), float("-inf"))
    logz = torch.logsumexp(logits, dim=-1)
    if greedy:
        tokens = logits.argmax(-1)
    else:
        probs = torch.softmax(logits, dim=-1)
        if top_p < 1.0:  # keep the most likely tokens until their mass reaches top_p (at least one)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        tokens = torch.multinomial(probs, 1).squeeze(-1)
    return tokens, logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logz


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
        out = prefill_threads.run(lambda: model(**batch, past_key_values=cache, use_cache=True, logits_to_keep=1))
        positions = (mask.cumsum(-1) - 1)[:, -1:]
        if "pixel_values" in batch:  # only then: after a text-only forward the attribute is stale
            positions = positions + model.model.rope_deltas.to(positions)
        for step in range(max_new_tokens):
            new, logp = pick_tokens(out.logits[:, -1], temperature, top_p, greedy, suppress)
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
                cache.batch_select_indices(keep)
                full_mask, positions, new = full_mask[keep], positions[keep], new[keep]
                live = [live[i] for i in keep.tolist()]
            positions = positions + 1
            step_mask = full_mask[:, : prompt_len + step + 1]

            def forward(new=new, step_mask=step_mask, positions=positions):
                return model(input_ids=new.unsqueeze(-1), attention_mask=step_mask, position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip

            out = decode_threads.run(forward)
    finally:
        if torch.get_num_threads() != entry_threads:
            torch.set_num_threads(entry_threads)
    return tokens, logps
