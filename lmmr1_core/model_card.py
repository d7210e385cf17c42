"""A model card per stage result: ``final/README.md``, written the way Hugging Face model cards are.

YAML front matter (``base_model``, ``library_name``, ``tags``) so the Hub shows the directory right when a user
uploads it; then how the weights were made: the stage graph, the base model, the data, the final metrics, the
eval tables of the eval stages that evaluated these weights, and the stage's config with its secrets redacted
(``secrets.redact``: a config may hold API keys, and a card is made to be published).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from lmmr1_core import __version__, secrets
from lmmr1_core.checkpoint import atomic_write_text
from lmmr1_core.config import RunConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def redacted_config(cfg: RunConfig, stage: str | None = None) -> dict[str, Any]:
    """The run's config fit to publish: every secret's value replaced (names that say so, and those the file's
    plugins declare); with ``stage``, only that stage under ``stages``."""
    from lmmr1_core.run import declared_secrets  # run imports the trainer, which imports this module

    data = cfg.model_dump(mode="json")
    if stage is not None:
        data["stages"] = {stage: data["stages"][stage]}
    return secrets.redact(data, declared_secrets(cfg))


def init_path(cfg: RunConfig, stage: str, run_dir: Path) -> str:
    """The weights a stage starts from: its ``init_from`` stage's ``final/``, or the model's path."""
    parent = cfg.stages[stage].init_from
    return str(run_dir / parent / "final") if parent else cfg.model.path


def base_model(cfg: RunConfig) -> str | None:
    """The hub id these weights descend from: the model's path when it is one (or a hub cache snapshot of one),
    or the ``base_model`` of an earlier lmmr1 result's card; None for a local model of unknown origin."""
    path = cfg.model.path
    card = Path(path) / "README.md"
    if card.is_file():
        front = _front_matter(card.read_text())
        if "lmmr1" in (front.get("tags") or []) and isinstance(front.get("base_model"), str):
            return front["base_model"]
    cached = re.search(r"models--([\w.-]+?)--([\w.-]+)/snapshots/", path)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    if not Path(path).exists() and _HUB_ID.match(path):
        return path
    return None


def _front_matter(text: str) -> dict[str, Any]:
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return {}
    try:
        data = yaml.safe_load(text[4 : text.index("\n---\n", 4)])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _graph(cfg: RunConfig, stage: str) -> str:
    """One line per stage in the file's order: kind, the stage it starts from, this one marked."""
    lines = []
    for name, st in cfg.stages.items():
        src = st.init_from or f"model {cfg.model.path}"
        mark = "   <- these weights" if name == stage else ""
        lines.append(f"{name} ({st.kind}) <- {src}{mark}")
    return "\n".join(lines)


def _last_metrics(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return {}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _results_table(results: dict[str, Any]) -> str:
    """An eval stage's results.json as a markdown table (overall, per data set, per category)."""
    overall = results.get("overall", {})
    keys = [k for k in overall if k != "n"]
    rows = [("overall", overall), *results.get("datasets", {}).items(), *results.get("categories", {}).items()]
    out = ["| | n | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    out += [f"| {name} | {v.get('n', '-')} | " + " | ".join(_cell(v.get(k)) for k in keys) + " |" for name, v in rows]
    return "\n".join(out)


def _evals(cfg: RunConfig, stage: str, run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(eval stage, results) for each stage that evaluated these weights and has finished."""
    found = []
    for name, st in cfg.stages.items():
        res = run_dir / name / "final" / "results.json"
        if st.init_from == stage and res.exists():
            found.append((name, json.loads(res.read_text())))
    return found


def card_text(cfg: RunConfig, stage: str, run_dir: Path, adapter: bool = False) -> str:
    """The README.md of ``<run_dir>/<stage>/final``."""
    st = cfg.stages[stage]
    algorithm = st.algorithm.name if st.kind == "rl" else None
    tags = ["lmmr1", *(["reinforcement-learning", algorithm] if algorithm else []), st.kind]
    tags += [*(["lora"] if adapter else []), *([f"multimodal-{st.env.name}"] if st.env else [])]
    front: dict[str, Any] = {}
    base = base_model(cfg)
    if base:
        front["base_model"] = base
    front["library_name"] = "transformers"
    front["tags"] = list(dict.fromkeys(tags))
    start = init_path(cfg, stage, run_dir)
    steps = _last_metrics(run_dir / stage).get("step")
    how = f"{st.kind}" + (f" with `{algorithm}`" if algorithm else "") + (", LoRA" if adapter else "")
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {cfg.name} / {stage}",
        f"Stage `{stage}` of the lmmr1 run `{cfg.name}` ({how}; {steps or 0} of {st.steps} steps), trained "
        f"with lmmr1 {__version__}. These weights are a Hugging Face checkpoint: load them with `from_pretrained`"
        + (", vLLM or `lmmr1 eval`." if not adapter else "; `adapter/` holds the LoRA adapter they merge in."),
        "## Base model\n\n" + f"- model: `{cfg.model.path}`" + (f" (hub: `{base}`)" if base and base != cfg.model.path
                                                                  else "")  # fmt: skip
        + f"\n- this stage started from: `{start}`",
        "## Stage graph\n\n```\n" + _graph(cfg, stage) + "\n```",
        "## Data\n\n" + "\n".join(f"- `{d.label()}` (dataset `{d.dataset}`)" for d in st.data),
    ]
    metrics = {k: v for k, v in _last_metrics(run_dir / stage).items() if k != "step" and v is not None}
    if metrics:
        rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in metrics.items())
        parts.append(f"## Final metrics (step {steps})\n\n| metric | value |\n|---|---|\n{rows}")
    for name, results in _evals(cfg, stage, run_dir):
        parts.append(f"## Evaluation: `{name}`\n\n" + _results_table(results))
    config = yaml.safe_dump(redacted_config(cfg, stage), sort_keys=False).strip()
    parts.append("## Stage config\n\nSecrets are redacted (`***`).\n\n```yaml\n" + config + "\n```")
    return "\n\n".join(parts) + "\n"


def write_model_card(final_dir: Path, cfg: RunConfig, stage: str, run_dir: Path) -> Path:
    """``final_dir/README.md`` for ``stage``; the card says LoRA when ``final_dir`` holds an adapter."""
    final_dir = Path(final_dir)
    path = final_dir / "README.md"
    try:
        atomic_write_text(path, card_text(cfg, stage, Path(run_dir), adapter=(final_dir / "adapter").is_dir()))
    except Exception as exc:  # a card is worth less than the weights it describes
        print(f"warning: stage {stage}: no model card written ({type(exc).__name__}: {exc})", file=sys.stderr)
    return path


def refresh_model_card(cfg: RunConfig, stage: str, run_dir: Path) -> None:
    """Rewrite ``stage``'s card if it has one (an eval stage evaluating it has just finished)."""
    final = Path(run_dir) / stage / "final"
    if (final / "README.md").exists():
        write_model_card(final, cfg, stage, run_dir)
