"""Local data files and saved/hub datasets. Errors name the file and line, because that is what the user can fix.

Records may use our fields (``messages`` or ``prompt``, ``answer``, ``images``) or LMM-R1's /
OpenRLHF's: a ``message`` field holding a JSON string of chat messages whose content items are
``{"type": "image", "image": path}`` and ``{"type": "text", "text": ...}``. Image paths may be
absolute, relative to the data file, or ``file://`` URIs; parquet files may embed image bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmmr1_core import Sample
from lmmr1_core.errors import DataError


def _resolve_image(image: Any, base: Path) -> Any:
    """A path string resolved against the data file; bytes, dicts of bytes and PIL images kept."""
    if isinstance(image, dict):  # datasets' Image feature undecoded: {"bytes": ..., "path": ...}
        if image.get("bytes"):
            return image["bytes"]
        image = image.get("path")
    if not isinstance(image, str):
        return image
    raw = image[len("file://") :] if image.startswith("file://") else image
    p = Path(raw)
    return str(p if p.is_absolute() else base / p)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def record_to_sample(
    rec: dict[str, Any],
    where: str,
    base: Path,
    messages_key: str = "messages",
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    images_key: str = "images",
    id_key: str = "id",
    check_images: bool = True,
) -> Sample:
    """One record -> Sample; images resolved and collected in order; every other column kept in meta."""
    rec = {k: v for k, v in rec.items() if v is not None}
    if answer_key not in rec:
        raise DataError(f"{where}: missing field {answer_key!r} (fields: {', '.join(sorted(rec))})")
    if messages_key not in rec and messages_key == "messages" and "message" in rec:
        messages_key = "message"  # LMM-R1 / OpenRLHF records
    images = [_resolve_image(p, base) for p in _as_list(rec.get(images_key))]
    if messages_key in rec:
        messages = rec[messages_key]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: field {messages_key!r} is not valid JSON ({exc.msg})") from None
        if isinstance(messages, dict):
            messages = [messages]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise DataError(f"{where}: field {messages_key!r} must be a list of chat messages with a 'role'")
        messages = [dict(m) for m in messages]
        inline = []
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = [dict(item) for item in m["content"]]
                for item in m["content"]:
                    if item.get("type") == "image" or "image" in item:
                        item["type"] = "image"
                        item["image"] = _resolve_image(item.get("image"), base)
                        inline.append(item["image"])
        if inline and not images:
            images = inline
    elif prompt_key in rec:
        content: Any = str(rec[prompt_key])
        if images:
            content = [{"type": "image", "image": p} for p in images] + [{"type": "text", "text": content}]
        messages = [{"role": "user", "content": content}]
    else:
        raise DataError(f"{where}: needs a {messages_key!r} or {prompt_key!r} field (fields: {', '.join(sorted(rec))})")
    if check_images:
        for p in images:
            if isinstance(p, str) and not Path(p).exists():
                raise DataError(f"{where}: image file not found: {p}")
    used = {messages_key, prompt_key, answer_key, images_key}
    meta = {k: v for k, v in rec.items() if k not in used}
    return Sample(messages=messages, answer=rec[answer_key], images=images, meta=meta, id=str(rec.get(id_key, where)))


def _samples(
    records: Iterable[tuple[str, dict]], base: Path, limit: int | None, source: str, keys: dict
) -> list[Sample]:
    samples = []
    for where, rec in records:
        if limit is not None and len(samples) >= limit:
            break
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        samples.append(record_to_sample(rec, where, base, **keys))
    if not samples:
        raise DataError(f"{source}: no records")
    return samples


def _find_bad_json_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"{path}:{i}: invalid JSON ({exc.msg})"
            if not isinstance(rec, dict):
                return f"{path}:{i}: expected a JSON object, got {type(rec).__name__}"
    return f"{path}: could not be read as JSON lines"


def _require_file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such data file")
    return p


def jsonl(path: str, limit: int | None = None, **keys: str) -> list[Sample]:
    """A local JSON-lines file read with ``datasets``; one sample per line, errors name the line."""
    import datasets

    p = _require_file(path)
    try:
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
    except Exception:
        raise DataError(_find_bad_json_line(p)) from None
    with open(p, encoding="utf-8", errors="replace") as f:
        lines = [i for i, line in enumerate(f, 1) if line.strip()]
    records = ((f"{path}:{lines[i] if i < len(lines) else i + 1}", rec) for i, rec in enumerate(ds))
    return _samples(records, p.parent, limit, path, keys)


def json_file(path: str, limit: int | None = None, field: str | None = None, **keys: str) -> list[Sample]:
    """A JSON file holding a list of records (or a mapping whose ``field`` holds it)."""
    p = _require_file(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    if field is not None:
        if not isinstance(data, dict) or field not in data:
            raise DataError(f"{path}: no top-level field {field!r}")
        data = data[field]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records (set `field` if they sit under a key)")
    return _samples(((f"{path}[{i}]", rec) for i, rec in enumerate(data)), p.parent, limit, path, keys)


def _rows(ds, source: str) -> Iterator[tuple[str, dict]]:
    for i, rec in enumerate(ds):
        yield f"{source}[{i}]", rec


def parquet(path: str, limit: int | None = None, **keys: str) -> list[Sample]:
    """A parquet file read with ``datasets``; image columns may hold paths or embedded bytes."""
    import datasets

    p = _require_file(path)
    try:
        ds = datasets.load_dataset("parquet", data_files=str(p), split="train")
    except Exception as exc:
        raise DataError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from None
    return _samples(_rows(ds, path), p.parent, limit, path, keys)


def saved(path: str, split: str = "train", limit: int | None = None, **keys: str) -> list[Sample]:
    """A dataset saved with ``datasets``' ``save_to_disk`` (a ``DatasetDict`` takes ``split``)."""
    import datasets

    if not Path(path).is_dir():
        raise DataError(f"{path}: no such directory (expected a dataset saved with save_to_disk)")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:
        raise DataError(f"{path}: not a saved dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    return _samples(_rows(ds, path), Path(path), limit, path, keys)


def hub(
    path: str, name: str | None = None, split: str = "train", limit: int | None = None, **keys: str
) -> list[Sample]:
    """``datasets.load_dataset(path, name, split=split)``: a hub id (from the local cache offline) or a
    local dataset directory of data files."""
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as exc:
        raise DataError(f"{path}: datasets.load_dataset failed ({type(exc).__name__}: {exc})") from None
    base = Path(path) if Path(path).is_dir() else Path.cwd()
    return _samples(_rows(ds, f"{path}:{split}"), base, limit, path, keys)


def _declare_record_keys(loader):
    """A file loader's options: its own parameters plus the record-field names ``record_to_sample`` takes
    (its ``**keys``), so a stage file's misspelt key is an error before anything is read."""
    import inspect
    import typing

    own = [p for p in inspect.signature(loader).parameters.values() if p.kind is not p.VAR_KEYWORD]
    keys = [p.replace(kind=p.KEYWORD_ONLY) for n, p in inspect.signature(record_to_sample).parameters.items()
            if n.endswith("_key")]  # fmt: skip

    def options():  # carries the signature only
        return None

    options.__signature__ = inspect.Signature([*own, *keys])
    hints = {**typing.get_type_hints(record_to_sample), **typing.get_type_hints(loader)}
    options.__annotations__ = {p.name: hints[p.name] for p in [*own, *keys] if p.name in hints}
    loader.options = options
    return loader


for _loader in (jsonl, json_file, parquet, saved, hub):
    _declare_record_keys(_loader)
