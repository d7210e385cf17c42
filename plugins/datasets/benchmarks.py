"""The benchmarks LMM-R1 reports on, read from the files their publishers ship.

Each loader takes ``path``: one data file (.parquet, .jsonl, .json, .csv, .tsv), a ``save_to_disk``
directory, or a folder downloaded from the benchmark's hub or GitHub repository (its data files name
their split: ``data/testmini-00000-of-00001.parquet``, ``test.jsonl``). ``split`` defaults to the
split the paper evaluated (:data:`SPLITS`); a split whose answers are withheld is an error, never
scored. Images come as paths (relative to the file or to the repository root), embedded bytes
(``datasets``' ``Image`` columns) or base64 (VLMEvalKit's .tsv). Multiple-choice options are kept in
the sample (``options``) wherever the benchmark puts them, so ``choice_accuracy`` /
``geometry_answer`` credit the option's letter or its text; ``meta["split"]`` names the split read.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmmr1_plugins.datasets.files import record_to_sample

from lmmr1_core import Sample
from lmmr1_core.errors import DataError

LETTERS = "ABCDEFGH"

# The split the paper evaluates comes first; the others are the ones the benchmark also publishes.
SPLITS: dict[str, tuple[str, ...]] = {
    "mathvista": ("testmini", "test"),  # test: answers withheld (dataset card)
    "mathverse": ("testmini", "testmini_text_only"),
    "mathvision": ("test", "testmini"),
    "mmstar": ("val",),
    "math500": ("test",),
    "gpqa_diamond": ("train",),  # the hub repository's only split (lm-evaluation-harness's gpqa tasks)
}
# File names (lower case, no suffix) that do not start with their split's name.
FILE_SPLITS: dict[str, dict[str, str]] = {
    "mathvista": {"annot_testmini": "testmini"},
    "mmstar": {"mmstar": "val"},
    "gpqa_diamond": {"gpqa_diamond": "train"},
}
SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")  # preference order when a folder has several


def _stem(p: Path) -> str:
    return p.name[: -len(p.suffix)].lower().replace("-", "_") if p.suffix else p.name.lower()


def file_split(name: str, p: Path) -> str | None:
    """The split a data file holds, from its name (``testmini-00000-of-00001-x.parquet``, ``test.jsonl``)."""
    stem = _stem(p)
    if stem in FILE_SPLITS.get(name, {}):
        return FILE_SPLITS[name][stem]
    for s in sorted(SPLITS[name], key=len, reverse=True):
        if stem == s or stem.startswith(s + "_"):
            return s
    return None


def _choose(name: str, path: str, available: list[str], split: str | None) -> str:
    if split is not None:
        if split not in available:
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(available)})")
        return split
    for s in SPLITS[name]:
        if s in available:
            return s
    raise DataError(f"{path}: none of {name}'s splits ({', '.join(SPLITS[name])}) is here "
                    f"(splits: {', '.join(available)}); pass split=")  # fmt: skip


def _undecoded(ds):
    """Image columns as ``{"bytes", "path"}`` (cheap, and what ``record_to_sample`` takes), not PIL images."""
    import datasets

    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def _tsv_rows(ds) -> Iterator[dict]:
    """VLMEvalKit's .tsv: ``image`` holds base64, or the ``index`` of an earlier row with the same image."""
    by_index: dict[str, bytes] = {}
    for rec in ds:
        img = rec.get("image")
        if isinstance(img, str) and img:
            if len(img) < 64 and img in by_index:
                rec["image"] = by_index[img]
            else:
                try:
                    rec["image"] = base64.b64decode(img, validate=True)
                except (binascii.Error, ValueError):
                    pass  # a path
                else:
                    by_index[str(rec.get("index"))] = rec["image"]
        yield rec


def _read_files(files: list[Path]) -> Iterator[tuple[str, dict, Path]]:
    """Records of same-typed data files, each with where it came from and its file's folder."""
    import datasets

    suffix = files[0].suffix
    if suffix == ".json":
        for f in files:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{f}: invalid JSON ({exc})") from None
            rows = data if isinstance(data, list) else list(data.values())  # MathVista ships {pid: record}
            yield from ((f"{f}[{i}]", r, f.parent) for i, r in enumerate(rows))
        return
    kind, opts = {".jsonl": ("json", {}), ".parquet": ("parquet", {}), ".csv": ("csv", {}),
                  ".tsv": ("csv", {"delimiter": "\t"})}[suffix]  # fmt: skip
    for f in files:
        try:
            ds = datasets.load_dataset(kind, data_files=str(f), split="train", **opts)
        except Exception as exc:
            raise DataError(f"{f}: cannot read as {suffix[1:]} ({type(exc).__name__}: {exc})") from None
        rows = _tsv_rows(ds) if suffix == ".tsv" else _undecoded(ds)
        yield from ((f"{f}[{i}]", r, f.parent) for i, r in enumerate(rows))


def read_records(name: str, path: str, split: str | None = None) -> tuple[str, Iterator[tuple[str, dict, Path]]]:
    """(the split read, its records as (where, record, folder its relative paths start from))."""
    import datasets

    p = Path(path)
    if p.is_file():
        if p.suffix not in SUFFIXES:
            raise DataError(f"{path}: expected {', '.join(SUFFIXES)} or a dataset directory")
        held = file_split(name, p)
        if split is not None and held is not None and split != held:
            raise DataError(f"{path}: holds split {held!r}, not {split!r}")
        return held or split or SPLITS[name][0], _read_files([p])
    if not p.is_dir():
        raise DataError(f"{path}: no such benchmark file or directory")
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        try:
            ds = datasets.load_from_disk(path)
        except Exception as exc:
            raise DataError(f"{path}: not a saved dataset ({type(exc).__name__}: {exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            used = _choose(name, path, list(ds), split)
            ds = ds[used]
        else:
            held = str(ds.split) if ds.split is not None else None
            if split is not None and held is not None and split != held:
                raise DataError(f"{path}: holds split {held!r}, not {split!r}")
            used = held or split or SPLITS[name][0]
        return used, ((f"{path}[{i}]", r, p) for i, r in enumerate(_undecoded(ds)))
    # A repository snapshot (hub or GitHub): data files named by their split.
    found: dict[str, dict[str, list[Path]]] = {}
    for f in sorted(p.rglob("*")):
        if f.suffix in SUFFIXES and f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
            s = file_split(name, f)
            if s is not None:
                found.setdefault(s, {}).setdefault(f.suffix, []).append(f)
    if not found:
        raise DataError(f"{path}: no {name} data files here (expected a saved dataset, or files named by "
                        f"split such as {SPLITS[name][0]}.jsonl or data/{SPLITS[name][0]}-*.parquet)")  # fmt: skip
    used = _choose(name, path, list(found), split)
    files = next(found[used][s] for s in SUFFIXES if s in found[used])
    return used, _read_files(files)


_PLACEHOLDER = re.compile(r"[ \t]*<image\s?\d+>[ \t]*")


def strip_placeholders(text: str) -> str:
    """Drop ``<image1>``-style markers (the image goes in as an image); lines left empty go too."""
    lines = []
    for line in text.split("\n"):
        if _PLACEHOLDER.search(line):
            line = re.sub(r" {2,}", " ", _PLACEHOLDER.sub(" ", line)).strip()
            if not line:
                continue
        lines.append(line)
    return "\n".join(lines).strip()


def inline_options(text: str) -> list[str]:
    """MMStar's ``Options: A: ..., B: ..., C: ...`` (option texts may hold commas): the texts in order."""
    at = text.rfind("Options:")
    if at < 0:
        return []
    rest = text[at + len("Options:") :].strip()
    if not rest.startswith("A:"):
        return []
    starts = [0]
    for letter in LETTERS[1:]:
        m = re.search(rf",\s*{letter}:\s", rest[starts[-1] :])
        if m is None:
            break
        starts.append(starts[-1] + m.start())
    bounds = starts + [len(rest)]
    out = []
    for i in range(len(starts)):
        chunk = rest[bounds[i] : bounds[i + 1]].lstrip(", ")
        out.append(chunk[2:].strip())  # past "X:"
    return out


def _image(rec: dict, *keys: str) -> list:
    for k in keys:
        v = rec.get(k)
        if v is not None and v != "" and v != {"bytes": None, "path": None}:
            return [v]
    return []


def _with_options(question: str, options: list[str], style: str = "{letter}. {text}") -> str:
    lines = [style.format(letter=LETTERS[i], text=o) for i, o in enumerate(options)]
    return question + "\n" + "\n".join(lines) if options else question


def mathvista(rec: dict, i: int) -> dict:
    """Hub ``AI4Math/MathVista`` (dataset card features) or the repository's ``annot_testmini.json``."""
    meta = rec.get("metadata") or {}
    return {"id": rec.get("pid", i), "prompt": rec.get("query") or rec["question"], "answer": rec["answer"],
            "images": _image(rec, "decoded_image", "image"), "options": rec.get("choices") or None,
            "category": meta.get("task") or meta.get("category"), "question_type": rec.get("question_type"),
            "unit": rec.get("unit"), "precision": rec.get("precision")}  # fmt: skip


def mathverse(rec: dict, i: int) -> dict:
    """Hub ``AI4Math/MathVerse``: choices sit inside ``query_cot``, where the scorer reads them."""
    meta = rec.get("metadata") or {}
    return {"id": rec.get("sample_index", i), "prompt": rec.get("query_cot") or rec["question"],
            "answer": rec["answer"], "images": _image(rec, "image"), "category": rec.get("problem_version"),
            "subject": meta.get("subject"), "question_type": rec.get("question_type")}  # fmt: skip


def mathvision(rec: dict, i: int) -> dict:
    """MATH-V: options drawn only in the figure come as just ``A``..``E`` and get no text lines (as the
    benchmark's own evaluation prompts them); the others are listed ``(A) ...``."""
    options = [str(o) for o in rec.get("options") or []]
    in_figure = bool(options) and all(o.strip() == LETTERS[k] for k, o in enumerate(options))
    question = strip_placeholders(rec["question"])
    prompt = question if in_figure else _with_options(question, options, "({letter}) {text}")
    return {"id": rec.get("id", i), "prompt": prompt, "answer": rec["answer"],
            "images": _image(rec, "decoded_image", "image"), "options": options or None,
            "category": rec.get("subject"), "level": rec.get("level")}  # fmt: skip


def mmstar(rec: dict, i: int) -> dict:
    """MMStar: options inline in ``question`` (``Options: A: ..., B: ...``); a VLMEvalKit-style .tsv may
    give them as ``A``..``D`` columns instead."""
    question = rec["question"]
    options = inline_options(question)
    if not options:
        options = [str(rec[c]) for c in LETTERS if rec.get(c) not in (None, "") and rec[c] == rec[c]]  # not NaN
        if options:
            question += "\nOptions: " + ", ".join(f"{LETTERS[k]}: {o}" for k, o in enumerate(options))
    return {"id": rec.get("index", i), "prompt": question, "answer": rec["answer"],
            "images": _image(rec, "image"), "options": options or None, "category": rec.get("category"),
            "l2_category": rec.get("l2_category", rec.get("l2-category"))}  # fmt: skip


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


def _locate(image: Any, bases: list[Path]) -> Any:
    """A relative image path found next to the file or at the repository root (MATH-V's ``data/test.jsonl``
    names ``images/1.jpg`` at the root); left as is when none has it (the error then names the file)."""
    if not isinstance(image, str) or image.startswith("file://") or Path(image).is_absolute():
        return image
    for base in bases:
        if (base / image).exists():
            return str(base / image)
    return image


def _no_gold(answer: Any) -> bool:
    return answer is None or (isinstance(answer, str) and not answer.strip())


def _loader(name: str, convert: Callable[[dict, int], dict]):
    def load(path: str, split: str | None = None, limit: int | None = None) -> list[Sample]:
        used, records = read_records(name, path, split)
        root = Path(path) if Path(path).is_dir() else Path(path).parent
        samples, missing = [], []
        for i, (where, rec, folder) in enumerate(records):
            if limit is not None and len(samples) >= limit:
                break
            try:
                converted = convert(dict(rec), i)
            except KeyError as exc:
                raise DataError(f"{where}: not a {name} record: missing field {exc}") from None
            if _no_gold(converted.get("answer")):
                missing.append(where)
                continue
            converted = {k: v for k, v in converted.items() if v is not None}
            converted["prompt"] = strip_placeholders(str(converted["prompt"]))
            converted["images"] = [_locate(img, [folder, root, folder.parent]) for img in converted.get("images", [])]
            converted["id"] = str(converted["id"])
            converted["split"] = used
            samples.append(record_to_sample(converted, where, folder))
        if missing and not samples:
            paper = SPLITS[name][0]
            hint = f"evaluate split {paper!r}, as the paper does" if used != paper else "use a file with answers"
            raise DataError(f"{path}: split {used!r} withholds its answers (none of its {len(missing)} records "
                            f"has one); {hint}")  # fmt: skip
        if missing:
            raise DataError(f"{missing[0]}: no answer (split {used!r}; {len(missing)} such records)")
        if not samples:
            raise DataError(f"{path}: no records")
        return samples

    load.__name__ = name
    load.__doc__ = f"The {name} benchmark as published; split defaults to {SPLITS[name][0]!r}, the paper's."
    return load


LOADERS: dict[str, Any] = {
    name: _loader(name, fn)
    for name, fn in [("mathvista", mathvista), ("mathverse", mathverse), ("mathvision", mathvision),
                     ("mmstar", mmstar), ("math500", math500), ("gpqa_diamond", gpqa_diamond)]
}  # fmt: skip
