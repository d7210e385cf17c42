"""The benchmarks LMM-R1 reports on, read in their published record layouts.

Each loader takes ``path``: a .jsonl/.json/.parquet file or a ``save_to_disk`` directory of the
benchmark as distributed (images as paths relative to the file, or embedded bytes in
``decoded_image``/``image`` columns). Multiple-choice answers become option letters or texts that
``choice_accuracy`` / ``geometry_answer`` check against the options kept in the sample.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmmr1_plugins.datasets.files import record_to_sample

from lmmr1_core import Sample
from lmmr1_core.errors import DataError

LETTERS = "ABCDEFGH"


def read_records(path: str, split: str = "test") -> Iterator[tuple[str, dict]]:
    import datasets

    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    elif not p.is_file():
        raise DataError(f"{path}: no such benchmark file")
    elif p.suffix == ".json":
        data = json.loads(p.read_text())
        rows = data if isinstance(data, list) else list(data.values())  # MathVista ships {pid: record}
        yield from ((f"{path}[{i}]", r) for i, r in enumerate(rows))
        return
    else:
        kind = {".jsonl": "json", ".parquet": "parquet"}.get(p.suffix)
        if kind is None:
            raise DataError(f"{path}: expected .jsonl, .json, .parquet or a saved dataset directory")
        ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    yield from ((f"{path}[{i}]", r) for i, r in enumerate(ds))


def _image(rec: dict, *keys: str) -> list:
    for k in keys:
        v = rec.get(k)
        if v is not None and v != "":
            return [v]
    return []


def _with_options(question: str, options: list[str]) -> str:
    return question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)) if options else question


def mathvista(rec: dict, i: int) -> dict:
    meta = rec.get("metadata") or {}
    return {"id": rec.get("pid", i), "prompt": rec.get("query") or rec["question"], "answer": rec["answer"],
            "images": _image(rec, "decoded_image", "image"), "options": rec.get("choices") or None,
            "category": meta.get("task") or meta.get("category"), "question_type": rec.get("question_type"),
            "unit": rec.get("unit"), "precision": rec.get("precision")}  # fmt: skip


def mathverse(rec: dict, i: int) -> dict:
    meta = rec.get("metadata") or {}
    return {"id": rec.get("sample_index", i), "prompt": rec.get("query_cot") or rec["question"],
            "answer": rec["answer"], "images": _image(rec, "image"), "category": rec.get("problem_version"),
            "subject": meta.get("subject"), "question_type": rec.get("question_type")}  # fmt: skip


def mathvision(rec: dict, i: int) -> dict:
    options = list(rec.get("options") or [])
    return {"id": rec.get("id", i), "prompt": _with_options(rec["question"], options), "answer": rec["answer"],
            "images": _image(rec, "decoded_image", "image"), "options": options or None,
            "category": rec.get("subject"), "level": rec.get("level")}  # fmt: skip


def mmstar(rec: dict, i: int) -> dict:
    return {"id": rec.get("index", i), "prompt": rec["question"], "answer": rec["answer"],
            "images": _image(rec, "image"), "category": rec.get("category"),
            "l2_category": rec.get("l2_category")}  # fmt: skip


def math500(rec: dict, i: int) -> dict:
    return {"id": rec.get("unique_id", i), "prompt": rec["problem"], "answer": rec["answer"],
            "category": rec.get("subject"), "level": rec.get("level")}  # fmt: skip


def gpqa_diamond(rec: dict, i: int) -> dict:
    """Options shuffled with a per-question seed (the file keeps the correct one first)."""
    options = [rec["Correct Answer"]] + [rec[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
    options = [str(o).strip() for o in options]
    order = list(range(4))
    random.Random(f"gpqa-{rec.get('Record ID', i)}").shuffle(order)
    shuffled = [options[j] for j in order]
    return {"id": rec.get("Record ID", i), "prompt": _with_options(rec["Question"].strip(), shuffled),
            "answer": LETTERS[order.index(0)], "options": shuffled,
            "category": rec.get("High-level domain")}  # fmt: skip


def _loader(name: str, convert: Callable[[dict, int], dict]):
    def load(path: str, split: str = "test", limit: int | None = None) -> list[Sample]:
        base = Path(path) if Path(path).is_dir() else Path(path).parent
        samples = []
        for i, (where, rec) in enumerate(read_records(path, split)):
            if limit is not None and len(samples) >= limit:
                break
            try:
                converted = {k: v for k, v in convert(dict(rec), i).items() if v is not None}
            except KeyError as exc:
                raise DataError(f"{where}: not a {name} record: missing field {exc}") from None
            converted["id"] = str(converted["id"])
            samples.append(record_to_sample(converted, where, base))
        if not samples:
            raise DataError(f"{path}: no records")
        return samples

    load.__name__ = name
    load.__doc__ = f"The {name} benchmark in its published record layout."
    return load


LOADERS: dict[str, Any] = {
    name: _loader(name, fn)
    for name, fn in [("mathvista", mathvista), ("mathverse", mathverse), ("mathvision", mathvision),
                     ("mmstar", mmstar), ("math500", math500), ("gpqa_diamond", gpqa_diamond)]
}  # fmt: skip
