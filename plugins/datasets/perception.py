"""Generated perception questions a tiny VL model can learn on CPU in minutes.

``perce_reason``'s counting, bar and table questions need more vision than the tiny model has (a
probe left them at their answer priors after 1500 sft steps), so these keep one fact per picture,
big flat shapes on white, and pictures drawn at the 112x112 the quickstarts feed the model (no
resampling blur). The answer is in the picture only: the question's text is the same for every
sample of a task, so a model that does better than the answer prior is reading the image.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SIZE = 112
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 60), "yellow": (230, 190, 20)}
QUESTIONS = {
    "bigger": "Which of the two shapes, A or B, is bigger? Answer with its letter.",
    "count": "How many shapes are in the picture? Answer with a number.",
    "colour": "What colour is the shape? Answer 1 for red, 2 for blue, 3 for green, 4 for yellow.",
}


def _shape(d: ImageDraw.ImageDraw, rng: random.Random, box: list[float], colour: tuple[int, int, int]) -> None:
    (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)


def _bigger(rng: random.Random) -> tuple[Image.Image, str]:
    """Two shapes side by side, one at least 1.5x the other's width, colours and kinds drawn at random."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    small = rng.randint(6, 14)
    big = rng.randint(max(small * 3 // 2, small + 5), 26)
    ra, rb = (big, small) if rng.random() < 0.5 else (small, big)
    for cx, r in ((28, ra), (84, rb)):
        cy = rng.randint(30, 70)
        _shape(d, rng, [cx - r, cy - r, cx + r, cy + r], COLOURS[rng.choice(sorted(COLOURS))])
    d.text((25, 98), "A", fill="black")
    d.text((81, 98), "B", fill="black")
    return img, "A" if ra > rb else "B"


def _count(rng: random.Random, max_count: int = 3) -> tuple[Image.Image, str]:
    """1..max_count shapes of one colour on a 3x3 grid of cells (never touching), placed at random in their cells."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    k = rng.randint(1, max_count)
    colour = COLOURS[rng.choice(sorted(COLOURS))]
    for cell in rng.sample(range(9), k):
        x0, y0 = (cell % 3) * 37 + rng.randint(2, 9), (cell // 3) * 37 + rng.randint(2, 9)
        _shape(d, rng, [x0, y0, x0 + 24, y0 + 24], colour)
    return img, str(k)


def _colour(rng: random.Random) -> tuple[Image.Image, str]:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    name = rng.choice(sorted(COLOURS))
    r = rng.randint(22, 40)  # big: the colour reaches most of the 16 image tokens
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    _shape(d, rng, [cx - r, cy - r, cx + r, cy + r], COLOURS[name])
    return img, str(1 + list(COLOURS).index(name))  # a digit: math-verify checks it in a millisecond, a word in 0.1 s


MAKERS = {"bigger": _bigger, "count": _count, "colour": _colour}


def make(out_dir: str | Path, n: int, seed: int = 0, task: str = "colour", max_count: int = 3) -> Path:
    """Write ``n`` questions to ``out_dir/data.jsonl`` and ``out_dir/images/``; same seed, same files."""
    if task not in MAKERS:
        raise ValueError(f"perception: unknown task {task!r}; use one of {', '.join(MAKERS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"perception-{task}-{seed}")
    tmp = out / ".data.jsonl.tmp"
    with open(tmp, "w") as f:
        for i in range(n):
            img, answer = _count(rng, max_count) if task == "count" else MAKERS[task](rng)
            rel = f"images/{task}-{seed}-{i:05d}.png"
            img.save(out / rel)
            rec: dict[str, Any] = {"id": f"perception-{task}-{seed}-{i}", "prompt": QUESTIONS[task],
                                   "images": [rel], "answer": answer, "category": task}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
    tmp.replace(out / "data.jsonl")
    return out / "data.jsonl"


def perception(n: int = 100, seed: int = 0, task: str = "colour", max_count: int = 3, dir: str | None = None,
               limit: int | None = None):  # fmt: skip
    """Generated perception questions (``task``: colour, count, bigger), written once to ``dir`` (default
    ``runs/data/perception-<task>-n<N>-s<seed>``) and read back through the ``jsonl`` loader, as a file would be."""
    from lmmr1_plugins.datasets.files import jsonl

    suffix = f"-max{max_count}" if task == "count" else ""
    out = Path(dir or f"runs/data/perception-{task}{suffix}-n{n}-s{seed}")
    if not (out / "data.jsonl").exists():  # written aside and renamed: runs started together never see half a set
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        make(tmp, n, seed, task, max_count)
        try:
            os.replace(tmp, out)
        except OSError:  # another run wrote the same set first
            shutil.rmtree(tmp, ignore_errors=True)
    return jsonl(str(out / "data.jsonl"), limit=limit)


perception.make = lambda out_dir, n, seed=0: make(out_dir, n, seed)  # `lmmr1 data make perception DIR`
