"""Time rl steps of a tiny model: tokens/s, seconds per step (generation / training), peak memory.

    python benchmarks/rl_step.py [--steps 10] [--batch-size 8] [--group-size 8] [--max-new-tokens 32]
                                 [--hidden 128] [--layers 2] [--model DIR]

Runs the real rl stage (``lmmr1_core.rl``) on generated arithmetic; the first step is reported
apart (warm-up) and the rest averaged.
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
    args = ap.parse_args()

    from lmmr1_plugins.models.tiny import build_tiny_model

    from lmmr1_core.cli import _quiet_libraries
    from lmmr1_core.config import RunConfig
    from lmmr1_core.run import run

    _quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="lmmr1-bench-"))
    model = args.model or str(build_tiny_model(work / "model", "text", hidden=args.hidden, layers=args.layers))
    cfg = RunConfig.model_validate(
        {
            "name": "bench",
            "model": {"backend": "hf", "path": model},
            "output_dir": str(work / "runs"),
            "stages": {
                "rl": {
                    "kind": "rl",
                    "data": [{"dataset": "arithmetic", "n": 1000}],
                    "rewards": [{"name": "math_accuracy"}, {"name": "think_answer_format"}],
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


if __name__ == "__main__":
    main()
