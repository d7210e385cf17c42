"""LMM-R1's comparison in miniature: base, FRE only, MGT from base and FRE->MGT on text and on images.

python benchmarks/fre_mgt_comparison.py [--seeds 0 1 2] [--jobs 2] [--out docs/results] [--work runs/fre_mgt]

For each seed a tiny random Qwen2.5-VL model is built with that seed and the stage graph in
``fre_mgt_comparison.yaml`` runs on it: a warm-up (sft on generated additions and pictures: the "base"
model), FRE (RL on text additions), MGT from the base (RL on pictures) and FRE->MGT (the same MGT, from
FRE's weights), every RL stage with the same number of steps. Each of the four models is evaluated
greedily on a held-out text set and a held-out picture set. The table (mean +- std over seeds) is written
as markdown and PNG to ``--out``, with each stage's curves beside it. The paper's table has the same shape:
rows base / FRE / MGT / FRE->MGT, columns text and multimodal benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
STAGES = HERE / "fre_mgt_comparison.yaml"
ROWS = [("base (warm-up)", "eval_base"), ("FRE (text RL)", "eval_fre"), ("MGT from base (image RL)", "eval_mgt"),
        ("FRE -> MGT", "eval_fre_mgt")]  # fmt: skip
COLUMNS = [("text", "text-heldout"), ("multimodal", "image-heldout")]


def run_seed(seed: int, work: Path, threads: int | None, sets: list[str]) -> tuple[int, float]:
    """Build the seed's model and run the graph in a subprocess, as a user would; returns (seed, seconds)."""
    model = work / f"tiny-vl-seed{seed}"
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    cli = [sys.executable, "-m", "lmmr1_core.cli"]
    start = time.perf_counter()
    if not (model / "config.json").exists():
        subprocess.run([*cli, "tiny-model", str(model), "--kind", "vl", "--seed", str(seed)], env=env, check=True,
                       capture_output=True)  # fmt: skip
    seeds = [f"stages.{s}.seed={seed}" for s in ("warmup", "fre", "mgt", "fre_mgt")]
    args = [f"name=seed{seed}", f"model.path={model}", f"output_dir={work}", *seeds, *sets]
    log = work / f"seed{seed}.log"
    with open(log, "w") as f:
        result = subprocess.run([*cli, "run", str(STAGES), *(a for s in args for a in ("--set", s))], env=env,
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    if result.returncode:
        raise SystemExit(f"seed {seed} failed; see {log}")
    return seed, time.perf_counter() - start


def accuracy(run: Path, stage: str, data: str) -> float:
    """The first reward of the eval stage (math_accuracy) on one held-out set."""
    res = json.loads((run / stage / "final/results.json").read_text())
    first = next(k for k in res["datasets"][data] if not k.startswith("n"))
    return res["datasets"][data][first]


def table(work: Path, seeds: list[int]) -> tuple[str, dict[str, dict[str, list[float]]]]:
    values = {row: {col: [accuracy(work / f"seed{s}", stage, data) for s in seeds] for col, data in COLUMNS}
              for row, stage in ROWS}  # fmt: skip

    def cell(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    head = "| model | " + " | ".join(f"{c} accuracy" for c, _ in COLUMNS) + " |"
    lines = [head, "|---|" + "---|" * len(COLUMNS)]
    lines += [f"| {row} | " + " | ".join(cell(values[row][c]) for c, _ in COLUMNS) + " |" for row, _ in ROWS]
    return "\n".join(lines), values


def seed_table(values: dict[str, dict[str, list[float]]], seeds: list[int]) -> str:
    head = "| model | " + " | ".join(f"{c} seed {s}" for c, _ in COLUMNS for s in seeds) + " |"
    lines = [head, "|---|" + "---|" * (len(COLUMNS) * len(seeds))]
    for row, _ in ROWS:
        lines.append(f"| {row} | " + " | ".join(f"{v:.3f}" for c, _ in COLUMNS for v in values[row][c]) + " |")
    return "\n".join(lines)


def draw(values: dict[str, dict[str, list[float]]], seeds: list[int], out: Path) -> None:
    """Grouped bars (mean, error bar = std over seeds) with each seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.38
    for j, (col, _) in enumerate(COLUMNS):
        for i, (row, _) in enumerate(ROWS):
            xs = values[row][col]
            x = i + (j - 0.5) * width
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            ax.bar(x, statistics.mean(xs), width, yerr=sd, color=f"C{j}", alpha=0.8, capsize=3,
                   label=f"{col} (held-out)" if i == 0 else None)  # fmt: skip
            ax.scatter([x] * len(xs), xs, color="black", s=8, zorder=3)
            ax.text(x, 0.02, f"{statistics.mean(xs):.2f}", ha="center", fontsize=8, color="white", weight="bold")
    ax.set_xticks(range(len(ROWS)), [r for r, _ in ROWS], fontsize=9)
    ax.set_ylabel("accuracy (greedy)")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"FRE / MGT in miniature: tiny Qwen2.5-VL, {len(seeds)} seeds (dots), mean ± std", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (each with cores / jobs threads)")
    ap.add_argument("--work", default="runs/fre_mgt", help="where the runs and models go")
    ap.add_argument("--out", default="docs/results", help="where the table (.md, .png) and curves go")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override a key of the stage file")
    ap.add_argument("--report-only", action="store_true", help="redraw the table from the runs already in --work")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    timing = work / "timing.json"
    if not args.report_only:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            times = dict(pool.map(lambda s: run_seed(s, work, threads, args.sets), args.seeds))
        timing.write_text(json.dumps({"wall": time.perf_counter() - start, "seeds": times, "jobs": args.jobs}))
    measured = json.loads(timing.read_text())
    wall, times = measured["wall"], {int(k): v for k, v in measured["seeds"].items()}
    md, values = table(work, args.seeds)
    draw(values, args.seeds, out / "fre_mgt_comparison.png")
    from lmmr1_core.plots import compare_runs

    curves = compare_runs([work / f"seed{s}" for s in args.seeds], out=out / "fre_mgt_curves")
    per_seed = ", ".join(f"seed {s}: {t:.0f} s" for s, t in sorted(times.items()))
    text = (f"# FRE / MGT in miniature\n\n{md}\n\nGreedy accuracy on 64 held-out additions (text) and 64 held-out "
            f"pictures (multimodal), seeds {', '.join(map(str, args.seeds))}; written by "
            f"`python benchmarks/fre_mgt_comparison.py` in {wall:.0f} s on {os.cpu_count()} cores "
            f"({per_seed}; --jobs {measured['jobs']}).\n\nEach seed:\n\n{seed_table(values, args.seeds)}\n\n"
            "![table](fre_mgt_comparison.png)\n\n"
            + "".join(f"![{p.stem}](fre_mgt_curves/{p.name})\n" for p in curves))  # fmt: skip
    (out / "fre_mgt_comparison.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
