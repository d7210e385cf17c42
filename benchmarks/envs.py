"""Sokoban speed: env steps per second (text and image observations) and level generation time.

python benchmarks/envs.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()

    from lmmr1_plugins.envs.sokoban import SokobanEnv, generate_level, render, solve

    for dim, boxes in (((6, 6), 1), ((8, 8), 2)):
        start = time.perf_counter()
        levels = [generate_level(seed, dim, boxes) for seed in range(200)]
        gen = (time.perf_counter() - start) / len(levels)
        start = time.perf_counter()
        plans = [solve(level) for level in levels]
        solve_s = (time.perf_counter() - start) / len(levels)
        mean_len = sum(len(p) for p in plans) / len(plans)
        print(
            f"{dim[0]}x{dim[1]}, {boxes} box(es): generate {gen * 1e3:.2f} ms/level, "
            f"solve (BFS) {solve_s * 1e3:.2f} ms/level, shortest solution {mean_len:.1f} moves on average"
        )

        env = SokobanEnv(dim=dim, num_boxes=boxes, max_steps=10**9)
        env.reset(0)
        rng = random.Random(0)
        actions = [rng.choice(["Up", "Down", "Left", "Right"]) for _ in range(args.steps)]
        start = time.perf_counter()
        for a in actions:
            env.move(a.lower())
            env.level.grid()
        text_rate = args.steps / (time.perf_counter() - start)
        start = time.perf_counter()
        for a in actions[: args.steps // 4]:
            env.step(f"<answer>{a}</answer>")  # parses, moves, renders the image observation
        image_rate = (args.steps // 4) / (time.perf_counter() - start)
        print(f"  env steps/s: {text_rate:,.0f} with text observations, {image_rate:,.0f} with image observations "
              f"({render(env.level).size[0]}x{render(env.level).size[1]} px)")  # fmt: skip


if __name__ == "__main__":
    main()
