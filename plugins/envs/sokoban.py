"""Sokoban: procedurally generated, always-solvable rooms; image + text observations; a BFS solver.

Levels are generated the gym-sokoban way (a random-walk room topology, then reverse play from the
solved state, keeping the most scrambled state), with our own seeded generator: ``gym-sokoban``
needs the old gym API, seeds through Python's global ``random`` and takes seconds per room.
Reverse play only makes moves whose forward inverses are legal, so every level is solvable.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import InitVar, dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from lmmr1_core import Observation

Pos = tuple[int, int]  # (row, col)
MOVES: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
# The text grid the model reads (one row per line).
SYMBOLS = {"wall": "#", "floor": "_", "target": "O", "box": "X", "box_on_target": "√", "player": "P",
           "player_on_target": "S"}  # fmt: skip
XSB = {"#": "wall", " ": "floor", "-": "floor", "_": "floor", ".": "target", "$": "box", "*": "box_on_target",
       "@": "player", "+": "player_on_target"}  # fmt: skip


@dataclass
class Level:
    """A board: walls, targets, boxes and the player. Cells outside ``walls`` are floor."""

    height: int
    width: int
    walls: frozenset[Pos]
    targets: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos
    title: str = ""

    def grid(self) -> str:
        rows = []
        for r in range(self.height):
            row = []
            for c in range(self.width):
                p = (r, c)
                if p in self.walls:
                    row.append(SYMBOLS["wall"])
                elif p == self.player:
                    row.append(SYMBOLS["player_on_target" if p in self.targets else "player"])
                elif p in self.boxes:
                    row.append(SYMBOLS["box_on_target" if p in self.targets else "box"])
                elif p in self.targets:
                    row.append(SYMBOLS["target"])
                else:
                    row.append(SYMBOLS["floor"])
            rows.append("".join(row))
        return "\n".join(rows)

    def xsb(self) -> str:
        inverse = {"wall": "#", "floor": " ", "target": ".", "box": "$", "box_on_target": "*", "player": "@",
                   "player_on_target": "+"}  # fmt: skip
        back = {v: inverse[k] for k, v in SYMBOLS.items()}
        return "\n".join("".join(back[ch] for ch in row) for row in self.grid().splitlines())

    def solved(self) -> bool:
        return self.boxes <= self.targets


def parse_xsb(text: str) -> list[Level]:
    """Levels in the standard XSB format; blank lines separate levels, ``;`` lines are comments.

    A comment (or ``Title:`` line) right under a level's rows names it; otherwise the last comment
    before the rows does."""
    levels: list[Level] = []
    block: list[str] = []
    title = ""

    def flush() -> None:
        nonlocal block, title
        if block:
            levels.append(_level_from_rows(block, title or f"level {len(levels) + 1}"))
        block, title = [], ""

    for raw in text.splitlines():
        line = raw.rstrip("\n\r")
        stripped = line.strip()
        if stripped.startswith(";") or stripped.lower().startswith("title:"):
            name = stripped.lstrip(";").strip()
            name = name[6:].strip() if name.lower().startswith("title:") else name
            if block:  # a comment right under a level names it (the usual place for titles)
                title = name or title
                flush()
            elif name:
                title = name
            continue
        if not stripped:
            flush()
            continue
        if set(line) - set(XSB):
            raise ValueError(f"not an XSB level line: {line!r}")
        block.append(line)
    flush()
    return levels


def _level_from_rows(rows: list[str], title: str) -> Level:
    walls, targets, boxes, player = set(), set(), set(), None
    width = max(len(r) for r in rows)
    for r, row in enumerate(rows):
        for c, ch in enumerate(row.ljust(width)):
            kind = XSB[ch]
            if kind == "wall":
                walls.add((r, c))
            if kind in ("target", "box_on_target", "player_on_target"):
                targets.add((r, c))
            if kind in ("box", "box_on_target"):
                boxes.add((r, c))
            if kind in ("player", "player_on_target"):
                if player is not None:
                    raise ValueError(f"level {title!r} has two players")
                player = (r, c)
    if player is None:
        raise ValueError(f"level {title!r} has no player")
    if len(boxes) != len(targets):
        raise ValueError(f"level {title!r} has {len(boxes)} boxes but {len(targets)} targets")
    return Level(len(rows), width, frozenset(walls), frozenset(targets), frozenset(boxes), player, title)


# -- generation ----------------------------------------------------------------------------------


def _room_topology(rng: random.Random, h: int, w: int, walk_steps: int) -> set[Pos]:
    """Floor cells carved by a random walk of 3x3-ish strokes inside a walled room."""
    floor: set[Pos] = set()
    r, c = rng.randint(1, h - 2), rng.randint(1, w - 2)
    for _ in range(walk_steps):
        floor.add((r, c))
        if rng.random() < 0.5:  # widen the corridor now and then
            for dr, dc in MOVES.values():
                if 1 <= r + dr <= h - 2 and 1 <= c + dc <= w - 2:
                    floor.add((r + dr, c + dc))
        dr, dc = rng.choice(list(MOVES.values()))
        if 1 <= r + dr <= h - 2 and 1 <= c + dc <= w - 2:
            r, c = r + dr, c + dc
    return floor


def _reverse_play(rng: random.Random, floor: set[Pos], boxes: set[Pos], player: Pos, steps: int):
    """Random reverse moves (pulls) from the solved state; returns the most scrambled state seen."""
    best = (0, frozenset(boxes), player)
    start = frozenset(boxes)
    moved_from: dict[Pos, Pos] = {b: b for b in boxes}  # current box -> its target
    for _ in range(steps):
        dr, dc = rng.choice(list(MOVES.values()))
        nxt = (player[0] + dr, player[1] + dc)
        if nxt not in floor or nxt in boxes:
            continue
        behind = (player[0] - dr, player[1] - dc)
        if behind in boxes and rng.random() < 0.7:  # pull the box behind us along
            boxes.remove(behind)
            boxes.add(player)
            moved_from[player] = moved_from.pop(behind)
        player = nxt
        off = [b for b in boxes if b not in start]
        score = len(off) * sum(abs(b[0] - moved_from[b][0]) + abs(b[1] - moved_from[b][1]) for b in boxes)
        if score > best[0]:
            best = (score, frozenset(boxes), player)
    return best


def generate_level(seed: int, dim: tuple[int, int] = (6, 6), num_boxes: int = 1, tries: int = 200) -> Level:
    """A solvable level, the same for the same arguments on any machine."""
    rng = random.Random(f"sokoban-{dim[0]}x{dim[1]}-{num_boxes}-{seed}")
    h, w = dim
    for _ in range(tries):
        floor = _room_topology(rng, h, w, walk_steps=3 * (h + w))
        if len(floor) < num_boxes + 3:
            continue
        cells = sorted(floor)
        rng.shuffle(cells)
        targets, player = set(cells[:num_boxes]), cells[num_boxes]
        score, boxes, player = _reverse_play(rng, floor, set(targets), player, steps=300)
        if score <= 0 or set(boxes) <= targets:
            continue
        walls = frozenset((r, c) for r in range(h) for c in range(w) if (r, c) not in floor)
        return Level(h, w, walls, frozenset(targets), frozenset(boxes), player, title=f"generated {seed}")
    raise RuntimeError(f"could not generate a {h}x{w} level with {num_boxes} boxes in {tries} tries")


# -- solver --------------------------------------------------------------------------------------


def solve(level: Level, max_states: int = 200_000) -> list[str] | None:
    """Shortest action sequence (BFS over player+box states), or None (unsolvable within the budget)."""
    start = (level.player, level.boxes)
    parents: dict[Any, Any] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, boxes = state
        if boxes <= level.targets:
            plan = []
            while parents[state] is not None:
                state, action = parents[state]
                plan.append(action)
            return plan[::-1]
        for name, (dr, dc) in MOVES.items():
            nxt = (player[0] + dr, player[1] + dc)
            if nxt in level.walls:
                continue
            new_boxes = boxes
            if nxt in boxes:
                beyond = (nxt[0] + dr, nxt[1] + dc)
                if beyond in level.walls or beyond in boxes:
                    continue
                new_boxes = (boxes - {nxt}) | {beyond}
            child = (nxt, new_boxes)
            if child not in parents:
                if len(parents) >= max_states:
                    return None
                parents[child] = (state, name)
                queue.append(child)
    return None


# -- the environment -----------------------------------------------------------------------------

TILE = 32
_COLOURS = {"wall": (110, 60, 40), "floor": (235, 230, 215), "target": (220, 40, 40), "box": (190, 130, 50),
            "box_on_target": (40, 170, 70), "player": (40, 90, 220)}  # fmt: skip
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def render(level: Level) -> Image.Image:
    img = Image.new("RGB", (level.width * TILE, level.height * TILE), _COLOURS["floor"])
    d = ImageDraw.Draw(img)
    for r in range(level.height):
        for c in range(level.width):
            x, y, p = c * TILE, r * TILE, (r, c)
            if p in level.walls:
                d.rectangle([x, y, x + TILE - 1, y + TILE - 1], fill=_COLOURS["wall"])
                d.line([x, y + TILE // 2, x + TILE, y + TILE // 2], fill=(80, 40, 25))
                continue
            d.rectangle([x, y, x + TILE - 1, y + TILE - 1], outline=(215, 210, 195))
            if p in level.targets:
                d.ellipse([x + 9, y + 9, x + TILE - 10, y + TILE - 10], outline=_COLOURS["target"], width=3)
            if p in level.boxes:
                colour = _COLOURS["box_on_target" if p in level.targets else "box"]
                d.rectangle([x + 4, y + 4, x + TILE - 5, y + TILE - 5], fill=colour, outline=(60, 40, 20), width=2)
                d.line([x + 4, y + 4, x + TILE - 5, y + TILE - 5], fill=(60, 40, 20), width=2)
                d.line([x + 4, y + TILE - 5, x + TILE - 5, y + 4], fill=(60, 40, 20), width=2)
            if p == level.player:
                d.ellipse([x + 6, y + 6, x + TILE - 7, y + TILE - 7], fill=_COLOURS["player"])
    return img


def parse_actions(text: str, max_actions: int, separator: str = "||") -> tuple[list[str], str | None]:
    """Actions inside the last ``<answer>``; ``(actions, None)`` or ``([], reason)``."""
    found = _ANSWER.findall(text or "")
    if not found:
        return [], "no <answer>...</answer>"
    parts = [p.strip().lower() for p in re.split(re.escape(separator) if separator else r"[,\s]+", found[-1])]
    parts = [p for p in parts if p]
    if not parts:
        return [], "empty answer"
    bad = [p for p in parts if p not in MOVES]
    if bad:
        return [], f"not an action: {bad[0][:40]!r} (use Up, Down, Left, Right)"
    if len(parts) > max_actions:
        return [], f"{len(parts)} actions in one turn; at most {max_actions}"
    return parts, None


@dataclass
class SokobanEnv:
    """``reset(seed) -> Observation``; ``step(response_text) -> (Observation, reward, done, info)``."""

    dim: tuple[int, int] = (6, 6)
    num_boxes: int = 1
    max_steps: int = 100
    actions_per_turn: int = 1
    separator: str = "||"
    step_reward: float = -0.1
    box_on_reward: float = 1.0
    box_off_reward: float = -1.0
    solved_reward: float = 10.0
    format_penalty: float = -0.1
    images: bool = True  # False: the text grid only, for text models
    levels: list[Level] | None = None  # from an XSB file; otherwise generated per seed
    levels_file: InitVar[str | None] = None  # an XSB file to read ``levels`` from
    level: Level = field(init=False, default=None)
    steps: int = field(init=False, default=0)

    def __post_init__(self, levels_file: str | None) -> None:
        self.dim = tuple(self.dim)  # a stage file gives a list
        if levels_file is not None:
            with open(levels_file) as f:
                self.levels = parse_xsb(f.read())

    def reset(self, seed: int = 0) -> Observation:
        if self.levels:
            self.level = self.levels[seed % len(self.levels)]
        else:
            self.level = generate_level(seed, tuple(self.dim), self.num_boxes)
        self.steps = 0
        return self.observation()

    def observation(self) -> Observation:
        return Observation(text=self.level.grid(), images=[render(self.level)] if self.images else [])

    def move(self, action: str) -> float:
        """One action; returns its reward. Walls and blocked boxes leave the board unchanged."""
        lv = self.level
        dr, dc = MOVES[action]
        nxt = (lv.player[0] + dr, lv.player[1] + dc)
        reward = self.step_reward
        self.steps += 1
        if nxt in lv.walls:
            return reward
        boxes = lv.boxes
        if nxt in boxes:
            beyond = (nxt[0] + dr, nxt[1] + dc)
            if beyond in lv.walls or beyond in boxes:
                return reward
            boxes = (boxes - {nxt}) | {beyond}
            was_on, now_on = nxt in lv.targets, beyond in lv.targets
            if now_on and not was_on:
                reward += self.box_on_reward
            elif was_on and not now_on:
                reward += self.box_off_reward
        self.level = Level(lv.height, lv.width, lv.walls, lv.targets, frozenset(boxes), nxt, lv.title)
        if self.level.solved():
            reward += self.solved_reward
        return reward

    def step(self, response_text: str) -> tuple[Observation, float, bool, dict[str, Any]]:
        actions, error = parse_actions(response_text, self.actions_per_turn, self.separator)
        info: dict[str, Any] = {"actions": actions, "format_error": error}
        reward = 0.0
        if error:
            reward = self.format_penalty
            self.steps += 1
        for action in actions:
            reward += self.move(action)
            if self.level.solved() or self.steps >= self.max_steps:
                break
        info["success"] = self.level.solved()
        info["boxes_on_target"] = len(self.level.boxes & self.level.targets)
        done = info["success"] or self.steps >= self.max_steps
        return self.observation(), reward, done, info
