"""Bar-chart QA, a data domain: a seeded generator of bar-chart figures with questions, and a verifier.

``make`` writes PNG figures and a ``data.jsonl`` of ``prompt`` + ``images`` + ``answer`` records, the
layout lmmr1's ``jsonl`` loader reads, so real chart data in the same layout needs no code at all.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from PIL import Image, ImageDraw

from lmmr1_core import load_dataset

LABELS = "ABCDE"
COLOURS = [(220, 60, 60), (60, 110, 220), (40, 160, 80), (230, 170, 30), (140, 80, 200)]
FORMAT = " Think inside <think> </think>, then give the final answer inside <answer> </answer>."


def draw_chart(values: list[int]) -> Image.Image:
    """Bars labelled A, B, ... on a 0-10 grid, 112x112 pixels."""
    img = Image.new("RGB", (112, 112), "white")
    d = ImageDraw.Draw(img)
    for v in range(0, 11, 2):  # grid lines every 2 units, 9 pixels a unit
        y = 100 - 9 * v
        d.line([14, y, 110, y], fill=(225, 225, 225))
        d.text((1, y - 5), str(v), fill="black")
    for i, v in enumerate(values):
        x = 18 + i * 18
        d.rectangle([x, 100 - 9 * v, x + 12, 100], fill=COLOURS[i])
        d.text((x + 3, 101), LABELS[i], fill="black")
    return img


def make_problem(rng: random.Random) -> tuple[Image.Image, str, str, str]:
    """(figure, question, answer, category)."""
    n = rng.randint(3, 5)
    values = rng.sample(range(1, 11), n)  # distinct, so "the tallest" is one bar
    kind = rng.choice(["value", "tallest", "difference"])
    if kind == "value":
        i = rng.randrange(n)
        question, answer = f"What is the value of bar {LABELS[i]}?", str(values[i])
    elif kind == "tallest":
        question, answer = "Which bar is the tallest? Answer with its letter.", LABELS[values.index(max(values))]
    else:
        i, j = rng.sample(range(n), 2)
        question, answer = f"What is bar {LABELS[i]}'s value minus bar {LABELS[j]}'s?", str(values[i] - values[j])
    return draw_chart(values), question + FORMAT, answer, kind


def make(out_dir: str | Path, n: int = 100, seed: int = 0) -> Path:
    """Write ``n`` problems (``images/*.png`` + ``data.jsonl``) to ``out_dir``; same seed, same problems."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"bar-charts-{seed}")
    tmp = out / "data.jsonl.tmp"
    with open(tmp, "w") as f:
        for i in range(n):
            img, question, answer, kind = make_problem(rng)
            rel = f"images/chart-{seed}-{i:05d}.png"
            img.save(out / rel)
            record = {"id": f"chart-{seed}-{i}", "prompt": question, "images": [rel], "answer": answer}
            f.write(json.dumps({**record, "category": kind}) + "\n")
    tmp.replace(out / "data.jsonl")  # a complete file or none: an interrupted run regenerates
    return out / "data.jsonl"


def bar_charts(n: int = 64, seed: int = 0, dir: str | None = None, limit: int | None = None):
    """Generated bar-chart problems, written once to ``dir`` and read back by the ``jsonl`` loader."""
    out = Path(dir or f"runs/data/bar_charts-n{n}-s{seed}")
    if not (out / "data.jsonl").exists():
        make(out, n, seed)
    return load_dataset("jsonl", path=str(out / "data.jsonl"), limit=limit)


bar_charts.make = make  # `lmmr1 data make bar_charts DIR --n N --seed S` calls it

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _normalise(text: str) -> str:
    text = text.strip().strip(".").strip()
    if _NUMBER.fullmatch(text):
        return str(float(text))  # "7", "7.0" and "+7" are one value
    return text.upper()


def chart_answer(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the last ``<answer>`` holds the gold (a number by value, a letter in any case), else 0.0;
    None for a row without a gold answer (not applicable, left out of the mean)."""
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            scores.append(None)
            continue
        found = _ANSWER.findall(completion if isinstance(completion, str) else "")
        scores.append(float(bool(found) and _normalise(found[-1][:100]) == _normalise(str(gold))))
    return scores
