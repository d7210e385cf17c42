"""Warm-up data from the BFS solver: behaviour cloning before RL, the agents' analogue of FRE.

A random model never answers in the env's format, so every episode of a group scores the same and
RL has no signal. ``sokoban_solver`` plays the solver's shortest plan through the very env the rl
stage uses and records, for each turn, the conversation the model would see at that point (every
earlier board, the solver's earlier answers as assistant turns) with the next move(s) as the
answer. An sft stage with the default ``target_template`` (``<answer>{answer}</answer>``) then
trains on the conversations an rl stage's episodes hold, so the policy it leaves starts RL from
episodes that sometimes succeed. (A stage's ``prompt_template`` is the exception: sft wraps the last
user turn, an episode the first; the Sokoban quickstarts use none.) Plan mode needs no new data:
``sokoban_levels`` already carries the solver's whole plan as ``answer``.
"""

from __future__ import annotations

import io
from typing import Any

from lmmr1_plugins.envs.sokoban import SokobanEnv, solve

from lmmr1_core import Sample
from lmmr1_core.config import EnvSpec
from lmmr1_core.errors import DataError
from lmmr1_core.prompts import observation_message


def _png(image) -> bytes:
    buf = io.BytesIO()  # PNG bytes: a ~1 KB board instead of a decoded image, the same pixels once read
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_items(message: dict[str, Any], images: list[bytes]) -> dict[str, Any]:
    """The observation message with its PIL images swapped for the PNG bytes in ``images``."""
    it = iter(images)
    content = [{"type": "image", "image": next(it)} if i.get("type") == "image" else i for i in message["content"]]
    return {**message, "content": content}


def sokoban_solver(n: int = 100, seed: int = 0, env: dict[str, Any] | None = None) -> list[Sample]:
    """One sft sample per turn of the solver's episode on each of ``n`` seeded levels.

    ``seed`` numbers levels the way ``env_seeds`` does (the same ``seed`` gives the rl stage's levels);
    ``env`` is the stage's env block as written (a YAML anchor keeps the two alike): its ``instruction``,
    ``max_turns`` and the env's own options (``dim``, ``num_boxes``, ``actions_per_turn``, ...) shape the
    observations and answers. Turns past ``max_turns`` are left out, as an episode ends there.
    """
    spec = EnvSpec.model_validate(env or {"name": "sokoban"})
    if spec.name != "sokoban":
        raise DataError(f"sokoban_solver: env {spec.name!r}; the solver plays only `sokoban`")
    options = spec.env_config()
    samples: list[Sample] = []
    for i in range(n):
        env_seed = seed * 1_000_003 + i
        game = SokobanEnv(**options)
        obs = game.reset(env_seed)
        plan = solve(game.level)
        if plan is None:  # a level from an XSB file may be beyond the solver's budget
            continue
        k = game.actions_per_turn
        turns = [plan[t : t + k] for t in range(0, len(plan), k)][: spec.max_turns]
        messages: list[dict[str, Any]] = []
        images: list[bytes] = []
        for turn, moves in enumerate(turns):
            shown = [_png(im) for im in obs.images]
            images = images + shown
            messages = messages + [_image_items(observation_message(obs, spec.instruction), shown)]
            answer = f" {game.separator} ".join(m.capitalize() for m in moves)
            samples.append(Sample(
                messages=messages, answer=answer, images=images,
                meta={"env_seed": env_seed, "turn": turn, "moves_left": len(plan) - turn * k},
                id=f"solver-{env_seed}-{turn}",
            ))  # fmt: skip
            response = f"<answer>{answer}</answer>"
            obs, _, done, _ = game.step(response)
            messages = messages + [{"role": "assistant", "content": response}]
            if done:
                break
    if not samples:
        raise DataError("sokoban_solver: no level the solver could solve")
    return samples
