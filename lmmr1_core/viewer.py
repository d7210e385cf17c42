"""``lmmr1 episodes show``: replay a logged episode in its env and write the frames as a GIF,
so a person can watch what the agent did."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from lmmr1_core import load_env
from lmmr1_core.config import EnvSpec
from lmmr1_core.errors import LmmError


def _find_episode(run_dir: Path, stage: str | None, index: int) -> tuple[str, dict]:
    stages = [stage] if stage else sorted(p.name for p in run_dir.iterdir() if (p / "samples.jsonl").exists())
    for name in stages:
        path = run_dir / name / "samples.jsonl"
        if not path.exists():
            continue
        rows = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows += row.get("episodes") or ([row] if "env_seed" in row else [])
        if rows:
            if index >= len(rows):
                raise LmmError(f"{path}: {len(rows)} episodes; --index {index} is past the end")
            return name, rows[index]
    raise LmmError(f"{run_dir}: no logged episodes (stages with an `env` write them to samples.jsonl)")


def _caption(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (max(img.width, 256), img.height + 28), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((4, img.height + 8), text[:60], fill="black")
    return out


def render_episode(run_dir: str | Path, stage: str | None = None, index: int = 0, out: str | None = None) -> Path:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise LmmError(f"{run_dir}: not a run directory (no config.yaml)")
    config = yaml.safe_load(config_path.read_text())
    name, episode = _find_episode(run_dir, stage, index)
    spec = EnvSpec.model_validate(config["stages"][name]["env"])
    env = load_env(spec.name, **spec.env_config())
    obs = env.reset(episode["env_seed"])
    frames = [_caption(obs.images[0], f"start (seed {episode['env_seed']})")]
    for turn, response in enumerate(episode["responses"], 1):
        obs, reward, done, info = env.step(response)
        said = ", ".join(info.get("actions") or []) or f"invalid: {info.get('format_error')}"
        frames.append(_caption(obs.images[0], f"{turn}: {said} ({reward:+.1f})"))
        if done:
            break
    path = Path(out or run_dir / name / f"episode-{index}.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=700, loop=0)
    return path
