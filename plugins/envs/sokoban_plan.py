"""Sokoban as LMM-R1 trains it: one turn, the whole plan at once, scored by executing it.

The model sees the initial board (image + grid) and answers a comma-separated plan inside
``<answer>``. ``sokoban_plan`` is LMM-R1's reward as a preset; ``sokoban_success`` is 1.0 when
the plan solves the level (the success rate eval reports).
"""

from __future__ import annotations

import io
import re
from typing import Any

from lmmr1_plugins.envs.sokoban import MOVES, SokobanEnv, generate_level, parse_xsb, render, solve

from lmmr1_core import Sample
from lmmr1_core.errors import DataError

PROMPT = (
    "You are playing Sokoban. The picture shows the board: walls are brown, boxes are crossed squares "
    "(green when on a target), targets are red rings and you are the blue circle. As text "
    "(# wall, _ floor, O target, X box, √ box on target, P player, S player on target):\n{grid}\n"
    "Push every box onto a target. Think inside <think> </think>, then give the whole plan inside "
    "<answer> </answer> as actions separated by commas, e.g. <answer>Left, Up, Up</answer>."
)
_PAIR = re.compile(r"^\s*<think>(?P<think>(?:(?!</?think>|</?answer>).)*)</think>\s*"
                   r"<answer>(?P<answer>(?:(?!</?think>|</?answer>).)*)</answer>\s*$", re.DOTALL)  # fmt: skip
MAX_ACTIONS, MAX_ENV_STEPS = 50, 120


def sokoban_levels(
    n: int = 100,
    seed: int = 0,
    dim: tuple[int, int] | list[int] = (7, 7),
    num_boxes: int = 2,
    xsb: str | None = None,
    max_solution: int | None = None,
) -> list[Sample]:
    """Initial boards as single-turn prompts: generated (seeded) or read from an XSB level file.

    ``max_solution`` keeps only levels whose shortest solution has at most that many moves.
    """
    if xsb is not None:
        try:
            with open(xsb) as f:
                levels = parse_xsb(f.read())
        except FileNotFoundError:
            raise DataError(f"{xsb}: no such XSB level file") from None
        except ValueError as exc:
            raise DataError(f"{xsb}: {exc}") from None
    else:
        levels = [generate_level(seed * 1_000_003 + i, tuple(dim), num_boxes) for i in range(n)]
    samples = []
    for i, level in enumerate(levels[:n] if xsb is None else levels):
        plan = solve(level)
        if plan is None or (max_solution is not None and len(plan) > max_solution):
            continue
        buf = io.BytesIO()  # PNG bytes: ~1 KB a board instead of ~150 KB as a decoded image
        render(level).save(buf, format="PNG")
        image = buf.getvalue()
        content = [{"type": "image", "image": image}, {"type": "text", "text": PROMPT.format(grid=level.grid())}]
        samples.append(Sample(
            messages=[{"role": "user", "content": content}],
            answer=", ".join(a.capitalize() for a in plan),
            images=[image],
            meta={"level": level.xsb(), "title": level.title, "optimal_steps": len(plan),
                  "category": f"{len(level.boxes)} boxes"},
            id=f"sokoban-{level.title or i}",
        ))  # fmt: skip
    if not samples:
        raise DataError("sokoban_levels: no solvable level (check max_solution or the XSB file)")
    return samples


def _repeats(actions: list[str], limit: int = 7) -> bool:
    """Whether some 1-5-gram repeats back to back more than ``limit`` times."""
    for k in range(1, 6):
        for start in range(len(actions) - k):
            gram, count, i = actions[start : start + k], 1, start + k
            while actions[i : i + k] == gram:
                count, i = count + 1, i + k
            if count > limit:
                return True
    return False


def plan_bonus(actions: list[str]) -> float:
    if _repeats(actions):
        return 0.0
    n = len(actions)
    return 0.05 * n if n < 20 else max(0.0, 1 - 0.2 * ((n - 20) / 30) ** 2)


def execute(level_xsb: str, actions: list[str]) -> tuple[float, bool]:
    """(best cumulative env return while executing the first 50 actions, solved)."""
    env = SokobanEnv(levels=parse_xsb(level_xsb), max_steps=MAX_ENV_STEPS)
    env.reset(0)
    total, best = 0.0, 0.0
    for action in actions[:MAX_ACTIONS]:
        total += env.move(action)
        best = max(best, total)
        if env.level.solved() or env.steps >= MAX_ENV_STEPS:
            break
    return best, env.level.solved()


def _plan(completion: str) -> tuple[list[str], str] | None:
    """(actions, thinking) when the response is exactly one think/answer pair of action words."""
    m = _PAIR.match(completion or "")
    if not m:
        return None
    words = [w.strip().lower() for w in m.group("answer").split(",")]
    if not words or any(w not in MOVES for w in words):
        return None
    return words, m.group("think")


def sokoban_plan(prompts, completions, level=None, **kwargs: Any) -> list[float | None]:
    """LMM-R1's Sokoban reward: env return (best reached, floored at 0) + 0.5 format + plan-length
    bonus + 0.001 per word of thinking (at most 0.2); 0 for a malformed response."""

    def score(lv: str, parsed) -> float:
        actions, think = parsed
        env_return, _ = execute(lv, actions)
        return env_return + 0.5 + plan_bonus(actions) + min(0.2, 0.001 * len(think.split()))

    return _score_plans(completions, level, score)


def sokoban_success(prompts, completions, level=None, **kwargs: Any) -> list[float | None]:
    """1.0 when the answered plan solves the level (first 50 actions, 120 env steps)."""
    return _score_plans(completions, level, lambda lv, parsed: float(execute(lv, parsed[0])[1]))


def _score_plans(completions, levels, score) -> list[float | None]:
    """``score(level, (actions, thinking))`` per completion; 0 for malformed, None without a level."""
    out: list[float | None] = []
    for completion, lv in zip(completions, levels or [None] * len(completions)):
        parsed = _plan(completion) if lv is not None else None
        out.append(None if lv is None else (score(lv, parsed) if parsed else 0.0))
    return out
