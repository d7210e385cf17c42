"""``lmmr1 new domain NAME [--env]``: a ready-to-edit MGT domain package that installs, tests and runs as is.

A data domain gets a seeded toy dataset (count the dots) and its verifier; an env domain gets a toy
multi-turn env (walk a corridor to the flag). Both get a pyproject with the ``lmmr1`` entry point, a
stage file (eval before, MGT, eval after) on a tiny model, and tests built on ``lmmr1_core.testing``.
docs/domains.md walks from this skeleton to a real domain.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from lmmr1_core.errors import ConfigError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$what for lmmr1"
requires-python = ">=3.10"
dependencies = ["lmmr1", "pillow"]

# The whole integration: lmmr1 loads every entry point in the group "lmmr1".
[project.entry-points.lmmr1]
$name = "$pkg"

[tool.setuptools]
packages = ["$pkg"]
"""

README = """\
# $dist

$what for lmmr1, started with `lmmr1 new domain $name$flag`.

```bash
pip install -e .                    # registers the plugin: `lmmr1 plugins` lists `$name`
pytest -q tests                     # the contract checks of lmmr1_core.testing
lmmr1 run stages/$name.yaml         # eval before, MGT, eval after on a tiny model
```
"""

DATA_PLUGIN = '''\
"""$name: an MGT data domain for lmmr1 (written by `lmmr1 new domain $name`; make it yours).

- dataset `$name`: seeded image + question + answer problems (the toy: count the dots);
- reward `${name}_answer`: the verifier (the answer inside <answer> equals the gold).
"""

import io
import random
import re

from PIL import Image, ImageDraw

from lmmr1_core import Sample, hookimpl

FORMAT = " Think inside <think> </think>, then give the final answer inside <answer> </answer>."


def make_problem(rng: random.Random) -> tuple[Image.Image, str, str]:
    """(figure, question, answer): replace with your domain's generator."""
    count = rng.randint(1, 6)
    img = Image.new("RGB", (112, 112), "white")
    draw = ImageDraw.Draw(img)
    for cell in rng.sample(range(16), count):  # one dot per cell of a 4x4 grid: none overlap
        x, y = 28 * (cell % 4) + 6, 28 * (cell // 4) + 6
        draw.ellipse([x, y, x + 16, y + 16], fill=(220, 60, 60))
    return img, "How many dots are in the picture?" + FORMAT, str(count)


def $name(n: int = 64, seed: int = 0) -> list[Sample]:
    """``n`` problems, the same for the same ``seed`` (train and eval use different seeds)."""
    rng = random.Random(f"$name-{seed}")
    samples = []
    for i in range(n):
        img, question, answer = make_problem(rng)
        buf = io.BytesIO()
        img.save(buf, format="PNG")  # PNG bytes: small, and decoded by the model's processor
        content = [{"type": "image", "image": buf.getvalue()}, {"type": "text", "text": question}]
        samples.append(Sample(messages=[{"role": "user", "content": content}], answer=answer,
                              images=[buf.getvalue()], id=f"$name-{seed}-{i}"))  # fmt: skip
    return samples


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def ${name}_answer(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the last <answer> holds the gold answer, else 0.0; None for a row without a gold."""
    scores = []
    for completion, gold in zip(completions, answer):
        found = _ANSWER.findall(completion)
        scores.append(None if gold is None else float(bool(found) and found[-1].strip() == str(gold)))
    return scores


@hookimpl
def register_datasets(register):
    register("$name", $name)


@hookimpl
def register_rewards(register):
    register("${name}_answer", ${name}_answer)
'''

DATA_STAGES = """\
# MGT on $name with an eval before and after, on a tiny random Qwen2.5-VL model (CPU, under a
# minute). For a real run: model.path = your FRE checkpoint (or an FRE stage and `init_from: fre`),
# more steps, a larger group_size and max_new_tokens.
name: $name
model: {backend: hf, path: runs/tiny-vl-model, tiny: vl, max_pixels: 12544}
stages:
  eval_before:
    kind: eval
    data: [{dataset: $name, n: 4, seed: 99, name: $name-heldout}]
    rewards: [{name: ${name}_answer}]
    generation: {max_new_tokens: 16}
  mgt_$name:
    kind: rl
    data: [{dataset: $name, n: 32, seed: 1}]
    rewards: [{name: ${name}_answer}, {name: think_answer_format, weight: 0.5}]
    algorithm: {name: grpo, group_size: 2}
    generation: {max_new_tokens: 16}
    steps: 2
    batch_size: 2
    optim: {freeze: [model.visual]}
  eval_after:
    kind: eval
    init_from: mgt_$name
    data: [{dataset: $name, n: 4, seed: 99, name: $name-heldout}]
    rewards: [{name: ${name}_answer}]
    generation: {max_new_tokens: 16}
"""

DATA_TEST = '''\
"""Checks of the $name domain (run after `pip install -e .`, which registers the plugin)."""

from lmmr1_core import load_dataset
from lmmr1_core.testing import check_reward


def test_dataset_is_seeded_and_every_sample_has_an_image_and_an_answer():
    first, again = load_dataset("$name", n=8, seed=0), load_dataset("$name", n=8, seed=0)
    assert [s.answer for s in first] == [s.answer for s in again]
    assert [s.answer for s in first] != [s.answer for s in load_dataset("$name", n=8, seed=1)]
    assert all(len(s.images) == 1 and s.answer is not None for s in first)


def test_verifier_contract_and_scores():
    check_reward("${name}_answer", ["<answer>3</answer>", "<answer>4</answer>", "3"], expected=[1.0, 0.0, 0.0],
                 answer=["3", "3", "3"], not_applicable={"answer": [None]})  # fmt: skip


def test_every_gold_answer_scores_one():
    samples = load_dataset("$name", n=16, seed=2)
    check_reward("${name}_answer", [f"<answer>{s.answer}</answer>" for s in samples], expected=[1.0] * 16,
                 answer=[s.answer for s in samples])  # fmt: skip
'''

ENV_PLUGIN = '''\
"""$name: an MGT env domain for lmmr1 (written by `lmmr1 new domain $name --env`; make it yours).

The toy: a corridor of ``length`` squares; walk to the flag with <answer>Left</answer> or
<answer>Right</answer>, one move a turn. Image + text observations, seeded, ends by itself.
"""

import random
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from lmmr1_core import Observation, hookimpl

MOVES = {"left": -1, "right": 1}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def parse_action(text: str) -> tuple[str | None, str | None]:
    """``(action, None)`` or ``(None, reason)``; never raises, whatever the text."""
    found = _ANSWER.findall(text or "")
    if not found:
        return None, "no <answer>...</answer>"
    word = found[-1].strip().lower()
    if word not in MOVES:
        return None, f"not an action: {word[:40]!r} (use Left or Right)"
    return word, None


@dataclass
class ${Class}Env:
    """``reset(seed) -> Observation``; ``step(response) -> (Observation, reward, done, info)``.

    Its fields are the stage file's env options (``lmmr1 validate`` rejects any other key)."""

    length: int = 7
    max_steps: int = 12  # turns before the episode ends unsolved
    step_reward: float = -0.05
    goal_reward: float = 1.0
    format_penalty: float = -0.1  # a turn without a valid move
    player: int = field(init=False, default=0)
    goal: int = field(init=False, default=0)
    steps: int = field(init=False, default=0)

    def reset(self, seed: int) -> Observation:
        rng = random.Random(f"$name-{self.length}-{seed}")  # everything random comes from the seed
        self.player, self.goal = rng.sample(range(self.length), 2)
        self.steps = 0
        return self.observation()

    def observation(self) -> Observation:
        row = "".join("P" if i == self.player else "G" if i == self.goal else "." for i in range(self.length))
        img = Image.new("RGB", (16 * self.length, 16), (235, 235, 225))
        draw = ImageDraw.Draw(img)
        for i, colour in ((self.goal, (40, 170, 70)), (self.player, (40, 90, 220))):
            draw.ellipse([16 * i + 2, 2, 16 * i + 13, 13], fill=colour)
        return Observation(text=f"The corridor (P you, G goal): {row}", images=[img])

    def step(self, response: str) -> tuple[Observation, float, bool, dict[str, Any]]:
        action, error = parse_action(response)
        self.steps += 1
        reward = self.format_penalty if error else self.step_reward
        if action:
            self.player = min(self.length - 1, max(0, self.player + MOVES[action]))
        success = self.player == self.goal
        reward += self.goal_reward if success else 0.0
        info = {"success": success, "actions": [action] if action else [], "format_error": error}
        return self.observation(), reward, success or self.steps >= self.max_steps, info

    def solution(self) -> list[str]:
        """The moves from here to the goal (tests use it as a known-good episode)."""
        move = "right" if self.goal > self.player else "left"
        return [move] * abs(self.goal - self.player)


@hookimpl
def register_envs(register):
    register("$name", ${Class}Env)
'''

ENV_STAGES = """\
# MGT on the $name env with an eval before and after, on a tiny random Qwen2.5-VL model (CPU, under a
# minute). For a real run: model.path = your FRE checkpoint (or an FRE stage and `init_from: fre`),
# more steps, a larger group_size, more max_turns.
name: $name
model: {backend: hf, path: runs/tiny-vl-model, tiny: vl, max_pixels: 12544}
stages:
  eval_before:
    kind: eval
    data: [{dataset: env_seeds, n: 2, seed: 99, name: $name}]
    env: &env {name: $name, length: 7, max_steps: 12, max_turns: 3, max_episode_tokens: 1024,
               instruction: "Answer one move inside <answer> </answer>: Left or Right."}
    generation: {max_new_tokens: 8}
  mgt_$name:
    kind: rl
    data: [{dataset: env_seeds, n: 32, seed: 1}]
    env: *env
    algorithm: {name: grpo, group_size: 2}
    generation: {max_new_tokens: 8}
    steps: 2
    batch_size: 1
    optim: {freeze: [model.visual]}
  eval_after:
    kind: eval
    init_from: mgt_$name
    data: [{dataset: env_seeds, n: 2, seed: 99, name: $name}]
    env: *env
    generation: {max_new_tokens: 8}
"""

ENV_TEST = '''\
"""Checks of the $name env (run after `pip install -e .`, which registers the plugin)."""

from lmmr1_core.testing import check_env

from $pkg import ${Class}Env

OPTIONS = {"length": 7, "max_steps": 12}


def test_env_contract():
    solutions = {}
    for seed in (0, 1, 2):
        env = ${Class}Env(**OPTIONS)
        env.reset(seed)
        solutions[seed] = [f"<answer>{move}</answer>" for move in env.solution()]
    check_env("$name", OPTIONS, actions=["<answer>Left</answer>", "<answer>Right</answer>"], max_turns=12,
              solutions=solutions)  # fmt: skip
'''


def write_domain(name: str, env: bool = False, parent: str | Path = ".") -> Path:
    """Write the package ``lmmr1-NAME/`` under ``parent``; returns its directory."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ConfigError(f"domain name {name!r}: use lower-case letters, digits and _ (a Python name), e.g. chart_qa")
    dist = "lmmr1-" + name.replace("_", "-")
    out = Path(parent) / dist
    if out.exists():
        raise ConfigError(f"{out} already exists; pick another name or remove it")
    values = {"name": name, "pkg": f"lmmr1_{name}", "dist": dist, "flag": " --env" if env else "",
              "Class": "".join(part.title() for part in name.split("_")),
              "what": f"An MGT {'env' if env else 'data'} domain ({name})"}  # fmt: skip
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"lmmr1_{name}/__init__.py": ENV_PLUGIN if env else DATA_PLUGIN,
        f"stages/{name}.yaml": ENV_STAGES if env else DATA_STAGES,
        f"tests/test_{name}.py": ENV_TEST if env else DATA_TEST,
    }
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values))
    return out
