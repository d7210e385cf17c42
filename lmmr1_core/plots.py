"""Pictures of a run: each stage's reward and accuracy curves as a PNG beside its metrics.jsonl.

A reader sees at a glance whether a stage learned, without tensorboard. Drawing is a courtesy, never a
reason for a run to fail: the run calls ``draw_stage_quietly``, which warns in one line when matplotlib is
missing or a plot cannot be drawn. matplotlib's Agg backend draws without a display.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PNG = "curves.png"
_NOT_CURVES = ("/timeouts", "/errors", "/not_applicable", "/std")


def read_metrics(stage_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a stage's metrics.jsonl; a half-written last line (a kill mid-write) is skipped."""
    path = Path(stage_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def default_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The curves worth a look: every reward (the mean first, then each named reward, accuracy among them),
    env success; a stage without rewards (sft) shows its loss."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    keys = [k for k in keys if not k.endswith(_NOT_CURVES)]
    rewards = [k for k in keys if k.startswith("reward/")]
    chosen = rewards + [k for k in keys if ("success" in k or "accuracy" in k) and k not in rewards]
    return chosen or [k for k in ("loss",) if k in keys]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _smooth(values: list[float]) -> list[float]:
    """A trailing mean over a tenth of the stage: RL rewards are noisy step to step."""
    w = max(1, len(values) // 10)
    return [sum(values[max(0, i - w + 1) : i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(values))]


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def draw_curves(runs: dict[str, list[dict[str, Any]]], metrics: list[str], title: str, out: str | Path) -> Path:
    """One panel per metric, one line per run (raw faint, smoothed solid); written atomically to ``out``."""
    plt, fig, axes = _figure(len(metrics))
    for ax, key in zip(axes, metrics):
        for i, (label, rows) in enumerate(runs.items()):
            steps, values = _series(rows, key)
            if not values:
                continue
            colour = f"C{i % 10}"
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
            ax.plot(steps, _smooth(values), color=colour, linewidth=2, label=label if len(runs) > 1 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out


def draw_stage(stage_dir: str | Path, metrics: list[str] | None = None) -> Path | None:
    """``<stage>/curves.png`` from its metrics.jsonl; None when the stage logged no steps (an eval stage)."""
    stage_dir = Path(stage_dir)
    rows = read_metrics(stage_dir)
    keys = [k for k in metrics or default_metrics(rows) if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    return draw_curves({stage_dir.name: rows}, keys, f"{stage_dir.parent.name} / {stage_dir.name}",
                       stage_dir / PNG)  # fmt: skip


def draw_stage_quietly(stage_dir: str | Path) -> None:
    """What a run calls when a stage finishes, or is found finished on a rerun (a missing or stale picture
    is drawn then): any failure is one warning line, and training goes on."""
    from lmmr1_core.metrics import main_process

    stage_dir = Path(stage_dir)
    png, log = stage_dir / PNG, stage_dir / "metrics.jsonl"
    if not main_process() or not log.exists() or (png.exists() and png.stat().st_mtime >= log.stat().st_mtime):
        return
    try:
        draw_stage(stage_dir)
    except ImportError:
        print(f"warning: no {PNG} for {stage_dir}: matplotlib is not installed (pip install matplotlib)",
              file=sys.stderr)  # fmt: skip
    except Exception as exc:  # a picture is never worth a failed run
        print(f"warning: could not draw {stage_dir / PNG}: {type(exc).__name__}: {exc}", file=sys.stderr)


def stage_dirs(run_dir: str | Path) -> list[Path]:
    """A run's stages that logged steps, in the order they were written."""
    found = [p.parent for p in Path(run_dir).glob("*/metrics.jsonl") if read_metrics(p.parent)]
    return sorted(found, key=lambda p: (p / "metrics.jsonl").stat().st_mtime)


def compare_runs(run_dirs: list[str | Path], metrics: list[str] | None = None, out: str | Path | None = None
                 ) -> list[Path]:  # fmt: skip
    """For each stage name the runs share, one PNG overlaying their curves (``out`` is a directory, default
    the first run's ``compare/``); a stage only one run has is drawn alone."""
    runs = [Path(r) for r in run_dirs]
    out_dir = Path(out) if out else runs[0] / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [str(r) for r in runs] if len({r.name for r in runs}) < len(runs) else [r.name for r in runs]
    names = list(dict.fromkeys(s.name for r in runs for s in stage_dirs(r)))
    written = []
    for name in names:
        by_run = {label: read_metrics(r / name) for label, r in zip(labels, runs)}
        by_run = {k: v for k, v in by_run.items() if v}
        keys = metrics or list(dict.fromkeys(k for rows in by_run.values() for k in default_metrics(rows)))
        keys = [k for k in keys if any(k in r for rows in by_run.values() for r in rows)]  # a stage without them
        if keys:
            written.append(draw_curves(by_run, keys, f"stage {name}: " + " vs ".join(by_run), out_dir / f"{name}.png"))
    return written
