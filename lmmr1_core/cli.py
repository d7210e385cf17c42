"""The ``lmmr1`` command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from lmmr1_core.errors import LmmError


def _quiet_libraries() -> None:
    """Our progress bar is the one that matters; silence the libraries' bars and chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


class _Group(click.Group):
    """User errors print one line; no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from lmmr1_core.preemption import Preempted

        try:
            return super().invoke(ctx)
        except Preempted as exc:
            click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except LmmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            sys.exit(130)
        except RuntimeError as exc:  # torchrun: a collective failed because another rank died or hung
            from lmmr1_core.distributed import explain_failure

            line = explain_failure(exc)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="lmmr1")
def main() -> None:
    """lmmr1: verifiable-reward RL for (multimodal) language models, built from plugins."""
    from lmmr1_core.threads import prepare_environment

    prepare_environment()  # before anything loads torch: OpenMP and MKL read their settings once, at load


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key, e.g. stages.rl.steps=2")
@click.option("--output-dir", default=None, help="where runs/<name>/ goes (default: the file's output_dir)")
@click.option("--fresh", is_flag=True, help="delete this run's outputs and start over")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="start N processes on this node through torchrun (data parallel; megatron: x TP x PP)")  # fmt: skip
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="nodes in the job: run the same command on each, with its --node-rank")  # fmt: skip
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True, help="node 0's address (--nnodes > 1)")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
              help="node 0's port for the job's store (--nnodes > 1)")  # fmt: skip
def run(file: str, overrides: tuple[str, ...], output_dir: str | None, fresh: bool, nproc_per_node: int | None,
        nnodes: int, node_rank: int, master_addr: str, master_port: int) -> None:  # fmt: skip
    """Run every stage of FILE; finished stages are skipped, an interrupted one resumes."""
    from lmmr1_core.config import load_config

    if "LOCAL_RANK" not in os.environ and ((nproc_per_node or 1) > 1 or nnodes > 1):
        from lmmr1_core.world import check_world

        check_world(load_config(file, list(overrides)), (nproc_per_node or 1) * nnodes, file)  # once, not per rank
        _torchrun(nproc_per_node or 1, nnodes, node_rank, master_addr, master_port)
    from lmmr1_core.run import run as run_stages

    cfg = load_config(file, list(overrides))
    _quiet_libraries()
    run_dir = run_stages(cfg, file, fresh=fresh, output_dir=output_dir)
    click.echo(f"done: {run_dir}")


_LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def _torchrun(nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> None:
    """Run this same command as ``nproc`` processes on this node: ``python -m torch.distributed.run``,
    ``--standalone`` on one node, else a static rendezvous at node 0's ``master_addr:master_port``."""
    import subprocess

    if node_rank >= nnodes:
        raise click.BadParameter(f"{node_rank} with --nnodes {nnodes}: node ranks are 0..{nnodes - 1}",
                                 param_hint="--node-rank")  # fmt: skip
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in _LAUNCH_OPTIONS:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in _LAUNCH_OPTIONS)):
            args.append(a)
    launch = ["--standalone"]
    if nnodes > 1:
        if node_rank == 0:
            _check_port_free(master_addr, master_port)
        launch = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                  f"--master-port={master_port}"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc-per-node={nproc}",
           "-m", "lmmr1_core.cli", *args]  # fmt: skip
    sys.exit(subprocess.call(cmd))


def _check_port_free(addr: str, port: int) -> None:
    """Node 0 hosts the job's store on ``port``: a port taken by another program fails here, in one line,
    instead of in torchrun's retries."""
    import errno
    import socket

    problem = None
    try:  # something answers there: a store of another run, or any server
        socket.create_connection((addr, port), timeout=1).close()
        problem = "something already listens there"
    except OSError:
        for family, host in ((socket.AF_INET, ""), (socket.AF_INET6, "::")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        problem = exc.strerror
    if problem:
        raise click.UsageError(f"--master-port {port}: in use on this machine ({problem}); another "
                               "run may hold it: pick a free port, the same on every node") from None


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="check the parallel split and batch sizes against this many processes per node "
              "(default: WORLD_SIZE under torchrun, else not checked)")  # fmt: skip
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True, help="with --nproc-per-node")
def validate(file: str, overrides: tuple[str, ...], nproc_per_node: int | None, nnodes: int) -> None:
    """Check FILE (schema, plugin names, data files, the world size) without loading a model."""
    from lmmr1_core.config import load_config
    from lmmr1_core.run import validate as validate_run
    from lmmr1_core.world import batch_plan, check_world, world_size_from_env

    cfg = load_config(file, list(overrides))
    world = nproc_per_node * nnodes if nproc_per_node else world_size_from_env()
    if world is not None:
        check_world(cfg, world, file)
    _quiet_libraries()
    for line in validate_run(cfg, file) + batch_plan(cfg, world):
        click.echo(line)
    click.echo(f"{file}: ok")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(as_json: bool) -> None:
    """List loaded plugins: distribution, version and what each registered."""
    from lmmr1_core.plugins import plugin_report

    report = plugin_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for p in report:
        if "error" in p:
            click.echo(f"{p['name']} ({p['distribution']}): FAILED TO LOAD: {p['error']}")
            continue
        click.echo(f"{p['name']} ({p['distribution']} {p['version']})")
        for kind, names in sorted(p["registered"].items()):
            click.echo(f"  {kind}: {', '.join(names)}")


@main.command("tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["text", "vl"]), default="text", show_default=True)
@click.option("--hidden", default=128, show_default=True, help="hidden size (a multiple of 32)")
@click.option("--layers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--backend", default="hf", show_default=True, help="the model backend plugin that builds it")
def tiny_model(directory: str, kind: str, hidden: int, layers: int, seed: int, backend: str) -> None:
    """Write a tiny random HF model (weights, tokenizer, chat template[, processor]) to DIRECTORY."""
    if hidden % 32:
        raise click.BadParameter("must be a multiple of 32 (head size 32)", param_hint="--hidden")
    _quiet_libraries()
    from lmmr1_core.errors import PluginError
    from lmmr1_core.plugins import lookup

    build = getattr(lookup("models", backend).obj, "build_tiny", None)  # declared by the factory
    if build is None:
        raise PluginError(f"model backend {backend!r} builds no tiny models")
    path = build(directory, kind, hidden=hidden, layers=layers, seed=seed)
    click.echo(f"wrote a tiny {kind} model to {path}")


def _data_spec(text: str) -> dict[str, Any]:
    """``path.jsonl`` (loader from the suffix) or ``NAME:key=value,key=value``."""
    from lmmr1_core.config import load_yaml
    from lmmr1_core.errors import ConfigError

    suffixes = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
    for suffix, loader in suffixes.items():
        if text.endswith(suffix) and ":" not in text:
            return {"dataset": loader, "path": text}
    name, _, rest = text.partition(":")
    spec: dict[str, Any] = {"dataset": name}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ConfigError(f"--data {text!r}: expected NAME:key=value,... or a .jsonl/.json/.parquet path")
        key, value = item.split("=", 1)
        spec[key] = load_yaml(value)
    return spec


@main.command("eval")
@click.option("--model", "model_path", required=True, help="HF model directory (or hub id) to evaluate")
@click.option("--data", "data_specs", multiple=True, required=True, metavar="SPEC",
              help="a .jsonl/.json/.parquet file, or NAME:key=value,... (repeatable)")  # fmt: skip
@click.option("--rewards", "reward_names", default="math_accuracy", show_default=True, help="comma-separated")
@click.option("--k", "k", default=1, show_default=True, help="completions per prompt (1: greedy)")
@click.option("--max-new-tokens", default=4096, show_default=True)
@click.option("--temperature", default=1.0, show_default=True, help="sampling temperature when k > 1")
@click.option("--prompt-template", default=None, help="wraps each prompt; {prompt} stands for it")
@click.option("--output-dir", default="runs", show_default=True)
@click.option("--name", default="eval", show_default=True)
def eval_command(model_path, data_specs, reward_names, k, max_new_tokens, temperature, prompt_template,
                 output_dir, name) -> None:  # fmt: skip
    """Evaluate a model on data sets: greedy accuracy, or mean@k / pass@k; writes results.json and a table."""
    from lmmr1_core.config import RunConfig
    from lmmr1_core.run import run as run_stages

    cfg = RunConfig.model_validate({
        "name": name,
        "model": {"path": model_path},
        "output_dir": output_dir,
        "stages": {"eval": {
            "kind": "eval",
            "data": [_data_spec(d) for d in data_specs],
            "rewards": [{"name": r.strip()} for r in reward_names.split(",") if r.strip()],
            "eval_samples": k,
            "prompt_template": prompt_template,
            "generation": {"max_new_tokens": max_new_tokens, "temperature": temperature},
        }},
    })  # fmt: skip
    _quiet_libraries()
    run_dir = run_stages(cfg, "lmmr1 eval", fresh=True)
    click.echo((run_dir / "eval/final/table.txt").read_text(), nl=False)
    click.echo(f"results: {run_dir / 'eval/final/results.json'}")


@main.group()
def data() -> None:
    """Generate offline data sets."""


@data.command("make")
@click.argument("name")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", default=100, show_default=True, help="number of problems")
@click.option("--seed", default=0, show_default=True)
def data_make(name: str, out_dir: str, n: int, seed: int) -> None:
    """Write NAME's generated problems (PNG figures + data.jsonl) to OUT_DIR."""
    from lmmr1_core.errors import PluginError
    from lmmr1_core.plugins import lookup, registry

    loader = lookup("datasets", name).obj
    if not hasattr(loader, "make"):
        makers = sorted(k for k, v in registry("datasets").items() if hasattr(v.obj, "make"))
        raise PluginError(f"dataset {name!r} cannot generate data; generators: {', '.join(makers)}")
    path = loader.make(out_dir, n=n, seed=seed)
    click.echo(f"wrote {n} {name} problems to {path}")


@main.group()
def episodes() -> None:
    """Look at logged env episodes."""


@episodes.command("show")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--stage", default=None, help="stage name (default: the first with episodes)")
@click.option("--index", default=0, show_default=True, help="which logged episode")
@click.option("--out", default=None, help="GIF path (default: RUN_DIR/STAGE/episode-INDEX.gif)")
def episodes_show(run_dir: str, stage: str | None, index: int, out: str | None) -> None:
    """Replay a logged episode in its env and write an animated GIF of the frames and actions."""
    from lmmr1_core.viewer import render_episode

    click.echo(f"wrote {render_episode(run_dir, stage, index, out)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--metric", "metrics", multiple=True, help="a metrics.jsonl key to draw (repeatable; default: rewards)")
@click.option("--compare", "others", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="another run directory to overlay, stage by stage (repeatable)")  # fmt: skip
@click.option("--out", default=None, help="--compare: folder for the PNGs (default: RUN_DIR/compare)")
def plot(run_dir: str, metrics: tuple[str, ...], others: tuple[str, ...], out: str | None) -> None:
    """Redraw each stage's curves.png of RUN_DIR, or overlay other runs' curves on it (--compare)."""
    from lmmr1_core.errors import ConfigError
    from lmmr1_core.plots import compare_runs, draw_stage, stage_dirs

    if others:
        paths = compare_runs([run_dir, *others], list(metrics) or None, out)
    else:
        paths = [p for p in (draw_stage(s, list(metrics) or None) for s in stage_dirs(run_dir)) if p]
    if not paths:
        raise ConfigError(f"{run_dir}: no stage with logged steps (metrics.jsonl) to draw")
    for p in paths:
        click.echo(f"wrote {p}")


@main.group()
def new() -> None:
    """Start a plugin package from a template."""


@new.command("domain")
@click.argument("name")
@click.option("--env", "is_env", is_flag=True, help="a multi-turn env domain (default: a dataset + verifier)")
@click.option("--dir", "parent", default=".", show_default=True, help="where lmmr1-NAME/ is written")
def new_domain(name: str, is_env: bool, parent: str) -> None:
    """Write lmmr1-NAME/: pyproject with the entry point, plugin module, stage file and a test (docs/domains.md)."""
    from lmmr1_core.domain_template import write_domain

    out = write_domain(name, env=is_env, parent=parent)
    click.echo(f"wrote {out}; next: cd {out} && pip install -e . && pytest -q tests && lmmr1 run stages/{name}.yaml")


@main.command()
def reference() -> None:
    """Print the stage-file reference (every key, its type, default and meaning) and each plugin's options."""
    from lmmr1_core import options
    from lmmr1_core.config import reference_text
    from lmmr1_core.plugins import registry

    click.echo(reference_text())
    where = {"rewards": "stages.<name>.rewards[]", "algorithms": "stages.<name>.algorithm",
             "envs": "stages.<name>.env", "datasets": "stages.<name>.data[]",
             "rollout_engines": "model.rollout"}  # fmt: skip
    for kind, key in where.items():
        click.echo(f"\n{kind} (options under {key}):")
        for name, reg in sorted(registry(kind).items()):
            lines = options.describe(kind, reg.obj)
            click.echo(f"  {name} ({reg.plugin}):" + ("" if lines else " no options"))
            for line in lines:
                click.echo(f"    {line}")


if __name__ == "__main__":
    main()
