"""Grid maze, an env domain: the model sees the maze (image + text grid) and moves one step a turn.

A maze of ``size`` x ``size`` rooms is carved by a seeded depth-first search; it is drawn on a grid of
``2 * size + 1`` squares (walls are squares too). The player starts top-left, the goal is the room
farthest from it. Actions: ``<answer>Up</answer>`` (Up, Down, Left, Right), one per turn.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from lmmr1_core import Observation

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
TILE = 16
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
Pos = tuple[int, int]


def carve(size: int, seed: int) -> set[Pos]:
    """The open squares of a perfect maze (one path between any two rooms), the same for a seed."""
    rng = random.Random(f"maze-{size}-{seed}")
    start = (1, 1)
    open_squares, stack = {start}, [start]
    while stack:
        r, c = stack[-1]
        rooms = [(r + 2 * dr, c + 2 * dc, dr, dc) for dr, dc in MOVES.values()]
        fresh = [x for x in rooms if 0 < x[0] < 2 * size and 0 < x[1] < 2 * size and x[:2] not in open_squares]
        if not fresh:
            stack.pop()
            continue
        nr, nc, dr, dc = rng.choice(fresh)
        open_squares |= {(r + dr, c + dc), (nr, nc)}
        stack.append((nr, nc))
    return open_squares


def distances(open_squares: set[Pos], start: Pos) -> dict[Pos, int]:
    """Steps from ``start`` to every open square (BFS)."""
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nxt = (r + dr, c + dc)
            if nxt in open_squares and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def parse_action(text: str) -> tuple[str | None, str | None]:
    """``(action, None)`` or ``(None, reason)``: one move word inside the last ``<answer>``."""
    found = _ANSWER.findall(text or "")
    if not found:
        return None, "no <answer>...</answer>"
    word = found[-1].strip().lower()
    if word not in MOVES:
        return None, f"not an action: {word[:40]!r} (use Up, Down, Left or Right)"
    return word, None


@dataclass
class MazeEnv:
    """``reset(seed) -> Observation``; ``step(response) -> (Observation, reward, done, info)``."""

    size: int = 3  # rooms per side
    max_steps: int = 20  # turns before the episode ends unsolved
    step_reward: float = -0.05
    goal_reward: float = 1.0
    format_penalty: float = -0.1  # a turn without a valid move (the player stays)
    open_squares: set[Pos] = field(init=False, default_factory=set)
    player: Pos = field(init=False, default=(1, 1))
    goal: Pos = field(init=False, default=(1, 1))
    steps: int = field(init=False, default=0)

    def reset(self, seed: int) -> Observation:
        self.open_squares = carve(self.size, seed)
        dist = distances(self.open_squares, (1, 1))
        self.player, self.goal = (1, 1), max(dist, key=lambda p: (dist[p], p))
        self.steps = 0
        return self.observation()

    def grid(self) -> str:
        side = 2 * self.size + 1
        rows = []
        for r in range(side):
            row = ""
            for c in range(side):
                p = (r, c)
                row += "P" if p == self.player else "G" if p == self.goal else "." if p in self.open_squares else "#"
            rows.append(row)
        return "\n".join(rows)

    def render(self) -> Image.Image:
        side = 2 * self.size + 1
        img = Image.new("RGB", (side * TILE, side * TILE), (40, 40, 60))
        d = ImageDraw.Draw(img)
        for r, c in self.open_squares:
            d.rectangle([c * TILE, r * TILE, c * TILE + TILE - 1, r * TILE + TILE - 1], fill=(235, 235, 225))
        for (r, c), colour in ((self.goal, (40, 170, 70)), (self.player, (40, 90, 220))):
            d.ellipse([c * TILE + 2, r * TILE + 2, c * TILE + TILE - 3, r * TILE + TILE - 3], fill=colour)
        return img

    def observation(self) -> Observation:
        text = f"The maze (# wall, . floor, P you, G goal):\n{self.grid()}\nReach G."
        return Observation(text=text, images=[self.render()])

    def step(self, response: str) -> tuple[Observation, float, bool, dict[str, Any]]:
        action, error = parse_action(response)
        self.steps += 1
        reward = self.format_penalty if error else self.step_reward
        if action:
            dr, dc = MOVES[action]
            nxt = (self.player[0] + dr, self.player[1] + dc)
            if nxt in self.open_squares:  # a wall leaves the player where it was
                self.player = nxt
        success = self.player == self.goal
        if success:
            reward += self.goal_reward
        info = {"success": success, "actions": [action] if action else [], "format_error": error}
        return self.observation(), reward, success or self.steps >= self.max_steps, info

    def solution(self) -> list[str]:
        """The shortest moves from here to the goal (for tests and a scripted baseline)."""
        dist = distances(self.open_squares, self.goal)
        pos, moves = self.player, []
        while pos != self.goal:
            name, pos = min(((n, (pos[0] + dr, pos[1] + dc)) for n, (dr, dc) in MOVES.items()),
                            key=lambda m: dist.get(m[1], 1 << 30))  # fmt: skip
            moves.append(name)
        return moves
