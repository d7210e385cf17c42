"""Run a stage file: stages in dependency order, finished ones skipped, interrupted ones resumed."""

from __future__ import annotations

import gc
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from lmmr1_core import load_dataset, load_model
from lmmr1_core.checkpoint import atomic_write_text, latest_checkpoint, truncate_jsonl
from lmmr1_core.config import RunConfig, StageConfig, stage_order
from lmmr1_core.errors import ConfigError, DataError, LmmError
from lmmr1_core.metrics import RunLog, main_process
from lmmr1_core.plugins import get_plugin_manager, lookup
from lmmr1_core.trainer import StageContext
from lmmr1_core.types import Sample


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def check_plugins(cfg: RunConfig, path: str) -> None:
    """Every plugin name the file uses exists (the error says which key names it)."""

    def check(kind: str, name: str, key: str) -> None:
        try:
            lookup(kind, name)
        except LmmError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None

    check("models", cfg.model.backend, "model.backend")
    for sname, st in cfg.stages.items():
        check("stages", st.kind, f"stages.{sname}.kind")
        if st.kind in ("rl", "sft") and st.steps is None:
            raise ConfigError(f"{path}: stages.{sname}.steps: a {st.kind} stage needs `steps`")
        if st.init_from and cfg.stages[st.init_from].kind == "eval":
            raise ConfigError(f"{path}: stages.{sname}.init_from: {st.init_from!r} is an eval stage (no weights)")
        for i, d in enumerate(st.data):
            check("datasets", d.dataset, f"stages.{sname}.data.{i}.dataset")
        if st.kind == "rl":
            check("algorithms", st.algorithm.name, f"stages.{sname}.algorithm.name")
        if st.env is not None:
            check("envs", st.env.name, f"stages.{sname}.env.name")
            if (
                st.env.keep_images
                and st.kind == "rl"
                and (st.algorithm.name == "ppo" or st.algorithm.kl.in_reward or st.env.reward == "per_turn")
            ):
                raise ConfigError(f"{path}: stages.{sname}.env.keep_images: each turn trains as its own sequence "
                                  "with its episode's advantage; use a critic-free algorithm, KL in the loss and "
                                  "env.reward return or success")  # fmt: skip
            if st.rewards:
                raise ConfigError(f"{path}: stages.{sname}.rewards: an env stage is rewarded by its env "
                                  "(env.reward: return, success or per_turn); remove `rewards`")  # fmt: skip
        elif st.kind in ("rl", "eval") and not st.rewards:
            raise ConfigError(f"{path}: stages.{sname}.rewards: an {st.kind} stage needs at least one reward")
        for i, r in enumerate(st.rewards):
            check("rewards", r.name, f"stages.{sname}.rewards.{i}.name")


def check_model_path(cfg: RunConfig, path: str) -> str:
    p = cfg.model.path
    if Path(p).exists():
        return f"model: {p}"
    if cfg.model.tiny:
        return f"model: {p} (a tiny {cfg.model.tiny} model will be built there)"
    if _looks_like_hub_id(p):
        return f"model: {p} (hub id; loaded from the local Hugging Face cache, not checked here)"
    raise ConfigError(f"{path}: model.path: {p} does not exist (set model.tiny to build a tiny model there)")


def load_stage_data(stage_name: str, stage: StageConfig, path: str) -> list[Sample]:
    samples: list[Sample] = []
    for i, spec in enumerate(stage.data):
        try:
            loaded = load_dataset(spec.dataset, **spec.loader_config())
            for s in loaded:
                s.source = spec.label()
            samples += loaded
        except LmmError as exc:
            raise DataError(f"{path}: stages.{stage_name}.data.{i}: {exc}") from None
        except TypeError as exc:  # a key the loader does not take
            raise ConfigError(f"{path}: stages.{stage_name}.data.{i}: {exc}") from None
    if not samples:
        raise DataError(f"{path}: stages.{stage_name}.data: no samples")
    return samples


def validate(cfg: RunConfig, path: str) -> list[str]:
    """Everything that can be checked without loading a model; returns a human summary."""
    order = stage_order(cfg, path)
    check_plugins(cfg, path)
    lines = [check_model_path(cfg, path)]
    for name in order:
        st = cfg.stages[name]
        n = len(load_stage_data(name, st, path))
        src = f" from {st.init_from}" if st.init_from else ""
        steps = f", {st.steps} steps" if st.steps else ""
        lines.append(f"stage {name}: {st.kind}{src}{steps}, {n} samples")
    return lines


def _model_kwargs(cfg: RunConfig, path: str) -> dict[str, Any]:
    m = cfg.model
    kw: dict[str, Any] = {"path": path, "dtype": m.dtype, "device": m.device}
    for key in ("min_pixels", "max_pixels"):
        if getattr(m, key) is not None:
            kw[key] = getattr(m, key)
    if m.gradient_checkpointing:
        kw["gradient_checkpointing"] = True
    for key in ("tensor_parallel", "pipeline_parallel"):  # the megatron backend's model split
        if getattr(m, key) != 1:
            kw[key] = getattr(m, key)
    return kw


def _wait_for(path: Path, fresh: bool = False, timeout: float = 600.0) -> None:
    """A non-zero rank (torchrun) waits for rank 0 to write ``path``; ``fresh``: written within the last
    minute (an earlier run's copy does not count)."""
    import time

    since = time.time() - 60 if fresh else 0.0
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mtime >= since):
        if time.monotonic() > deadline:
            raise LmmError(f"timed out waiting for rank 0 to write {path}")
        time.sleep(0.2)


def run(cfg: RunConfig, path: str, fresh: bool = False, output_dir: str | None = None) -> Path:
    order = stage_order(cfg, path)
    check_plugins(cfg, path)
    check_model_path(cfg, path)
    run_dir = Path(output_dir or cfg.output_dir) / cfg.name
    if not main_process():  # torchrun: rank 0 prepares the run directory and the tiny model
        _wait_for(run_dir / "config.yaml", fresh=True)
    else:
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.model.tiny and not Path(cfg.model.path).exists():
            from lmmr1_core.tiny_model import build_tiny_model

            print(f"building a tiny {cfg.model.tiny} model at {cfg.model.path}", file=sys.stderr)
            build_tiny_model(cfg.model.path, cfg.model.tiny)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    hook = get_plugin_manager().hook
    for name in order:
        st = cfg.stages[name]
        out = run_dir / name
        if (out / "final").exists():
            print(f"stage {name}: finished earlier ({out / 'final'}), skipping", file=sys.stderr)
            continue
        init = str(run_dir / st.init_from / "final") if st.init_from else cfg.model.path
        if st.init_from and not main_process():  # rank 0 may still be renaming it into place
            _wait_for(run_dir / st.init_from / "final")
        if st.kind == "eval":
            found = None
        else:
            found = latest_checkpoint(out)
        if found:
            print(f"stage {name}: resuming after step {found[0]} from {found[1]}", file=sys.stderr)
        for log_name in ("metrics.jsonl", "samples.jsonl"):  # drop steps after the checkpoint
            if main_process():
                truncate_jsonl(out / log_name, found[0] if found else 0)
        samples = load_stage_data(name, st, path)
        backend = load_model(cfg.model.backend, **_model_kwargs(cfg, str(found[1]) if found else init))
        if cfg.model.rollout.engine == "vllm":
            from lmmr1_plugins.models.vllm_engine import rollout_engine

            backend = rollout_engine(backend, cfg.model, st)
        ctx = StageContext(name, st, cfg, out, backend, samples, init, hook)
        ctx.log = RunLog(out)
        try:
            lookup("stages", st.kind).obj(ctx)
        finally:
            ctx.log.close()
            if hasattr(backend, "close"):
                backend.close()
        hook.on_stage_end(stage=name, output_dir=str(out), metrics=dict(ctx.counters))
        print(f"stage {name}: done -> {out / 'final'}", file=sys.stderr)
        del ctx, backend
        gc.collect()
    evals = [n for n in order if cfg.stages[n].kind == "eval" and (run_dir / n / "final/results.json").exists()]
    if len(evals) > 1:  # the before/after view
        from lmmr1_core.evaluate import compare_table

        print(compare_table({n: run_dir / n / "final/results.json" for n in evals}), file=sys.stderr)
    return run_dir
