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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MANIFEST = "manifest.json"


def write_manifest(directory: Path) -> None:
    """Each file's size and sha256, written last and fsynced with the files: a checkpoint is complete and
    intact exactly when its manifest is there and agrees with its files."""
    import json

    directory = Path(directory)
    files = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(f.relative_to(directory))] = {"size": f.stat().st_size, "sha256": _sha256(f)}
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    with open(directory / MANIFEST, "rb") as handle:
        os.fsync(handle.fileno())
    _fsync_dir(directory)


def verify_manifest(directory: Path) -> str | None:
    """None if the checkpoint is intact, else what is wrong with it (one line)."""
    import json

    directory = Path(directory)
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest (it was never completed)"
    except (ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, want in files.items():
        f = directory / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} is {f.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its checksum (changed after it was written)"
    return None


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_dir(final: Path, manifest: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; rename it into place only if the block succeeds (with
    ``manifest``, after writing and fsyncing its manifest). Modes follow the umask, as a plain mkdir's."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())
            if manifest:
                write_manifest(tmp)
        except (OSError, RuntimeError) as exc:  # torch.save on a full disk raises RuntimeError("unexpected pos")
            _explain_full_disk(final, exc)
            raise
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _explain_full_disk(path: Path, exc: BaseException) -> None:
    """Turn a write that failed for lack of space into one line naming the path and the free space."""
    import errno

    from lmmr1_core.errors import LmmError

    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return
    if getattr(exc, "errno", None) == errno.ENOSPC or free < (64 << 20):
        raise LmmError(f"no space left writing {path}: {free / (1 << 20):.1f} MiB free there; free some space and "
                       "rerun (nothing written before this is lost)") from None  # fmt: skip


def write_or_explain(path: Path, text: str) -> None:
    """``atomic_write_text``, with a full disk reported in one line."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        _explain_full_disk(path, exc)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and a rename; the file gets the mode a plain ``open`` would (the umask's)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk must not leave a 0-byte temp file behind
        raise


def checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """A stage's ``checkpoints/step-N`` directories, newest first."""
    root = Path(stage_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))), reverse=True)


def latest_checkpoint(stage_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies against its manifest; a damaged newer one is reported in one line
    and skipped (the one before it is used). Checkpoints exist but none is intact: an error, never a silent
    restart from step 0."""
    import sys

    from lmmr1_core.errors import LmmError

    found = checkpoints(stage_dir)
    problems = []
    for step, path in found:
        problem = verify_manifest(path)
        if problem is None:
            for _, bad, why in problems:
                print(f"warning: checkpoint {bad} is damaged ({why}); resuming from step {step} instead",
                      file=sys.stderr)  # fmt: skip
            return step, path
        problems.append((step, path, problem))
    if problems:
        raise LmmError("no intact checkpoint to resume from: " + "; ".join(f"{p}: {why}" for _, p, why in problems)
                       + ". Rerun with --fresh to start the stage over")  # fmt: skip
    return None


def remove_stale_temp(stage_dir: Path) -> None:
    """Half-written checkpoint or final directories a kill left behind (``.step-N.tmp-*``, ``.final.tmp-*``)."""
    for root in (Path(stage_dir), Path(stage_dir) / "checkpoints"):
        for p in root.iterdir() if root.is_dir() else []:
            if p.is_dir() and p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


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
