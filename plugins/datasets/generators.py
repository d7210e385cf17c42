"""Offline, seeded generators of MGT-style data: PNG figures + a jsonl of questions with exact answers.

Stand-ins for the public Geo and PerceReason sets (which cannot be downloaded here), written in
the same record layouts the real files use, so the same loading code reads both. Same seed, same
files (up to the PNG encoder).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = 224
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 60), "yellow": (230, 190, 20)}


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw, Any]:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    return img, ImageDraw.Draw(img), ImageFont.load_default()


def _sqrt_latex(n: int) -> str:
    """Exact LaTeX for sqrt(n): 5, 2\\sqrt{3}, \\sqrt{34}."""
    outside, inside = 1, n
    for k in range(int(math.isqrt(n)), 1, -1):
        if inside % (k * k) == 0:
            outside, inside = k, inside // (k * k)
            break
    if inside == 1:
        return str(outside)
    return f"{outside if outside > 1 else ''}\\sqrt{{{inside}}}"


def _choices(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], str]:
    opts = [right] + [w for w in dict.fromkeys(wrong) if w != right][:3]
    rng.shuffle(opts)
    return opts, "ABCD"[opts.index(right)]


def _geo_right_triangle(rng: random.Random):
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    img, d, font = _canvas()
    s = 150 / max(a, b)
    A, B, C = (30, 190), (30, 190 - b * s), (30 + a * s, 190)
    d.polygon([A, B, C], outline="black", width=2)
    d.rectangle([A[0], A[1] - 12, A[0] + 12, A[1]], outline="black")
    d.text(((A[0] + C[0]) / 2, A[1] + 6), str(a), fill="black", font=font)
    d.text((A[0] - 18, (A[1] + B[1]) / 2), str(b), fill="black", font=font)
    for name, p, off in (("A", A, (-14, 2)), ("B", B, (-14, -12)), ("C", C, (4, 2))):
        d.text((p[0] + off[0], p[1] + off[1]), name, fill="black", font=font)
    q = f"In the right triangle ABC, the right angle is at A, AC = {a} and AB = {b}. Find the length of BC."
    return img, q, _sqrt_latex(a * a + b * b), None


def _geo_triangle_angle(rng: random.Random):
    x, y = rng.randint(25, 80), rng.randint(25, 80)
    img, d, font = _canvas()
    A, B, C = (30, 190), (190, 190), (rng.randint(70, 150), 40)
    d.polygon([A, B, C], outline="black", width=2)
    d.text((A[0] + 14, A[1] - 16), f"{x}°", fill="black", font=font)
    d.text((B[0] - 34, B[1] - 16), f"{y}°", fill="black", font=font)
    d.text((C[0] - 4, C[1] + 14), "?", fill="black", font=font)
    q = f"Two angles of the triangle are {x}° and {y}° as marked. Find the angle marked ? in degrees."
    return img, q, f"{180 - x - y}^\\circ", None


def _geo_circle(rng: random.Random):
    r = rng.randint(2, 9)
    img, d, font = _canvas()
    c, R = (112, 112), 80
    d.ellipse([c[0] - R, c[1] - R, c[0] + R, c[1] + R], outline="black", width=2)
    d.line([c, (c[0] + R, c[1])], fill="black", width=2)
    d.ellipse([c[0] - 3, c[1] - 3, c[0] + 3, c[1] + 3], fill="black")
    d.text((c[0] + R / 2 - 4, c[1] - 16), f"r={r}", fill="black", font=font)
    if rng.random() < 0.5:
        return img, "Find the area of the circle.", f"{r * r}\\pi", None
    return img, "Find the circumference of the circle.", f"{2 * r}\\pi", None


def _geo_parallel(rng: random.Random):
    x = rng.randint(35, 145)
    img, d, font = _canvas()
    d.line([(10, 70), (214, 70)], fill="black", width=2)
    d.line([(10, 160), (214, 160)], fill="black", width=2)
    d.line([(60, 210), (170, 20)], fill="black", width=2)
    d.text((150, 50), f"{x}°", fill="black", font=font)
    d.text((70, 140), "y", fill="black", font=font)
    right = str(180 - x)
    opts, letter = _choices(rng, f"{right}°", [f"{x}°", f"{90 + x % 45}°", f"{abs(90 - x) + 10}°"])
    q = "The two horizontal lines are parallel, cut by a transversal. Find y.\n" + "\n".join(
        f"{k}. {v}" for k, v in zip("ABCD", opts)
    )
    return img, q, letter, opts


def _pr_count(rng: random.Random):
    img, d, font = _canvas()
    counts = {c: rng.randint(1, 5) for c in rng.sample(sorted(COLOURS), 2)}
    boxes: list[tuple[int, int]] = []
    for colour, k in counts.items():
        for _ in range(k):
            while True:
                x, y = rng.randint(10, SIZE - 40), rng.randint(10, SIZE - 40)
                if all(abs(x - bx) > 32 or abs(y - by) > 32 for bx, by in boxes):
                    break
            boxes.append((x, y))
            shape = d.ellipse if rng.random() < 0.5 else d.rectangle
            shape([x, y, x + 26, y + 26], fill=COLOURS[colour])
    (c1, n1), (c2, n2) = sorted(counts.items(), key=lambda kv: -kv[1])
    q = f"Count the {c1} shapes and the {c2} shapes. How many more {c1} shapes than {c2} shapes are there?"
    return img, q, str(n1 - n2), None


def _pr_bars(rng: random.Random):
    img, d, font = _canvas()
    labels = ["A", "B", "C", "D"]
    values = [rng.randint(1, 9) for _ in labels]
    for i, (lab, v) in enumerate(zip(labels, values)):
        x = 25 + i * 48
        d.rectangle([x, 200 - v * 18, x + 30, 200], fill=COLOURS["blue"])
        d.text((x + 11, 204), lab, fill="black", font=font)
        d.text((x + 11, 200 - v * 18 - 12), str(v), fill="black", font=font)
    d.line([(15, 200), (215, 200)], fill="black")
    q = "Read the bar chart. What is the difference between the tallest and the shortest bar?"
    return img, q, str(max(values) - min(values)), None


def _pr_table(rng: random.Random):
    img, d, font = _canvas()
    items = rng.sample(["pen", "book", "cup", "hat", "bag"], 3)
    prices = [rng.randint(2, 20) for _ in items]
    d.rectangle([20, 30, 204, 150], outline="black")
    d.text((30, 38), "item", fill="black", font=font)
    d.text((130, 38), "price", fill="black", font=font)
    for i, (it, p) in enumerate(zip(items, prices)):
        d.line([(20, 60 + i * 30), (204, 60 + i * 30)], fill="black")
        d.text((30, 68 + i * 30), it, fill="black", font=font)
        d.text((130, 68 + i * 30), f"${p}", fill="black", font=font)
    a, b = rng.sample(range(3), 2)
    q = f"Using the price table, how much do one {items[a]} and two {items[b]}s cost together, in dollars?"
    return img, q, str(prices[a] + 2 * prices[b]), None


def _pr_sizes(rng: random.Random):
    img, d, font = _canvas()
    ra, rb = rng.sample(range(12, 60, 6), 2)
    d.ellipse([60 - ra, 112 - ra, 60 + ra, 112 + ra], fill=COLOURS["green"])
    d.ellipse([165 - rb, 112 - rb, 165 + rb, 112 + rb], fill=COLOURS["yellow"])
    d.text((56, 180), "A", fill="black", font=font)
    d.text((161, 180), "B", fill="black", font=font)
    q = "Which of the two circles, A or B, has the larger area? Answer with its letter."
    return img, q, "A" if ra > rb else "B", None


GEOMETRY = [_geo_right_triangle, _geo_triangle_angle, _geo_circle, _geo_parallel]
PERCE_REASON = [_pr_count, _pr_bars, _pr_table, _pr_sizes]


def make(kind: str, out_dir: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` problems to ``out_dir/data.jsonl`` and ``out_dir/images/``; returns the jsonl path.

    Geometry is written as LMM-R1 records (a ``message`` JSON string with ``file://`` images);
    PerceReason as ``prompt`` + ``images`` records, so both layouts are exercised.
    """
    makers = {"geometry": GEOMETRY, "perce_reason": PERCE_REASON}[kind]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{kind}-{seed}")
    tmp = out / ".data.jsonl.tmp"
    with open(tmp, "w") as f:
        for i in range(n):
            maker = makers[i % len(makers)]
            img, question, answer, options = maker(rng)
            rel = f"images/{kind}-{seed}-{i:05d}.png"
            img.save(out / rel)
            rec: dict[str, Any] = {
                "id": f"{kind}-{seed}-{i}",
                "answer": answer,
                "category": maker.__name__.split("_", 2)[2],
            }
            if options:
                rec["options"] = options
            if kind == "geometry":
                content = [{"type": "image", "image": f"file://{rel}"}, {"type": "text", "text": question}]
                rec["message"] = json.dumps([{"role": "user", "content": content}])
            else:
                rec["prompt"], rec["images"] = question, [rel]
            f.write(json.dumps(rec) + "\n")
    tmp.replace(out / "data.jsonl")
    return out / "data.jsonl"


def _loader(kind: str):
    def load(n: int = 100, seed: int = 0, dir: str | None = None, limit: int | None = None):
        """Generated problems, written once to ``dir`` (default ``runs/data/<kind>-n<N>-s<seed>``) and
        read back through the ``jsonl`` loader, as a real data file would be."""
        from lmmr1_plugins.datasets.files import jsonl

        out = Path(dir or f"runs/data/{kind}-n{n}-s{seed}")
        if not (out / "data.jsonl").exists():
            make(kind, out, n, seed)
        return jsonl(str(out / "data.jsonl"), limit=limit)

    load.__name__ = kind
    load.make = lambda out_dir, n, seed=0: make(kind, out_dir, n, seed)  # used by `lmmr1 data make`
    return load


geometry = _loader("geometry")
perce_reason = _loader("perce_reason")
