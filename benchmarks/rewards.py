"""Verifications per second of ``math_accuracy`` on a realistic and an adversarial mix: in-process
(serial) and through the time-limited reward workers (1 process, then ``--workers`` in parallel).

    python benchmarks/rewards.py [--n 6000] [--n-adversarial 400] [--batch 256] [--workers 2] [--group-size 8]

Realistic: (completion, answer) pairs in the forms math data uses (integers, labelled values, fractions,
decimals, roots, percentages, thousands, degrees, intervals, points, sets, polynomials) in groups of
``--group-size`` completions per problem as an rl step samples them (so a gold answer is parsed once
per group), each after a few hundred characters of reasoning, about half correct. Adversarial:
hedges, several boxes, 20,000-100,000 character completions, unclosed tags, deep nesting, power towers
and huge factorials. Time limits are on throughout (``time_limit_s`` in the reward, ``timeout_s`` in
the workers).
"""

from __future__ import annotations

import argparse
import os
import random
import time

REASONING = "Let me work through this step by step. First we set up the quantities and simplify. " * 5


def realistic_group(rng: random.Random, size: int) -> list[tuple[str, str]]:
    """One problem's group of ``size`` completions (as an rl step samples them), each right or wrong."""
    a, b, c = rng.randint(2, 999), rng.randint(2, 97), rng.randint(1, 60)
    forms = [
        (str(a * b), str(a * b), str(a * b + 1)),
        (str(a), f"x = {a}", f"x = {a + 1}"),
        (f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a + 1}/{b}"),
        (f"{a / 4:g}", f"\\frac{{{a}}}{{4}}", f"{a / 4 + 0.5:g}"),
        (f"{c}\\sqrt{{{b}}}", f"\\sqrt{{{c * c * b}}}", f"{c}\\sqrt{{{b + 1}}}"),
        (f"{c}\\%", f"{c}\\%", f"{c + 1}\\%"),
        (f"{a}{b:03d}", f"{a},{b:03d}", f"{a},{b + 1:03d}"),
        (f"{c}^\\circ", f"{c}^\\circ", f"{c + 5}^\\circ"),
        (f"[{c}, {a})", f"[{c},{a})", f"({c},{a})"),
        (f"({c}, -{b})", f"({c},-{b})", f"({b},-{c})"),
        (f"\\{{{c}, {a}\\}}", f"\\{{{a}, {c}\\}}", f"\\{{{a}, {c + 1}\\}}"),
        (f"x^2+{2 * c}x+{c * c}", f"(x+{c})^2", f"(x+{c + 1})^2"),
    ]
    weights = [20, 12, 12, 10, 8, 5, 5, 5, 6, 6, 4, 7]
    gold, right, wrong = rng.choices(forms, weights)[0]
    group = []
    for _ in range(size):
        pred = right if rng.random() < 0.5 else wrong
        boxed = f"\\boxed{{{pred}}}" if rng.random() < 0.3 else pred
        group.append((f"<think>{REASONING}{rng.random()}</think> <answer>{boxed}</answer>", gold))
    return group


def adversarial_pair(rng: random.Random) -> tuple[str, str]:
    big = rng.randint(20_000, 100_000)
    forms = [
        "<answer>3 \\text{ (or maybe 4, 5, 6)}</answer>",
        "<answer>5=3</answer>",
        "<answer>not \\boxed{3}</answer>",
        "<answer>1, 2, \\boxed{3}</answer>",
        "<answer>\\boxed{\\boxed{1}\\boxed{2}\\boxed{3}}</answer>",
        "x" * big,
        "<answer>" + "3 " * (big // 2),
        "\\boxed{" * (big // 7),
        "<answer>" + "{" * 3000 + "3" + "}" * 3000 + "</answer>",
        "<answer>9^{9^{9^{9}}}</answer>",
        "<answer>100000000!</answer>",
        "<answer>" + "1+" * (big // 4) + "1</answer>",
    ]
    return rng.choice(forms), "3"


def timed(fn, completions, answers, batch: int) -> tuple[float, list]:
    out: list = []
    start = time.perf_counter()
    for i in range(0, len(completions), batch):
        out += fn(completions[i : i + batch], answers[i : i + batch])
    return time.perf_counter() - start, out


def run(name: str, reward, completions, answers, batch: int, workers: int) -> None:
    from lmmr1_core.rewards import RewardWorkers

    def direct(c, a):
        return reward(prompts=["p"] * len(c), completions=c, answer=a)

    from lmmr1_plugins.rewards import math as math_reward

    results = {}
    math_reward.parse_gold.cache_clear()  # each mode starts cold: the workers fork from this process
    math_reward._gold_text.cache_clear()
    t, ref = timed(direct, completions, answers, batch)
    results["in-process, serial"] = t
    for n in sorted({1, workers}):
        math_reward.parse_gold.cache_clear()
        math_reward._gold_text.cache_clear()
        pool = RewardWorkers("math", reward, timeout_s=10.0, workers=n)
        try:
            pool.score(["p"] * n, completions[:n], {"answer": answers[:n]})  # start the processes

            def through(c, a, pool=pool):
                return pool.score(["p"] * len(c), c, {"answer": a})

            t, out = timed(through, completions, answers, batch)
        finally:
            pool.close()
        assert out == ref, "worker results differ from in-process results"
        results[f"reward workers x{n}" + (" (parallel)" if n > 1 else "")] = t
    correct = sum(1 for s in ref if s == 1.0)
    print(f"{name}: {len(completions)} pairs in batches of {batch}, {correct} scored 1.0")
    for label, t in results.items():
        print(f"  {label:32s} {len(completions) / t:8.0f} verifications/s  ({t:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--n-adversarial", type=int, default=400)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--group-size", type=int, default=8, help="completions per problem (one gold answer)")
    args = ap.parse_args()

    from lmmr1_core import load_reward

    reward = load_reward("math_accuracy")
    reward(prompts=["p"], completions=["<answer>\\frac{1}{2}</answer>"], answer=["0.5"])  # import warm-up
    rng = random.Random(0)
    print(f"{os.cpu_count()} cores, time limits on")
    realistic = [pair for _ in range(args.n // args.group_size) for pair in realistic_group(rng, args.group_size)]
    run("realistic mix", reward, [c for c, _ in realistic], [a for _, a in realistic], args.batch, args.workers)
    adversarial = [adversarial_pair(rng) for _ in range(args.n_adversarial)]
    run("adversarial mix", reward, [c for c, _ in adversarial], [a for _, a in adversarial], args.batch, args.workers)


if __name__ == "__main__":
    main()
