"""Local data files. Errors name the file and line, because that is what the user can fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmmr1_core import Sample
from lmmr1_core.errors import DataError


def _resolve_image(path: Any, base: Path) -> Any:
    if not isinstance(path, str):
        return path  # already an image object or bytes
    raw = path[len("file://") :] if path.startswith("file://") else path
    p = Path(raw)
    return str(p if p.is_absolute() else base / p)


def _nonblank_lines(path: Path) -> list[int]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [i for i, line in enumerate(f, 1) if line.strip()]


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


def record_to_sample(
    rec: dict[str, Any],
    where: str,
    base: Path,
    messages_key: str = "messages",
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    images_key: str = "images",
    check_images: bool = True,
) -> Sample:
    """One record -> Sample; images relative to the data file; every other column kept in meta."""
    rec = {k: v for k, v in rec.items() if v is not None}
    if answer_key not in rec:
        raise DataError(f"{where}: missing field {answer_key!r} (fields: {', '.join(sorted(rec))})")
    images = [_resolve_image(p, base) for p in rec.get(images_key, []) or []]
    if messages_key in rec:
        messages = rec[messages_key]
        if isinstance(messages, str):
            messages = json.loads(messages)
        messages = [dict(m) for m in messages]
        for m in messages:  # images referenced inside messages are resolved and collected in order
            if isinstance(m.get("content"), list):
                m["content"] = [dict(item) for item in m["content"]]
                for item in m["content"]:
                    if item.get("type") == "image" and isinstance(item.get("image"), str):
                        item["image"] = _resolve_image(item["image"], base)
                        if not rec.get(images_key):
                            images.append(item["image"])
    elif prompt_key in rec:
        content: Any = str(rec[prompt_key])
        if images:
            content = [{"type": "image", "image": p} for p in images] + [{"type": "text", "text": content}]
        messages = [{"role": "user", "content": content}]
    else:
        raise DataError(f"{where}: needs a {messages_key!r} or {prompt_key!r} field")
    if check_images:
        for p in images:
            if isinstance(p, str) and not Path(p).exists():
                raise DataError(f"{where}: image file not found: {p}")
    used = {messages_key, prompt_key, answer_key, images_key}
    meta = {k: v for k, v in rec.items() if k not in used}
    return Sample(
        messages=messages,
        answer=rec[answer_key],
        images=images,
        meta=meta,
        id=str(rec.get("id", where)),
    )


def jsonl(
    path: str,
    limit: int | None = None,
    messages_key: str = "messages",
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    images_key: str = "images",
) -> list[Sample]:
    """A local JSON-lines file read with ``datasets``; one sample per line."""
    import datasets

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        ds = datasets.load_dataset("json", data_files=str(p), split="train")
    except Exception:
        raise DataError(_find_bad_json_line(p)) from None
    lines = _nonblank_lines(p)
    base = p.parent
    samples = []
    for i, rec in enumerate(ds):
        if limit is not None and i >= limit:
            break
        where = f"{path}:{lines[i] if i < len(lines) else i + 1}"
        samples.append(record_to_sample(rec, where, base, messages_key, prompt_key, answer_key, images_key))
    if not samples:
        raise DataError(f"{path}: no records")
    return samples
