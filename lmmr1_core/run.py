"""Run a stage file: stages in dependency order, finished ones skipped, interrupted ones resumed."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from lmmr1_core import load_dataset, load_model, options, secrets
from lmmr1_core.checkpoint import latest_checkpoint, remove_stale_temp, truncate_jsonl, write_or_explain
from lmmr1_core.config import RunConfig, StageConfig, stage_order
from lmmr1_core.contracts import Algorithm
from lmmr1_core.distributed import init_process_group, world_size
from lmmr1_core.errors import ConfigError, DataError, LmmError
from lmmr1_core.metrics import RunLog, main_process
from lmmr1_core.model_card import redacted_config, refresh_model_card
from lmmr1_core.plots import draw_stage_quietly
from lmmr1_core.plugins import get_plugin_manager, lookup
from lmmr1_core.runlock import RunLock
from lmmr1_core.trainer import StageContext
from lmmr1_core.types import Sample
from lmmr1_core.world import check_world


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _check(kind: str, name: str, key: str, path: str) -> Any:
    """The registered plugin object; an unknown name is an error naming the file and key."""
    try:
        return lookup(kind, name).obj
    except LmmError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None


def _plugin_options(cfg: RunConfig):
    """(kind, name, options, where) for every plugin the file configures."""
    if cfg.model.rollout.engine != "backend":
        yield "rollout_engines", cfg.model.rollout.engine, cfg.model.rollout.engine_config(), "model.rollout"
    for sname, st in cfg.stages.items():
        for i, d in enumerate(st.data):
            yield "datasets", d.dataset, d.loader_config(), f"stages.{sname}.data.{i}"
        if st.kind == "rl":
            yield "algorithms", st.algorithm.name, st.algorithm.algorithm_config(), f"stages.{sname}.algorithm"
        if st.env is not None:
            yield "envs", st.env.name, st.env.env_config(), f"stages.{sname}.env"
        for i, r in enumerate(st.rewards):
            yield "rewards", r.name, r.reward_config(), f"stages.{sname}.rewards.{i}"


def declared_secrets(cfg: RunConfig) -> tuple[str, ...]:
    """The option names the file's plugins declare secret (beyond names that say so, like ``api_key``)."""
    names: set[str] = set()
    for kind, name, _, _ in _plugin_options(cfg):
        try:
            names |= set(getattr(lookup(kind, name).obj, "secrets", ()))
        except LmmError:
            continue
    return tuple(sorted(names))


def check_secrets(cfg: RunConfig, path: str) -> None:
    """Every ``${env:NAME}`` the file uses is set; a secret written literally gets a warning saying how not to."""
    for kind, name, opts, where in _plugin_options(cfg):
        declared = getattr(lookup(kind, name).obj, "secrets", ())
        secrets.resolve(opts, f"{path}: {where}")
        secrets.warn_literal(f"{path}: {where}", secrets.literal_secrets(opts, declared))


def check_plugins(cfg: RunConfig, path: str) -> None:
    """Every plugin name the file uses exists and every option it gives is one the plugin declares (the
    error names the file, the key and the plugin); algorithms are built, so their own checks run too."""
    _check("models", cfg.model.backend, "model.backend", path)
    engine = cfg.model.rollout.engine
    if engine != "backend":
        obj = _check("rollout_engines", engine, "model.rollout.engine", path)
        options.check("rollout_engines", engine, obj, cfg.model.rollout.engine_config(), f"{path}: model.rollout")
    for sname, st in cfg.stages.items():
        where = f"{path}: stages.{sname}"
        _check("stages", st.kind, f"stages.{sname}.kind", path)
        if st.kind in ("rl", "sft") and st.steps is None:
            raise ConfigError(f"{where}.steps: a {st.kind} stage needs `steps`")
        if st.init_from and cfg.stages[st.init_from].kind == "eval":
            raise ConfigError(f"{where}.init_from: {st.init_from!r} is an eval stage (no weights)")
        for i, d in enumerate(st.data):
            obj = _check("datasets", d.dataset, f"stages.{sname}.data.{i}.dataset", path)
            options.check("datasets", d.dataset, obj, d.loader_config(), f"{where}.data.{i}")
        algorithm = _check_algorithm(st, where, path) if st.kind == "rl" else None
        if st.env is not None:
            obj = _check("envs", st.env.name, f"stages.{sname}.env.name", path)
            options.check("envs", st.env.name, obj, st.env.env_config(), f"{where}.env")
            _check_env_stage(st, algorithm, where)
        elif st.kind in ("rl", "eval") and not st.rewards:
            raise ConfigError(f"{where}.rewards: an {st.kind} stage needs at least one reward")
        for i, r in enumerate(st.rewards):
            obj = _check("rewards", r.name, f"stages.{sname}.rewards.{i}.name", path)
            options.check("rewards", r.name, obj, r.reward_config(), f"{where}.rewards.{i}")
    check_secrets(cfg, path)


def _check_algorithm(st: StageConfig, where: str, path: str) -> Algorithm:
    name = st.algorithm.name
    factory = _check("algorithms", name, f"{where.split(': ', 1)[1]}.algorithm.name", path)
    options.check("algorithms", name, factory, st.algorithm.algorithm_config(), f"{where}.algorithm")
    try:
        algorithm = factory(**st.algorithm.algorithm_config())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.algorithm: algorithm {name!r}: {exc}") from None
    if st.algorithm.group_size < algorithm.min_group_size:
        raise ConfigError(f"{where}.algorithm.group_size: algorithm {name!r} compares the samples of a prompt's "
                          f"group, so it needs at least {algorithm.min_group_size} (with 1 every advantage is "
                          "0 and nothing is learned)")  # fmt: skip
    if st.algorithm.tis_cap is not None and st.generation.top_p < 1:
        raise ConfigError(f"{where}.algorithm.tis_cap: truncated importance sampling compares the rollout "
                          "engine's log-probs with the trainer's, which are before top-p; with generation.top_p "
                          f"{st.generation.top_p} they refer to different distributions. Use top_p: 1.0 or drop "
                          "tis_cap")  # fmt: skip
    return algorithm


def _check_env_stage(st: StageConfig, algorithm: Algorithm | None, where: str) -> None:
    if st.env.keep_images and algorithm is not None and (
        algorithm.needs_critic or st.algorithm.kl.in_reward or st.env.reward == "per_turn"
    ):
        raise ConfigError(f"{where}.env.keep_images: each turn trains as its own sequence with its episode's "
                          "advantage; use a critic-free algorithm, KL in the loss and env.reward return or "
                          "success")  # fmt: skip
    if st.rewards:
        raise ConfigError(f"{where}.rewards: an env stage is rewarded by its env (env.reward: return, success "
                          "or per_turn); remove `rewards`")  # fmt: skip


def build_tiny_model(backend: str, path: str, kind: str) -> None:
    """``model.tiny``: the backend's factory builds a tiny random model of ``kind`` at ``path``."""
    factory = lookup("models", backend).obj
    build = getattr(factory, "build_tiny", None)  # declared by the factory (contracts.BackendFactory)
    if build is None:
        raise ConfigError(f"model.tiny: model backend {backend!r} builds no tiny models")
    build(path, kind)


def check_model_path(cfg: RunConfig, path: str, loading: bool = False) -> str:
    """What ``model.path`` is, or one clear line when it cannot load: a broken ``config.json`` names the
    file; a hub id that is not in the local cache fails at once without a network (and says what to do).
    ``loading``: the run is about to load it (an empty directory is an error then, not for validate)."""
    p = cfg.model.path
    if Path(p).exists():
        config = Path(p) / "config.json"
        if config.exists():
            try:
                json.loads(config.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: model.path: {config} is not valid JSON ({exc})") from None
        elif loading and Path(p).is_dir():
            raise ConfigError(f"{path}: model.path: {p} has no config.json (not a Hugging Face model directory)")
        return f"model: {p}"
    if cfg.model.tiny:
        return f"model: {p} (a tiny {cfg.model.tiny} model will be built there)"
    if _looks_like_hub_id(p):
        if _in_hub_cache(p):
            return f"model: {p} (hub id, in the local Hugging Face cache)"
        if not _hub_reachable() and not loading:
            return f"model: {p} (hub id; not in the local cache, and the hub is unreachable here: a run would fail)"
        if not _hub_reachable():
            raise ConfigError(f"{path}: model.path: {p} is neither a local directory nor in the local Hugging Face "
                              "cache, and the hub cannot be reached from here. Download it where there is a "
                              f"network (`huggingface-cli download {p}`) and copy the cache, or point model.path "
                              "at a local directory")  # fmt: skip
        return f"model: {p} (hub id; downloaded on first use)"
    raise ConfigError(f"{path}: model.path: {p} does not exist (set model.tiny to build a tiny model there)")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def _hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host does not resolve (no network): then a download
    would only retry for half a minute before failing."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import constants

        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except Exception:
        return False


def load_stage_data(stage_name: str, stage: StageConfig, path: str) -> list[Sample]:
    samples: list[Sample] = []
    for i, spec in enumerate(stage.data):
        try:
            opts = secrets.resolve(spec.loader_config(), f"{path}: stages.{stage_name}.data.{i}")
            loaded = load_dataset(spec.dataset, **opts)
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
    if m.lora is not None:
        kw["lora"] = m.lora.model_dump()
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


RESUMABLE = re.compile(r"^(output_dir|stages\.[^.]+\.(steps|save_every|samples_every|keep_checkpoints|"
                       r"rewards\.\d+\.(timeout_s|workers)))$")  # changes a resume can honour


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(data, list):
        return {k: v for i, val in enumerate(data) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: data}


def check_unchanged(run_dir: Path, written: dict[str, Any], path: str) -> None:
    """Refuse to continue a run whose stage file changed in a way its outputs cannot follow."""
    old_file = run_dir / "config.yaml"
    if not old_file.exists():
        return
    try:
        old = _flat(yaml.safe_load(old_file.read_text()) or {})
    except yaml.YAMLError:
        return  # unreadable: nothing to compare with; it is rewritten below
    new = _flat(written)
    changed = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    blocking = [k for k in changed if not RESUMABLE.match(k)]
    if blocking:
        shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in blocking[:8])
        more = f" (and {len(blocking) - 8} more)" if len(blocking) > 8 else ""
        raise ConfigError(f"{path}: differs from the run in {run_dir} ({shown}{more}); its outputs were made "
                          "with the old settings. Rerun with --fresh to start over, or use another run "
                          "name")  # fmt: skip


def check_columns(cfg: RunConfig, data: dict[str, list[Sample]], path: str) -> None:
    """A reward option named like a data column would silently replace that column for every sample."""
    for name, samples in data.items():
        columns = {k for s in samples for k in s.meta} | options.COLUMNS
        for i, r in enumerate(cfg.stages[name].rewards):
            for key in r.reward_config():
                if key in columns:
                    raise ConfigError(f"{path}: stages.{name}.rewards.{i}.{key}: the data has a column {key!r} "
                                      "too, and the option would replace it for every sample; rename one of "
                                      "them")  # fmt: skip


def run(cfg: RunConfig, path: str, fresh: bool = False, output_dir: str | None = None) -> Path:
    """Run the stages; everything that can be checked is checked before the run directory changes.

    torch's CPU threads are set for the run (``model.threads``, else this rank's share of the usable CPUs) and
    given back after it, so a Python caller gets what ``lmmr1 run`` gets; OpenMP's short spin must be in the
    environment before torch loads, which only the caller can do (``lmmr1_core.threads.prepare_environment``;
    the CLI does).
    """
    import torch

    from lmmr1_core.threads import configure_torch

    before = torch.get_num_threads()
    configure_torch(cfg.model.threads)
    try:
        return _checked_run(cfg, path, fresh, output_dir)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _checked_run(cfg: RunConfig, path: str, fresh: bool, output_dir: str | None) -> Path:
    order = stage_order(cfg, path)
    check_plugins(cfg, path)
    check_model_path(cfg, path, loading=True)
    if world_size() > 1:  # torchrun: the split fits the world (checked before joining: no rank waits on a bad one)
        check_world(cfg, world_size(), path)
    init_process_group()  # torchrun: join the job (each rank runs this same program)
    run_dir = Path(output_dir or cfg.output_dir) / cfg.name
    lock = RunLock(run_dir) if main_process() else None
    if lock is not None:
        lock.acquire()
    try:
        return _run(cfg, path, order, run_dir, fresh)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: RunConfig, path: str, order: list[str], run_dir: Path, fresh: bool) -> Path:
    todo = [n for n in order if fresh or not (run_dir / n / "final").exists()]
    data = {n: load_stage_data(n, cfg.stages[n], path) for n in todo}  # a data error stops us before any write
    check_columns(cfg, data, path)
    written = secrets.redact(cfg.model_dump(mode="json"), declared_secrets(cfg))  # never a secret's value
    if not fresh:
        check_unchanged(run_dir, written, path)
    if not main_process():  # torchrun: rank 0 prepares the run directory and the tiny model
        _wait_for(run_dir / "config.yaml", fresh=True)
    else:
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.model.tiny and not Path(cfg.model.path).exists():
            print(f"building a tiny {cfg.model.tiny} model at {cfg.model.path}", file=sys.stderr)
            build_tiny_model(cfg.model.backend, cfg.model.path, cfg.model.tiny)
        write_or_explain(run_dir / "config.yaml", yaml.safe_dump(written, sort_keys=False))
    hook = get_plugin_manager().hook
    for name in order:
        st = cfg.stages[name]
        out = run_dir / name
        if (out / "final").exists():
            print(f"stage {name}: finished earlier ({out / 'final'}), skipping", file=sys.stderr)
            draw_stage_quietly(out)  # a run from before pictures, or one killed before drawing, gets its PNG
            continue
        init = str(run_dir / st.init_from / "final") if st.init_from else cfg.model.path
        if st.init_from and not main_process():  # rank 0 may still be renaming it into place
            _wait_for(run_dir / st.init_from / "final")
        if main_process():
            remove_stale_temp(out)
        found = None if st.kind == "eval" else latest_checkpoint(out)  # verified; a damaged one is skipped
        if found:
            print(f"stage {name}: resuming after step {found[0]} from {found[1]}", file=sys.stderr)
        backend = load_model(cfg.model.backend, **_model_kwargs(cfg, str(found[1]) if found else init))
        for log_name in ("metrics.jsonl", "samples.jsonl"):  # drop steps after the checkpoint
            if main_process():
                truncate_jsonl(out / log_name, found[0] if found else 0)
        engine = None
        if cfg.model.rollout.engine != "backend":
            engine = lookup("rollout_engines", cfg.model.rollout.engine).obj(backend, cfg.model, st)
        ctx = StageContext(name, st, cfg, out, backend, data[name], init, hook, engine=engine, checkpoint=found)
        ctx.log = RunLog(out, cfg.logging, cfg.name, redacted_config(cfg, name) if main_process() else None,
                         purge_step=found[0] + 1 if found else None)
        try:
            hook.on_stage_start(stage=name, config=st, output_dir=str(out))
            lookup("stages", st.kind).obj(ctx)
        finally:
            ctx.log.close()
            if engine is not None:
                engine.close()
            backend.close()
        hook.on_stage_end(stage=name, output_dir=str(out), metrics=dict(ctx.counters))
        draw_stage_quietly(out)  # curves.png beside metrics.jsonl
        if st.init_from and main_process():  # an eval of init_from's weights: its card lists the results
            refresh_model_card(cfg, st.init_from, run_dir)
        print(f"stage {name}: done -> {out / 'final'}", file=sys.stderr)
        del ctx, backend
        gc.collect()
    evals = [n for n in order if cfg.stages[n].kind == "eval" and (run_dir / n / "final/results.json").exists()]
    if len(evals) > 1:  # the before/after view
        from lmmr1_core.evaluate import compare_table

        print(compare_table({n: run_dir / n / "final/results.json" for n in evals}), file=sys.stderr)
    return run_dir
