"""Generation throughput of the hf backend and the vLLM engine on the same model and prompts, and the
time to sync the trainer's weights into vLLM.

    python benchmarks/rollout.py [--prompts 16] [--group-size 8] [--max-new-tokens 64] [--rounds 3]
                                 [--hidden 256] [--layers 4] [--model DIR] [--dtype auto]

Both engines sample ``prompts x group_size`` completions per round at temperature 1; the first round
is warm-up (vLLM compiles) and the rest are averaged. Tokens/s counts generated tokens only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def timed_rounds(generate, prompts, rounds: int, max_new_tokens: int) -> tuple[float, float]:
    """Seconds per round (after the first) and generated tokens/s."""
    seconds, tokens = [], []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        completions = generate(prompts, max_new_tokens)
        seconds.append(time.perf_counter() - t0)
        tokens.append(sum(len(c) for c in completions))
    s = statistics.mean(seconds[1:])
    return s, statistics.mean(tokens[1:]) / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--model", default=None, help="an HF model directory instead of a tiny text model")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    from lmmr1_plugins.models.tiny import build_tiny_model
    from lmmr1_plugins.models.vllm_engine import VLLMRollout

    from lmmr1_core import load_model
    from lmmr1_core.cli import _quiet_libraries

    _quiet_libraries()
    model = args.model or str(
        build_tiny_model(Path(tempfile.mkdtemp(prefix="lmmr1-bench-")) / "model", "text", args.hidden, args.layers)
    )
    backend = load_model("hf", path=model, dtype=args.dtype)
    questions = [f"What is {i} + {3 * i + 7}? Think step by step." for i in range(args.prompts)]
    prompts = [backend.encode([{"role": "user", "content": q}]) for q in questions for _ in range(args.group_size)]
    n_params = sum(p.numel() for p in backend.model.parameters())
    print(f"model {model}: {n_params / 1e6:.1f}M parameters, {backend.dtype}, {backend.device}; "
          f"{len(prompts)} sequences x up to {args.max_new_tokens} new tokens")  # fmt: skip

    torch.manual_seed(0)
    hf_s, hf_tps = timed_rounds(lambda p, n: backend.generate(p, n), prompts, args.rounds, args.max_new_tokens)
    print(f"hf    generate: {hf_s:7.3f} s/round  {hf_tps:9.0f} tokens/s")

    t0 = time.perf_counter()
    engine = VLLMRollout(backend, max_model_len=max(len(p.input_ids) for p in prompts) + args.max_new_tokens + 16)
    start_s = time.perf_counter() - t0
    v_s, v_tps = timed_rounds(lambda p, n: engine.generate(p, n, return_logprobs=True)[0], prompts, args.rounds,
                              args.max_new_tokens)  # fmt: skip
    print(f"vllm  generate: {v_s:7.3f} s/round  {v_tps:9.0f} tokens/s  (engine start {start_s:.1f} s)")
    syncs = [engine.sync_weights() for _ in range(5)]
    print(f"weight sync   : {statistics.median(syncs) * 1000:7.1f} ms (median of 5, {n_params / 1e6:.1f}M parameters)")
    print(f"speed-up      : {v_tps / hf_tps:.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
