"""Verifications per second of ``math_accuracy``: in-process, through the time-limit workers, in parallel.

    python benchmarks/rewards.py [--n 10000] [--batch 256] [--workers 2]

10,000 generated (completion, answer) pairs in the forms math data uses (integers, fractions,
decimals, roots, LaTeX), about half correct, scored in batches of ``--batch`` as an rl step does.
"""

from __future__ import annotations

import argparse
import os
import random
import time


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    completions, answers = [], []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(2, 12)
        kind = rng.randrange(4)
        if kind == 0:
            gold, right, wrong = str(a * b), str(a * b), str(a * b + 1)
        elif kind == 1:
            gold, right, wrong = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a + 1}/{b}"
        elif kind == 2:
            gold, right, wrong = f"{a / 4:g}", f"\\frac{{{a}}}{{4}}", f"{a / 4 + 0.5:g}"
        else:
            gold, right, wrong = f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"{a}\\sqrt{{{b + 1}}}"
        pred = right if rng.random() < 0.5 else wrong
        completions.append(f"<think>working it out</think> <answer>{pred}</answer>")
        answers.append(gold)
    return completions, answers


def timed(fn, completions, answers, batch: int) -> tuple[float, list]:
    out: list = []
    start = time.perf_counter()
    for i in range(0, len(completions), batch):
        out += fn(completions[i : i + batch], answers[i : i + batch])
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from lmmr1_core import load_reward
    from lmmr1_core.rewards import RewardSet

    reward = load_reward("math_accuracy")
    completions, answers = make_pairs(args.n)
    reward(prompts=["p"], completions=completions[:1], answer=answers[:1])  # import/compile warm-up

    def direct(c, a):
        return reward(prompts=["p"] * len(c), completions=c, answer=a)

    results = {}
    t, ref = timed(direct, completions, answers, args.batch)
    results["in-process, serial (no time limit)"] = t
    for workers in sorted({1, args.workers}):
        rs = RewardSet([("math", reward, 1.0, 10.0, workers)])
        try:

            def through(c, a, rs=rs):
                ids = [str(i) for i in range(len(c))]
                return rs(["p"] * len(c), c, {"answer": a, "id": ids})[1]["math"]

            through(completions[:8], answers[:8])  # start the workers
            t, out = timed(through, completions, answers, args.batch)
        finally:
            rs.close()
        assert out == ref, "worker results differ from in-process results"
        results[f"worker processes x{workers} (time-limited)"] = t

    correct = sum(1 for s in ref if s == 1.0)
    print(f"math_accuracy over {args.n} pairs in batches of {args.batch} ({correct} correct), {os.cpu_count()} cores")
    base = results["in-process, serial (no time limit)"]
    for name, t in results.items():
        print(f"  {name:40s} {args.n / t:8.0f} verifications/s  ({t:.2f} s, x{base / t:.2f} vs in-process)")


if __name__ == "__main__":
    main()
