"""One GRPO-like step, hf backend vs megatron backend: generation / log-probs / training, tokens/s, memory, MFU.

python benchmarks/megatron_step.py                      # CUDA: Qwen2.5-VL-3B shapes, random bf16 weights
python benchmarks/megatron_step.py --model tiny         # the tiny VL model (what CPU runs by default)
torchrun --nproc-per-node 2 benchmarks/megatron_step.py --backends megatron --tp 2

The step: ``batch`` text prompts of ``prompt_len`` random tokens (``--image-size S``: each also shows an
S x S image), ``new_tokens`` sampled tokens each (the megatron backend syncs its weights into the HF
generator first, which is counted), then a log-prob pass without gradients (the "old"/reference pass),
then a log-prob pass with backward, clipping and an AdamW step. MFU counts each token's real FLOPs, the
same way for both backends (benchmarks/flops.py: the vision tower on image patches only, the LM head
only where a logit is read), against the GPU's dense bf16 peak (``--peak-tflops``, H100/H200 SXM: 989).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

QWEN25_VL_3B = dict(  # Qwen/Qwen2.5-VL-3B-Instruct's config.json, the shapes that matter
    text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
              num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
              tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                         "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31]),
)  # fmt: skip


def build_model_dir(kind: str, out: Path) -> Path:
    """A complete HF directory: the tiny VL model, or the 3B shapes with random weights and a tiny tokenizer."""
    from lmmr1_plugins.models.tiny import build_tiny_model

    if kind == "tiny":
        return build_tiny_model(out / "tiny-vl", "vl")
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = build_tiny_model(out / "qwen2.5-vl-3b-random", "vl")  # tokenizer, processor, template; weights replaced
    ids = Qwen2_5_VLConfig.from_pretrained(str(path))
    cfg = Qwen2_5_VLConfig(
        text_config=dict(QWEN25_VL_3B["text"], eos_token_id=ids.eos_token_id),
        vision_config=QWEN25_VL_3B["vision"],
        image_token_id=ids.image_token_id,
        video_token_id=ids.video_token_id,
        vision_start_token_id=ids.vision_start_token_id,
        vision_end_token_id=ids.vision_end_token_id,
        eos_token_id=ids.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.save_pretrained(str(path))
    del model
    torch.cuda.empty_cache()
    return path


PIXELS = {"min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28}  # Qwen2.5-VL's (and the recipes') bounds


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def make_prompts(backend, args) -> list:
    """``batch`` prompts of ``prompt_len`` random tokens; with ``image_size``, each one an image-and-text chat
    message (the random tokens as its text) through the backend's processor."""
    from lmmr1_plugins.models.hf import Prompt

    g = torch.Generator().manual_seed(0)
    vocab = min(len(backend.tokenizer), 500)
    ids = [torch.randint(10, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
    if not getattr(args, "image_size", 0):
        return [Prompt(x) for x in ids]
    from PIL import Image

    noise = torch.randint(0, 256, (args.image_size, args.image_size, 3), generator=g, dtype=torch.uint8).numpy()
    image = Image.fromarray(noise)
    return [backend.encode([{"role": "user", "content": [{"type": "image"},
                                                          {"type": "text", "text": backend.decode(x)}]}], [image])
            for x in ids]  # fmt: skip


def one_step(backend, args) -> dict[str, float]:
    from flops import forward_flops, generate_flops, mfu, rows_of, train_flops
    from transformers import AutoConfig

    prompts = make_prompts(backend, args)
    optimizer = backend.make_optimizer(1e-6, 0.0, (0.9, 0.999))
    backend.train()
    completions, t_gen = timed(lambda: backend.generate(prompts, args.new_tokens, 1.0, 1.0))
    completions = [c or [0] for c in completions]

    def score():
        with torch.no_grad():
            return backend.logprobs(prompts, completions)[0]

    _, t_score = timed(score)

    def train():
        logp, mask, _ = backend.logprobs(prompts, completions, with_entropy=True)
        (-(logp * mask).sum() / mask.sum()).backward()
        backend.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _, t_train = timed(train)
    n_gen = sum(len(c) for c in completions)
    n_tok = sum(len(p.input_ids) + len(c) for p, c in zip(prompts, completions))
    stats = {"generate_s": t_gen, "logprob_s": t_score, "train_s": t_train, "gen_tok_s": n_gen / t_gen,
             "logprob_tok_s": n_tok / t_score, "train_tok_s": n_tok / t_train,
             "prompt_tokens": sum(len(p.input_ids) for p in prompts) / len(prompts)}  # fmt: skip
    config, rows = AutoConfig.from_pretrained(str(backend.path)), rows_of(prompts, completions)
    flops = {"generate": generate_flops(config, rows), "logprob": forward_flops(config, rows),
             "train": train_flops(config, rows)}  # fmt: skip
    for k, f in flops.items():
        stats[f"tflops_{k}"] = f / stats[f"{k}_s"] / 1e12  # achieved, on any device
    if torch.cuda.is_available():
        world = int(os.environ.get("WORLD_SIZE", 1))
        for k, f in flops.items():
            stats[f"mfu_{k}"] = mfu(f, stats[f"{k}_s"], args.peak_tflops, world)
        stats["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["auto", "tiny", "3b"], default="auto")
    ap.add_argument("--backends", default="hf,megatron")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--image-size", default="0",
                    help="each prompt also shows an S x S image (0: text only); a comma list runs each in turn, "
                    "loading each backend once")  # fmt: skip
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--json", action="store_true", help="one JSON line per backend (benchmarks/gpu_check.py)")
    args = ap.parse_args()
    sizes = [int(x) for x in str(args.image_size).split(",")]
    cuda = torch.cuda.is_available()
    kind = args.model if args.model != "auto" else ("3b" if cuda else "tiny")
    if not cuda:
        args.batch, args.prompt_len, args.new_tokens = min(args.batch, 4), min(args.prompt_len, 32), 8
    rank = int(os.environ.get("RANK", 0))
    # every rank (torchrun) reads the model rank 0 builds, so it lives at a fixed place
    shared = Path(os.environ.get("LMMR1_BENCH_DIR", Path(tempfile.gettempdir()) / "lmmr1-megatron-bench"))
    path = shared / ("tiny-vl" if kind == "tiny" else "qwen2.5-vl-3b-random")
    if rank == 0 and not (path / ".ready").exists():
        build_model_dir(kind, shared)
        (path / ".ready").touch()
    while not (path / ".ready").exists():
        time.sleep(1)
    dtype = "bfloat16" if cuda else "float32"
    for name in args.backends.split(","):
        if name == "hf":
            if int(os.environ.get("WORLD_SIZE", 1)) > 1:
                continue
            from lmmr1_plugins.models.hf import HFBackend

            backend = HFBackend(str(path), dtype=dtype, **PIXELS)
        else:
            from lmmr1_plugins.models.megatron.backend import MegatronBackend

            backend = MegatronBackend(str(path), dtype=dtype, tensor_parallel=args.tp, pipeline_parallel=args.pp,
                                      **PIXELS)
        for size in sizes:
            args.image_size = size
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            one_step(backend, args)  # warm-up (allocator, kernels)
            stats = one_step(backend, args)
            if rank == 0 and args.json:
                print(json.dumps({"model": kind, "backend": name, "tp": args.tp if name != "hf" else 1,
                                  "image_size": size, **stats}), flush=True)  # fmt: skip
            elif rank == 0:
                shown = "  ".join(f"{k}={v:.3g}" for k, v in stats.items())
                image = f" + {size}px image" if size else ""
                split = f"tp={args.tp if name != 'hf' else 1} pp={args.pp if name != 'hf' else 1}"
                print(f"{kind} {name} {split} batch={args.batch}x({args.prompt_len}{image}+{args.new_tokens}): "
                      f"{shown}", flush=True)  # fmt: skip
        del backend
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
