"""lmmr1's rl stage against TRL's GRPOTrainer on one tiny Qwen2: step times side by side, quiet and contended.

    pip install -e '.[bench]'
    python benchmarks/compare_trl.py [--steps 12] [--repeats 1] [--sizes 64x2x16,256x4x64] [--no-competitor]
                                     [--trl-env GOMP_SPINCOUNT=20000] [--lmmr1-env OMP_WAIT_POLICY=PASSIVE]
                                     [--lmmr1-set model.threads=1]

Both trainers run the same tiny random Qwen2 (``HIDDENxLAYERSxNEW_TOKENS``) in float32 without gradient
checkpointing (TRL's config defaults to bf16 autocast and recomputation; lmmr1's to neither), on CPU, on the same
generated additions, 2 prompts x 8 samples per step, GRPO with KL on (coef 0.001) and ``math_accuracy`` as the
reward. Each run is a fresh process (``lmmr1 run`` on a stage file; TRL through its Python API), so each picks
its own thread settings as a user's run would (``--trl-env`` and ``--lmmr1-env`` add to a side's environment:
lmmr1's CLI sets ``GOMP_SPINCOUNT=20000`` unless a spin count or wait policy is set: the same setting on both
compares the code paths alone). The first
``--warmup`` steps are left out; the table shows each side's median and max seconds per step and lmmr1 / TRL
(with ``--repeats`` N, the sides alternate and each pair of runs' ratio of medians is listed too: other jobs on
a shared machine move a single run's median by 15% or more).
Then the same again while a competing 2-thread torch process, started here, keeps the CPUs busy for the
duration (another user's job, or another rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, GROUP, KL, LR = 2, 8, 0.001, 1e-5

COMPETITOR = """
import torch
torch.set_num_threads(2)
a, x = torch.randn(256, 256), torch.randn(1 << 16)
while True:  # a small training-like loop: matmuls and element-wise ops, each a parallel region
    for _ in range(8):
        a = torch.tanh(a @ a / 16)
    x = torch.sin(x) * 1.0001 + x.mean()
"""


def build_model(out: Path, hidden: int, layers: int) -> str:
    from lmmr1_plugins.models.tiny import build_tiny_model

    return str(build_tiny_model(out, "text", hidden=hidden, layers=layers))


def lmmr1_side(model: str, new_tokens: int, steps: int, work: Path, sets: list[str] = ()) -> list[float]:
    """``lmmr1 run`` on a one-stage file; the step times its metrics.jsonl logs."""
    import yaml

    stage = {
        "name": "cmp",
        "model": {"backend": "hf", "path": model},
        "output_dir": str(work / "runs"),
        "logging": {"tensorboard": False},
        "stages": {
            "rl": {
                "kind": "rl",
                "data": [{"dataset": "arithmetic", "n": 1000}],
                "rewards": [{"name": "math_accuracy"}],
                "algorithm": {"name": "grpo", "group_size": GROUP, "kl": {"coef": KL}},
                "generation": {"max_new_tokens": new_tokens, "temperature": 1.0},
                "steps": steps,
                "batch_size": BATCH,
                "micro_batch_size": BATCH * GROUP,
                "optim": {"lr": LR},
                "save_every": 10**6,
            }
        },
    }
    path = work / "cmp.yaml"
    path.write_text(yaml.safe_dump(stage))
    cmd = [
        sys.executable,
        "-m",
        "lmmr1_core.cli",
        "run",
        str(path),
        "--fresh",
        *(a for s in sets for a in ("--set", s)),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=work)
    rows = (work / "runs/cmp/rl/metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["step_s"] for r in rows]


def trl_side(model: str, new_tokens: int, steps: int, work: Path, sets: list[str] = ()) -> list[float]:
    """TRL's GRPOTrainer with the same model, prompts, group size, KL and reward; timed per optimizer step."""
    import torch
    from datasets import Dataset
    from lmmr1_plugins.datasets.arithmetic import arithmetic
    from lmmr1_plugins.rewards.math import math_accuracy
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    samples = arithmetic(n=1000)
    data = Dataset.from_list([{"prompt": s.messages, "answer": s.answer} for s in samples])

    def accuracy(prompts, completions, answer, **kwargs):
        return math_accuracy(prompts, [c[0]["content"] for c in completions], answer)

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=BATCH * GROUP, num_generations=GROUP,
        max_completion_length=new_tokens, max_steps=steps, beta=KL, learning_rate=LR, temperature=1.0,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
        bf16=False, gradient_checkpointing=False,  # TRL's defaults (bf16 autocast, recomputation); lmmr1: fp32, none
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(model, padding_side="left"),
        reward_funcs=[accuracy], args=config, train_dataset=data, callbacks=[Timer()],
    )  # fmt: skip
    trainer.train()
    return times


def child(side: str, model: str, new_tokens: int, steps: int, sets: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix=f"cmp-{side}-") as work:
        fn = trl_side if side == "trl" else lmmr1_side
        print(json.dumps(fn(model, new_tokens, steps, Path(work), sets)))


def run_side(
    side: str, model: str, new_tokens: int, steps: int, sets: list[str] = (), env: list[str] = ()
) -> list[float]:
    """One side in a fresh process whose environment is this one's plus ``env`` (``KEY=VALUE``)."""
    cmd = [sys.executable, __file__, "--child", side, "--model", model, "--new-tokens", str(new_tokens),
           "--steps", str(steps), *(a for s in sets for a in ("--lmmr1-set", s))]  # fmt: skip
    child_env = {**os.environ, **dict(e.split("=", 1) for e in env)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=child_env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=8,
                    help="first steps of each run left out: lmmr1 times its thread counts on its first 7")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side and condition (alternating sides)")
    ap.add_argument("--sizes", default="64x2x16,256x4x64", help="HIDDENxLAYERSxNEW_TOKENS, comma-separated")
    ap.add_argument("--no-competitor", action="store_true", help="skip the contended runs")
    ap.add_argument("--lmmr1-set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `lmmr1 run --set`, e.g. model.threads=1 (repeatable)")  # fmt: skip
    ap.add_argument("--trl-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for TRL's processes, e.g. GOMP_SPINCOUNT=20000: the OpenMP spin lmmr1 "
                    "sets itself, to compare the code paths alone (repeatable)")  # fmt: skip
    ap.add_argument("--lmmr1-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for lmmr1's processes, e.g. OMP_WAIT_POLICY=PASSIVE (lmmr1 keeps a wait policy "
                    "or spin count that is set; else it spins 20000 times, about 0.2 ms) (repeatable)")  # fmt: skip
    ap.add_argument("--json", default=None, help="also write every step time to this file")
    ap.add_argument("--child", choices=["trl", "lmmr1"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--new-tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model, args.new_tokens, args.steps, args.lmmr1_set)

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    conditions = ["quiet"] + ([] if args.no_competitor else ["competitor"])
    results: dict[str, dict[str, list[float]]] = {}
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; {BATCH} prompts x {GROUP} samples, KL {KL}, "
          f"{args.steps} steps per run, first {args.warmup} left out, {args.repeats} run(s) per side")  # fmt: skip
    head = (f"{'condition':12s} {'model':16s} {'TRL median/max s':>18s} {'lmmr1 median/max s':>20s} {'lmmr1/TRL':>10s}"
            f"  {'per pair of runs':>16s}")
    print(head)
    with tempfile.TemporaryDirectory(prefix="cmp-models-") as models:
        for hidden, layers, new_tokens in sizes:
            model = build_model(Path(models) / f"h{hidden}l{layers}", hidden, layers)
            for cond in conditions:
                competitor = None
                if cond == "competitor":
                    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
                    time.sleep(3)  # past its import
                try:
                    runs, pairs = {"trl": [], "lmmr1": []}, []
                    for _ in range(args.repeats):
                        pair = {}
                        for side in runs:
                            total = args.steps + args.warmup
                            sets = args.lmmr1_set if side == "lmmr1" else []
                            env = args.trl_env if side == "trl" else args.lmmr1_env
                            pair[side] = run_side(side, model, new_tokens, total, sets, env)[args.warmup :]
                            runs[side] += pair[side]
                        pairs.append(statistics.median(pair["lmmr1"]) / statistics.median(pair["trl"]))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                label = f"h{hidden} l{layers} t{new_tokens}"
                results[f"{cond} {label}"] = {**runs, "pair_ratios": pairs}
                (tm, tx), (lm, lx) = summary(runs["trl"]), summary(runs["lmmr1"])
                spread = " ".join(f"{r:.2f}" for r in pairs) if len(pairs) > 1 else ""
                print(f"{cond:12s} {label:16s} {tm:>9.3f} / {tx:<6.3f} {lm:>11.3f} / {lx:<6.3f} {lm / tm:>10.2f}"
                      f"  {spread:>16s}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
