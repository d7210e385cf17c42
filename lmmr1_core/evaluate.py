"""The ``eval`` stage: greedy accuracy, or mean@k / pass@k with sampling, per data set and category.

Eval stages sit in the stage graph like training ones (``init_from: fre`` evaluates fre's final
weights; no ``init_from`` evaluates the starting model), so one run reports the before/after gain.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmmr1_core.checkpoint import atomic_dir
from lmmr1_core.distributed import Replicas, replicas_of
from lmmr1_core.metrics import main_process
from lmmr1_core.rewards import RewardSet, reward_columns
from lmmr1_core.trainer import StageContext, encode_sample, generate

CATEGORY_KEYS = ("category", "subject")


def _category(sample, key: str | None) -> str | None:
    for k in [key] if key else CATEGORY_KEYS:
        if k in sample.meta and sample.meta[k] is not None:
            return str(sample.meta[k])
    return None


def summarize(rows: list[dict[str, Any]], reward_names: list[str], k: int) -> dict[str, Any]:
    """Aggregate per-prompt rows into mean@k per reward and pass@k (any completion scored 1.0).

    The denominator is every prompt of the data: a completion no reward could score (``None``) counts as 0,
    and so does a prompt dropped before generation (too long, unreadable image); ``n_unscored`` and
    ``n_dropped`` say how many there were.
    """

    def agg(subset: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(subset)}
        for name in reward_names:
            scores = [0.0 if s is None else s for r in subset for s in r["scores"][name]]
            out[f"{name}/mean@{k}" if k > 1 else name] = sum(scores) / len(scores) if scores else None
            if k > 1:
                passed = [any(s == 1.0 for s in r["scores"][name]) for r in subset]
                out[f"{name}/pass@{k}"] = sum(passed) / len(passed) if passed else None
        out["n_unscored"] = sum(s is None for r in subset if not r.get("dropped") for n in reward_names
                                for s in r["scores"][n])  # fmt: skip
        out["n_dropped"] = sum(bool(r.get("dropped")) for r in subset)
        return out

    by_source: dict[str, list] = defaultdict(list)
    by_category: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
        if r["category"] is not None:
            by_category[(r["source"], r["category"])].append(r)
    return {
        "overall": agg(rows),
        "datasets": {src: agg(rs) for src, rs in by_source.items()},
        "categories": {f"{src} / {cat}": agg(rs) for (src, cat), rs in sorted(by_category.items())},
        "samples_per_prompt": k,
    }


def format_table(results: dict[str, Any]) -> str:
    rows = [("overall", results["overall"])] + list(results["datasets"].items()) + list(results["categories"].items())
    keys = [k for k in results["overall"] if k not in ("n", "n_unscored", "n_dropped")] + ["n_unscored", "n_dropped"]
    head = ["", "n", *keys]
    body = [[name, str(v["n"]), *(_cell(v.get(k)) for k in keys)] for name, v in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *body])
    splits = [f"{src}: split {split}" for src, split in results.get("splits", {}).items()]
    return "\n".join([*splits, table])


def _cell(v: Any) -> str:
    return "-" if v is None else str(v) if isinstance(v, int) else f"{v:.4f}"


def compare_table(result_files: dict[str, Path]) -> str:
    """One line per eval stage and data set: the before/after view of a run."""
    lines = ["eval results:"]
    for stage, path in result_files.items():
        res = json.loads(Path(path).read_text())
        for src, v in res["datasets"].items():
            metrics = ", ".join(f"{k} {v[k]:.4f}" for k in v if not k.startswith("n") and v[k] is not None)
            lines.append(f"  {stage:16s} {src}: {metrics} (n={v['n']})")
    return "\n".join(lines)


def run_env_eval(ctx: StageContext) -> None:
    """Success rate, mean return and mean turns over seeded episodes (greedy when eval_samples is 1)."""
    from lmmr1_core.episodes import episode_record, run_episodes

    cfg, k = ctx.config, ctx.config.eval_samples
    ctx.backend.eval()
    rows: list[dict[str, Any]] = []
    chunk = max(1, cfg.micro_batch_size // k)
    replicas = replicas_of(ctx.backend)
    samples = [ctx.samples[i] for i in replicas.share(len(ctx.samples))]  # torchrun: this replica's share
    for i in tqdm(range(0, len(samples), chunk), desc=f"{ctx.name} (eval, episodes)", dynamic_ncols=True,
                  disable=not main_process()):
        batch = samples[i : i + chunk]
        episodes = run_episodes(ctx, [s for s in batch for _ in range(k)], greedy=k == 1)
        for j, s in enumerate(batch):
            eps = episodes[j * k : (j + 1) * k]
            rows.append({"id": s.id, "source": s.source, "category": _category(s, cfg.category_key),
                         "episodes": [episode_record(e) for e in eps],
                         "scores": {"success": [float(e.success) for e in eps],
                                    "return": [sum(e.turn_rewards) for e in eps],
                                    "turns": [float(len(e.responses)) for e in eps]}})  # fmt: skip
    rows = _gather(ctx, replicas, rows)
    _write_results(ctx, rows, summarize(rows, ["success", "return", "turns"], k))


def _gather(ctx: StageContext, replicas: Replicas, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every replica's rows in sample order (the shares are contiguous), and the counters summed."""
    parts = replicas.gather((rows, dict(ctx.counters)))
    ctx.counters.clear()
    for _, counts in parts:
        for key, n in counts.items():
            ctx.counters[key] = ctx.counters.get(key, 0) + n
    return [r for part, _ in parts for r in part]


def _write_results(ctx: StageContext, rows: list[dict[str, Any]], results: dict[str, Any]) -> None:
    if not main_process():  # torchrun: rank 0 writes
        return
    results["counters"] = dict(ctx.counters)
    splits = {s.source: str(s.meta["split"]) for s in ctx.samples if s.meta.get("split") is not None}
    if splits:  # which split of each benchmark was read (a loader records it in meta["split"])
        results["splits"] = splits
    ctx.log.samples(0, rows)
    table = format_table(results)
    with atomic_dir(ctx.out_dir / "final") as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2))
        (tmp / "table.txt").write_text(table + "\n")
    print(f"{ctx.name}:\n{table}", file=sys.stderr)


def run_eval(ctx: StageContext) -> None:
    if ctx.config.env is not None:
        return run_env_eval(ctx)
    cfg, backend = ctx.config, ctx.backend
    k, gen = cfg.eval_samples, cfg.generation
    names = [r.name for r in cfg.rewards]
    rewards = RewardSet.from_specs(cfg.rewards)
    backend.eval()
    rows: list[dict[str, Any]] = []
    chunk = max(1, cfg.micro_batch_size * 4 // k)
    replicas = replicas_of(backend)
    mine = [ctx.samples[i] for i in replicas.share(len(ctx.samples))]  # torchrun: this replica's share
    bar = tqdm(total=len(mine), desc=f"{ctx.name} (eval)", dynamic_ncols=True, disable=not main_process())
    try:
        for i in range(0, len(mine), chunk):
            batch, messages, prompts = [], [], []
            for sample in mine[i : i + chunk]:
                encoded = encode_sample(ctx, sample, gen.max_prompt_length)
                if encoded is None:  # counted as 0 in the results, and as n_dropped
                    rows.append(_row(sample, cfg, [], {n: [None] * k for n in names}, dropped=True))
                    continue
                batch.append(sample)
                messages += [encoded[0]] * k
                prompts += [encoded[1]] * k
            bar.update(len(mine[i : i + chunk]))
            if not batch:
                continue
            completions, _ = generate(ctx, prompts, greedy=k == 1)
            texts = [backend.decode(c) for c in completions]
            samples = [s for s in batch for _ in range(k)]
            _, per = rewards(messages, texts, reward_columns(samples, completions))
            for j, s in enumerate(batch):
                sl = slice(j * k, (j + 1) * k)
                rows.append(_row(s, cfg, texts[sl], {n: per[n][sl] for n in names}))
    finally:
        bar.close()
        rewards.close()
    ctx.counters.update(rewards.counters())
    rows = _gather(ctx, replicas, rows)
    _write_results(ctx, rows, summarize(rows, names, k))


def _row(sample, cfg, completions: list[str], scores: dict[str, list], dropped: bool = False) -> dict[str, Any]:
    row = {"id": sample.id, "source": sample.source, "category": _category(sample, cfg.category_key),
           "answer": sample.answer, "completions": completions, "scores": scores}  # fmt: skip
    return {**row, "dropped": True} if dropped else row
