"""Atomic directories and trainer state: a crash mid-write never leaves a half checkpoint."""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def latest_checkpoint(stage_dir: Path) -> tuple[int, Path] | None:
    """The newest complete ``checkpoints/step-N`` of a stage, if any."""
    root = Path(stage_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    steps = [(s, p) for s, p in steps if (p / "trainer_state.pt").exists()]
    return max(steps) if steps else None


def prune_checkpoints(stage_dir: Path, keep: int = 1) -> None:
    root = Path(stage_dir) / "checkpoints"
    if not root.is_dir():
        return
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in steps[: max(len(steps) - keep, 0)]:
        shutil.rmtree(p, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every generator's state as JSON-able lists (python, numpy) and tensors (torch, CUDA)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"


def write_trainer_state(directory: Path, plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Trainer state that cannot run code when read: ``plain`` (numbers, strings, lists) as JSON, ``tensors``
    (optimizer and scheduler state, torch RNG: tensors in dicts and lists) through ``torch.save``, read back
    with ``weights_only=True``."""
    import json

    rng = rng_state()
    plain = {**plain, "format": 2, "rng": {k: rng[k] for k in ("python", "numpy")}}
    tensors = {**tensors, "rng": {k: v for k, v in rng.items() if k not in ("python", "numpy")}}
    (Path(directory) / STATE_JSON).write_text(json.dumps(plain))
    torch.save(tensors, Path(directory) / STATE_TENSORS)


def read_trainer_state(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, tensors) as written above; never unpickles an object (a planted pickle is refused)."""
    import json
    import pickle

    from lmmr1_core.errors import LmmError

    directory = Path(directory)
    if not (directory / STATE_JSON).exists():
        raise LmmError(f"{directory}: a checkpoint from an older lmmr1 (its trainer state is a pickle, which this "
                       "version never loads: unpickling can run code). Rerun with --fresh to start the stage over, "
                       "or delete this checkpoint to resume from an earlier one")  # fmt: skip
    try:
        plain = json.loads((directory / STATE_JSON).read_text())
        tensors = torch.load(directory / STATE_TENSORS, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmmError(f"{directory}: refused to load its trainer state: it holds something other than tensors, "
                       f"numbers and text ({reason[:200]})") from None  # fmt: skip
    set_rng_state({**plain["rng"], **tensors["rng"]})
    return plain, tensors


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records past ``max_step`` (written after the checkpoint we resume from)."""
    import json

    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))
