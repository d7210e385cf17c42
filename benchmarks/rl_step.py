"""Time rl steps of a tiny model: tokens/s, seconds per step (generation / training), peak memory.

    python benchmarks/rl_step.py [--steps 10] [--batch-size 8] [--group-size 8] [--max-new-tokens 32]
                                 [--hidden 128] [--layers 2] [--model DIR] [--kind text|vl] [--lora-r R]
    python benchmarks/rl_step.py --lora [--kind vl] [...]    # full weights vs LoRA, side by side
    python benchmarks/rl_step.py --lora --shapes 3b            # + the trainer's tensors at Qwen2.5-VL-3B's shapes

Runs the real rl stage (``lmmr1_core.rl``) on generated arithmetic (``--kind vl``: geometry figures through
a tiny Qwen2.5-VL); the first step is reported apart (warm-up) and the rest averaged. ``--lora`` runs the
same stage twice, in fresh processes (peak memory is per process), with all weights trained and with LoRA
adapters (``--lora-r``), and prints both: step time, peak RSS (and GPU memory), and the trainer's own
tensors (weights, gradients, Adam moments, the KL reference: a second copy without LoRA, none with it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--micro-batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--model", default=None, help="an HF model directory instead of a tiny model")
    ap.add_argument("--kl", type=float, default=0.001)
    ap.add_argument("--kind", choices=["text", "vl"], default="text", help="tiny model kind (vl: image prompts)")
    ap.add_argument("--lora-r", type=int, default=0, help="train LoRA adapters of this rank (0: all weights)")
    ap.add_argument("--lora", action="store_true", help="compare all weights with LoRA (rank --lora-r or 16)")
    ap.add_argument("--shapes", choices=["3b"], default=None,
                    help="with --lora: also the trainer's tensors at Qwen2.5-VL-3B's shapes in bf16 (counted on the "
                    "meta device, not run)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one JSON line (--lora's children)
    args = ap.parse_args()
    if args.lora:
        return compare_lora(args)

    from lmmr1_plugins.models.tiny import build_tiny_model

    from lmmr1_core.cli import _quiet_libraries
    from lmmr1_core.config import RunConfig
    from lmmr1_core.run import run

    _quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="lmmr1-bench-"))
    model = args.model or str(build_tiny_model(work / "model", args.kind, hidden=args.hidden, layers=args.layers))
    data = {"dataset": "arithmetic", "n": 1000} if args.kind == "text" else {"dataset": "geometry", "n": 200}
    reward = "math_accuracy" if args.kind == "text" else "geometry_answer"
    model_cfg = {"backend": "hf", "path": model, **({"max_pixels": 12544} if args.kind == "vl" else {})}
    if args.lora_r:
        model_cfg["lora"] = {"r": args.lora_r, "alpha": 2.0 * args.lora_r}
    cfg = RunConfig.model_validate(
        {
            "name": "bench",
            "model": model_cfg,
            "logging": {"tensorboard": False},
            "output_dir": str(work / "runs"),
            "stages": {
                "rl": {
                    "kind": "rl",
                    "data": [data],
                    "rewards": [{"name": reward}, {"name": "think_answer_format"}],
                    "algorithm": {"group_size": args.group_size, "kl": {"coef": args.kl}},
                    "generation": {"max_new_tokens": args.max_new_tokens},
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "micro_batch_size": args.micro_batch_size,
                    "save_every": 10**6,
                }
            },
        }
    )
    run(cfg, "benchmark")
    rows = [json.loads(x) for x in (work / "runs/bench/rl/metrics.jsonl").read_text().splitlines()]
    warm, rest = rows[0], rows[1:] or rows

    def avg(key: str) -> float:
        return statistics.mean(r[key] for r in rest)

    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.json:
        gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        print(json.dumps({"step_s": avg("step_s"), "generation_s": avg("generation_s"), "train_s": avg("train_s"),
                          "peak_rss_gib": peak_rss_gib, "peak_gpu_gib": gpu, **trainer_bytes(model, args)}))
        return
    print(yaml.safe_dump({"config": vars(args)}, sort_keys=False).strip())
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads {torch.get_num_threads()}")
    print(f"first step (warm-up): {warm['step_s']:.3f} s")
    print(f"steps averaged: {len(rest)}")
    print(f"tokens/s (prompt+completion): {avg('tokens_per_s'):.0f}")
    gen, train = avg("generation_s"), avg("train_s")
    print(f"step seconds: {avg('step_s'):.3f}  (generation {gen:.3f}, training {train:.3f})")
    print(f"mean response length: {avg('response_length'):.1f} tokens")
    print(f"peak memory: {peak_rss_gib:.2f} GiB RSS", end="")
    if torch.cuda.is_available():
        print(f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU", end="")
    print()


def trainer_bytes(model: str, args) -> dict[str, float]:
    """GiB the trainer holds in tensors: weights, gradients and Adam's two moments of what trains, and the KL
    reference (a full copy without LoRA; none with it: the base with the adapter off)."""
    from lmmr1_core import load_model

    lora = {"r": args.lora_r, "alpha": 2.0 * args.lora_r} if args.lora_r else None
    backend = load_model("hf", path=model, **({"lora": lora} if lora else {}))  # the run's device and dtype
    params = list(backend.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trained = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    reference = 0 if (lora or not args.kl) else weights
    total = weights + 3 * trained + reference
    return {"weights_gib": weights / 2**30, "trained_params": sum(p.numel() for p in params if p.requires_grad),
            "all_params": sum(p.numel() for p in params), "trainer_tensors_gib": total / 2**30}


def compare_lora(args) -> None:
    """The same benchmark with all weights trained and with LoRA, each in its own process."""
    import subprocess
    import sys

    base = [sys.executable, __file__, "--json", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens), "--micro-batch-size",
            str(args.micro_batch_size), "--hidden", str(args.hidden), "--layers", str(args.layers), "--kl",
            str(args.kl), "--kind", args.kind, *(["--model", args.model] if args.model else [])]  # fmt: skip
    rank = args.lora_r or 16
    results = {}
    for name, extra in (("all weights", []), (f"LoRA r={rank}", ["--lora-r", str(rank)])):
        out = subprocess.run(base + extra, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(yaml.safe_dump({"config": {k: v for k, v in vars(args).items() if k not in ("json", "lora")}},
                         sort_keys=False).strip())  # fmt: skip
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, KL coef {args.kl} (a reference model is needed)")
    head = f"{'':14s} {'trained params':>15s} {'step s':>8s} {'gen s':>7s} {'train s':>8s} {'peak RSS GiB':>13s}"
    print(head + f" {'trainer tensors GiB':>20s}" + (f" {'peak GPU GiB':>13s}" if torch.cuda.is_available() else ""))
    for name, r in results.items():
        line = (f"{name:14s} {r['trained_params']:>15,d} {r['step_s']:>8.3f} {r['generation_s']:>7.3f} "
                f"{r['train_s']:>8.3f} {r['peak_rss_gib']:>13.2f} {r['trainer_tensors_gib']:>20.4f}")  # fmt: skip
        print(line + (f" {r['peak_gpu_gib']:>13.2f}" if r["peak_gpu_gib"] is not None else ""))
    if args.shapes:
        shapes_3b(rank)


QWEN25_VL_3B = {
    "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 2048, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    "tie_word_embeddings": True, "vocab_size": 151936,
}  # fmt: skip


def shapes_3b(rank: int) -> None:
    """The trainer's tensors for Qwen2.5-VL-3B in bf16, all weights vs LoRA (counted, not measured): weights,
    gradients, AdamW's two moments (the parameters' dtype; peft keeps adapters in fp32) and the KL reference."""
    from lmmr1_plugins.models.lora import target_names
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**QWEN25_VL_3B), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    adapter = sum(rank * (modules[m].in_features + modules[m].out_features) for m in target_names(model, None))
    full = n * (2 + 2 + 4 + 2)  # weights, grads, Adam moments, reference copy (bf16)
    lora = n * 2 + adapter * (4 + 4 + 8)  # frozen weights; fp32 adapter, its grads and moments; no reference
    print(f"Qwen2.5-VL-3B shapes ({n / 1e9:.2f}B parameters, bf16), trainer tensors before activations:")
    print(f"  all weights: {full / 2**30:.1f} GiB (weights, grads, AdamW moments, KL reference copy)")
    print(f"  LoRA r={rank}: {lora / 2**30:.1f} GiB ({adapter / 1e6:.1f}M adapter parameters on "
          f"{len(target_names(model, None))} modules; the reference is the base with the adapter off)")


if __name__ == "__main__":
    main()
