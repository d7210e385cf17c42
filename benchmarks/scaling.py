"""Tokens/s of the rl stage with 1 vs N processes (torchrun, every rank rolling out its own share), and
each process's split of a step into generation, scoring, training and weight sync.

    python benchmarks/scaling.py [--nproc 2] [--steps 6] [--sizes quickstart,larger] [--engine backend|vllm]

Each size runs the same stage file twice, in fresh processes, one after the other: ``lmmr1 run`` with one
process, then with ``--nproc-per-node N``. The first step (warm-up, engine start) is left out; the figures
are medians of the rest, read from ``metrics.jsonl`` (rank 0's timings; ``tokens_per_s`` counts every
rank's tokens). On a 2-core machine two processes share the cores with each other, so expect at most 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SIZES = {  # tiny Qwen2 shapes: the quickstart's, and one where the matrix products dominate
    "quickstart": {"hidden": 64, "layers": 2, "max_new_tokens": 24},
    "larger": {"hidden": 256, "layers": 4, "max_new_tokens": 48},
}


def stage_file(work: Path, size: dict, steps: int, engine: str) -> Path:
    from lmmr1_plugins.models.tiny import build_tiny_model

    model = work / f"model-{size['hidden']}"
    if not model.exists():
        build_tiny_model(model, "text", hidden=size["hidden"], layers=size["layers"])
    cfg = {
        "name": "scaling",
        "model": {"backend": "hf", "path": str(model), "rollout": {"engine": engine}},
        "stages": {"rl": {
            "kind": "rl", "data": [{"dataset": "arithmetic", "n": 1000, "seed": 2}],
            "rewards": [{"name": "math_accuracy"}, {"name": "think_answer_format"}],
            "algorithm": {"name": "grpo", "group_size": 8, "kl": {"coef": 0.001}},
            "generation": {"max_new_tokens": size["max_new_tokens"]},
            "steps": steps, "batch_size": 8, "micro_batch_size": 32, "save_every": 10_000,
        }},
    }  # fmt: skip
    path = work / f"scaling-{size['hidden']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(path: Path, nproc: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", str(path), "--output-dir", str(out), "--fresh"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "scaling" / "rl" / "metrics.jsonl").read_text().splitlines()][1:]
    keys = ("tokens_per_s", "step_s", "generation_s", "scoring_s", "train_s", "rollout/sync_s")
    return {k: statistics.median(r.get(k) or 0.0 for r in rows) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--sizes", default="quickstart,larger")
    ap.add_argument("--engine", choices=["backend", "vllm"], default="backend")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmmr1-scaling-"))
    print(f"cpus available: {len(os.sched_getaffinity(0))}; 8 prompts x 8 samples per step; engine {args.engine}")
    print("| size | processes | tokens/s | step s | generation s | scoring s | train s | sync s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.sizes.split(","):
        path = stage_file(work, SIZES[name], args.steps, args.engine)
        base = None
        for nproc in (1, args.nproc):
            m = measure(path, nproc, work / f"{name}-{nproc}")
            base = base or m["tokens_per_s"]
            print(f"| {name} | {nproc} | {m['tokens_per_s']:.0f} ({m['tokens_per_s'] / base:.2f}x) | {m['step_s']:.2f} "
                  f"| {m['generation_s']:.2f} | {m['scoring_s']:.2f} | {m['train_s']:.2f} "
                  f"| {m['rollout/sync_s']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
