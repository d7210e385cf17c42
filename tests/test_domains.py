"""Authoring an MGT domain: the test kit catches broken envs and rewards, `lmmr1 new domain` writes a working
package, the example package installs and runs both domains, and docs/domains.md runs as written."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from lmmr1_core import Observation
from lmmr1_core.cli import main
from lmmr1_core.testing import GARBAGE, check_env, check_reward

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples/lmmr1-domain-example"
DOC = ROOT / "docs/domains.md"


# -- the kit: a good env passes, each kind of broken env fails naming its check ---------------------------


class Walk:
    """A good env: walk right to the flag."""

    def __init__(self, length: int = 5, max_steps: int = 8):
        self.length, self.max_steps = length, max_steps

    def reset(self, seed):
        self.pos, self.goal, self.steps = 0, 1 + seed % (self.length - 1), 0
        return self._obs()

    def _obs(self):
        img = Image.new("RGB", (8 * self.length, 8), "white")
        img.putpixel((8 * self.pos, 0), (255, 0, 0))
        return Observation(f"at {self.pos}, flag at {self.goal}", [img])

    def step(self, action):
        self.steps += 1
        if action == "<answer>Right</answer>":
            self.pos = min(self.pos + 1, self.length - 1)
        success = self.pos == self.goal
        return self._obs(), float(success), success or self.steps >= self.max_steps, {"success": success}


class RandomReset(Walk):
    def reset(self, seed):
        import random

        super().reset(seed)
        self.goal = random.randint(1, 10**9)
        return self._obs()


class SeedIgnored(Walk):
    def reset(self, seed):
        return super().reset(0)


class RaisesOnLongText(Walk):
    def step(self, action):
        if len(action) > 10_000:
            raise ValueError("too long")
        return super().step(action)


class NeverDone(Walk):
    def step(self, action):
        obs, reward, _, info = super().step(action)
        return obs, reward, False, info


class BadImage(Walk):
    def step(self, action):
        _, reward, done, info = super().step(action)
        return Observation("x", [b"not a png"]), reward, done, info


class DoneAsInt(Walk):
    def step(self, action):
        obs, reward, done, info = super().step(action)
        return obs, reward, int(done), info


class GarbageWins(Walk):
    def step(self, action):
        obs, reward, done, info = super().step(action)
        return obs, reward, True, {"success": action == ""}


class Flaky(Walk):
    """Step depends on a counter that reset does not restore."""

    calls = 0

    def step(self, action):
        Flaky.calls += 1
        obs, _, done, info = super().step(action)
        return obs, float(Flaky.calls), done, info


RIGHT = ["<answer>Right</answer>"]


def test_kit_passes_a_good_env_and_checks_its_solutions():
    check_env(Walk, actions=RIGHT, max_turns=8, solutions={0: RIGHT, 2: RIGHT * 3})
    with pytest.raises(AssertionError, match=r"solution: seed 2: playing .* did not succeed"):
        check_env(Walk, actions=RIGHT, max_turns=8, solutions={2: RIGHT})


@pytest.mark.parametrize(
    "env, message",
    [
        (RandomReset, r"reset determinism: seed 0: two envs show different first observations"),
        (SeedIgnored, r"reset determinism: seeds \[0, 1, 2\] all show the same observation"),
        (RaisesOnLongText, r"step: seed 0, garbage '<answer>Up Up .*raised ValueError: too long"),
        (NeverDone, r"termination: seed 0: not done after 8 turns"),
        (BadImage, r"observation: seed 0, garbage '', image 0: image does not decode"),
        (DoneAsInt, r"step: seed 0, garbage '': done is 0, expected a bool"),
        (GarbageWins, r"garbage actions: seed 0, garbage '': counted as a success"),
        (Flaky, r"garbage actions: seed 0, garbage '': the same response from the same state gave different"),
    ],
)
def test_kit_catches_broken_envs(env, message):
    with pytest.raises(AssertionError, match=message):
        check_env(env, actions=RIGHT, max_turns=8)


def test_kit_runs_registered_envs_with_their_stage_options():
    check_env("sokoban", {"dim": [6, 6], "num_boxes": 1, "max_steps": 10}, actions=RIGHT, max_turns=10)
    with pytest.raises(AssertionError, match="termination: seed 0: not done after 5 turns"):
        check_env("sokoban", {"dim": [6, 6], "num_boxes": 1, "max_steps": 10}, actions=RIGHT, max_turns=5)


def exact(prompts, completions, answer, **kwargs):
    return [None if a is None else float(c.strip() == a) for c, a in zip(completions, answer)]


def test_kit_passes_a_good_reward_and_checks_expected_scores():
    check_reward(exact, ["3", " 3 ", "4"], expected=[1.0, 1.0, 0.0], answer=["3", "3", "3"],
                 not_applicable={"answer": [None]})  # fmt: skip
    with pytest.raises(AssertionError, match=r"scores \[1.0, 0.0\] != expected \[0.0, 0.0\]"):
        check_reward(exact, ["3", "4"], expected=[0.0, 0.0], answer=["3", "3"])
    check_reward("math_accuracy", ["<answer>7</answer>"], expected=[1.0], answer=["7"])


def short(prompts, completions, answer, **kwargs):
    return [1.0] * min(len(completions), 1)


def nan(prompts, completions, answer, **kwargs):
    return [float("nan")] * len(completions)


def relative(prompts, completions, answer, **kwargs):  # scores depend on the row's place in the batch
    return [float(i == 0) for i in range(len(completions))]


def fragile(prompts, completions, answer, **kwargs):
    return [float(c[0] == a) for c, a in zip(completions, answer)]


def never_none(prompts, completions, answer, **kwargs):
    return [float(c == str(a)) for c, a in zip(completions, answer)]


@pytest.mark.parametrize(
    "reward, message",
    [
        (short, r"the batch: 1 scores for 2 completions"),
        (nan, r"the batch: score 0 is nan"),
        (relative, r"reversing the batch gave .* rows leak into each other"),
        (fragile, r"raised IndexError: string index out of range"),
        (never_none, r"columns \{'answer': \[None\]\} should score None \(not applicable\), got \[0.0\]"),
    ],
)
def test_kit_catches_broken_rewards(reward, message):
    with pytest.raises(AssertionError, match=message):
        check_reward(reward, ["3", "44"], answer=["3", "3"], not_applicable={"answer": [None]})


def test_garbage_holds_what_a_policy_writes():
    assert "" in GARBAGE and max(map(len, GARBAGE)) >= 1_000_000 and any("\x00" in g for g in GARBAGE)


# -- lmmr1 new domain --------------------------------------------------------------------------------------


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_new_domain_writes_a_data_package_whose_code_meets_the_kit(tmp_path, plugin):
    result = CliRunner().invoke(main, ["new", "domain", "chart_qa", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "lmmr1-chart-qa"
    files = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
    assert files == ["README.md", "lmmr1_chart_qa/__init__.py", "pyproject.toml", "stages/chart_qa.yaml",
                     "tests/test_chart_qa.py"]  # fmt: skip
    pyproject = (pkg / "pyproject.toml").read_text()
    assert 'name = "lmmr1-chart-qa"' in pyproject
    assert '[project.entry-points.lmmr1]\nchart_qa = "lmmr1_chart_qa"' in pyproject
    module = plugin(_import(pkg / "lmmr1_chart_qa/__init__.py", "lmmr1_chart_qa"))
    try:
        tests = _import(pkg / "tests/test_chart_qa.py", "test_chart_qa_generated")
        for name in [n for n in dir(tests) if n.startswith("test_")]:
            getattr(tests, name)()  # the generated tests pass, through the registry
        assert len(module.chart_qa(n=3, seed=0)) == 3
        from lmmr1_core.config import load_config
        from lmmr1_core.run import validate

        stage = pkg / "stages/chart_qa.yaml"
        assert any("stage mgt_chart_qa: rl" in line for line in validate(load_config(stage, []), str(stage)))
    finally:
        sys.modules.pop("lmmr1_chart_qa", None)


def test_new_domain_writes_an_env_package_whose_env_meets_the_kit(tmp_path, plugin):
    result = CliRunner().invoke(main, ["new", "domain", "grid_walk", "--env", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "lmmr1-grid-walk"
    assert "stages/grid_walk.yaml" in result.output
    plugin(_import(pkg / "lmmr1_grid_walk/__init__.py", "lmmr1_grid_walk"))
    try:
        tests = _import(pkg / "tests/test_grid_walk.py", "test_grid_walk_generated")
        tests.test_env_contract()
        from lmmr1_core.config import load_config
        from lmmr1_core.errors import ConfigError
        from lmmr1_core.run import validate

        stage = pkg / "stages/grid_walk.yaml"
        validate(load_config(stage, []), str(stage))
        with pytest.raises(ConfigError, match="env 'grid_walk' has no option 'lenght' \\(did you mean 'length'"):
            validate(load_config(stage, ["stages.mgt_grid_walk.env.lenght=3"]), str(stage))
    finally:
        sys.modules.pop("lmmr1_grid_walk", None)


@pytest.mark.parametrize("name, message", [("Chart-QA", "use lower-case letters"), ("class", "use lower-case")])
def test_new_domain_refuses_bad_names_and_existing_directories(tmp_path, name, message):
    result = CliRunner().invoke(main, ["new", "domain", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert CliRunner().invoke(main, ["new", "domain", "ok", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(main, ["new", "domain", "ok", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "lmmr1-ok already exists" in again.output


# -- the example package, pip-installed ----------------------------------------------------------------------


def pip(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def lmmr1(*args, cwd=None):
    cmd = [sys.executable, "-m", "lmmr1_core.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="class")
def example_installed():
    """The example package pip-installed for one class's tests, and uninstalled again (before the tutorial's
    tests install packages registering the same names)."""
    installed = pip("install", "--no-deps", "--quiet", str(EXAMPLE))
    assert installed.returncode == 0, installed.stderr[-2000:]
    try:
        yield EXAMPLE
    finally:
        pip("uninstall", "--yes", "--quiet", "lmmr1-domain-example")
    gone = lmmr1("plugins", "--json")
    assert "domain_example" not in {p["name"] for p in json.loads(gone.stdout)}


class TestExamplePackage:
    def test_example_package_is_listed_and_passes_its_own_kit_tests(self, example_installed, tmp_path):
        plugins = lmmr1("plugins", "--json")
        found = {p["name"]: p for p in json.loads(plugins.stdout)}["domain_example"]
        assert found["distribution"] == "lmmr1-domain-example"
        assert found["registered"] == {"datasets": ["bar_charts"], "envs": ["maze"], "rewards": ["chart_answer"]}
        own = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
        assert own.returncode == 0 and "3 passed" in own.stdout, own.stdout[-2000:]

    def test_example_stage_file_runs_both_domains_and_the_viewer_draws_an_episode(self, example_installed, tmp_path):
        # the whole file validates; it runs without FRE and the before-evals (the tutorial's tests run those)
        stage = tmp_path / "ex.yaml"
        stage.write_text((EXAMPLE / "stages/domain_example.yaml").read_text())
        assert lmmr1("validate", stage, cwd=tmp_path).returncode == 0
        config = yaml.safe_load(stage.read_text())
        for name in ("fre", "eval_charts_before", "eval_maze_before"):
            del config["stages"][name]
        for name in ("mgt_charts", "mgt_maze"):
            del config["stages"][name]["init_from"]
            config["stages"][name]["steps"] = 1
        config["stages"]["eval_charts_after"]["data"][0]["n"] = 2
        stage.write_text(yaml.safe_dump(config))
        run = lmmr1("run", stage, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        out = tmp_path / "runs/domain_example"
        charts = json.loads((out / "eval_charts_after/final/results.json").read_text())
        assert charts["datasets"]["charts-heldout"]["n"] == 2 and "chart_answer" in charts["overall"]
        maze = json.loads((out / "eval_maze_after/final/results.json").read_text())
        assert maze["overall"]["n"] == 2 and maze["overall"]["turns"] == 2.0  # a random model never solves it
        row = json.loads((out / "mgt_maze/metrics.jsonl").read_text().splitlines()[0])
        assert {"reward/env/return", "reward/env/success"} <= set(row)
        assert "eval_charts_after charts-heldout" in run.stderr  # the closing view of every eval

        view = lmmr1("episodes", "show", out, "--stage", "mgt_maze", "--out", tmp_path / "maze.gif")
        assert view.returncode == 0, view.stderr
        episode = json.loads((out / "mgt_maze/samples.jsonl").read_text().splitlines()[0])
        gif = Image.open(tmp_path / "maze.gif")
        assert gif.n_frames == 1 + len(episode["responses"]) == 3 and gif.size == (256, 112 + 28)  # a caption under


# -- docs/domains.md runs as written --------------------------------------------------------------------------

BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)


def doc_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of the fenced blocks under the ``## `` heading starting with ``section``."""
    text = DOC.read_text()
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    [part] = [p for p in parts if p.startswith(section)]
    return BLOCK.findall(part)


def test_tutorial_blocks_are_all_executed_kinds_and_its_modules_are_the_example_packages():
    text = DOC.read_text()
    kinds = {lang for lang, _ in BLOCK.findall(text)}
    assert kinds <= {"bash", "python", "yaml", "console", "text"}, kinds
    for lang, body in BLOCK.findall(text):
        if lang in ("python", "yaml"):  # every code block is a file the tutorial writes and runs
            assert body.startswith("# file: "), body[:80]
    files = {b.split("\n", 1)[0][8:]: b.split("\n", 1)[1] for _, b in BLOCK.findall(text) if b.startswith("# file: ")}
    assert files["lmmr1_bar_charts/charts.py"] == (EXAMPLE / "lmmr1_domain_example/charts.py").read_text()
    assert files["lmmr1_maze/maze.py"] == (EXAMPLE / "lmmr1_domain_example/maze.py").read_text()


def _shims(bin_dir: Path) -> dict[str, str]:
    """``lmmr1``, ``pip``, ``python`` and ``pytest`` on PATH, all this interpreter's."""
    bin_dir.mkdir()
    for name, args in {"python": "", "pip": "-m pip", "pytest": "-m pytest -p no:cacheprovider",
                       "lmmr1": "-m lmmr1_core.cli"}.items():  # fmt: skip
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PIP_QUIET": "1"}


def run_tutorial(section: str, tmp_path: Path) -> Path:
    """Write the section's files and run its commands in order, in one working directory that follows
    its ``cd``s; a ``console`` block's output must appear as shown. Returns the final directory."""
    env = _shims(tmp_path / "bin")
    cwd = tmp_path / "work"
    cwd.mkdir()
    for lang, body in doc_blocks(section):
        if body.startswith("# file: "):
            path = cwd / body.split("\n", 1)[0][8:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body.split("\n", 1)[1])
        elif lang == "bash":
            script = f"set -e\n{body}\npwd > '{tmp_path}/cwd'\n"
            done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{body}\n---\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            cwd = Path((tmp_path / "cwd").read_text().strip())
        elif lang == "console":
            command, *shown = body.rstrip("\n").split("\n")
            done = subprocess.run(["bash", "-c", command[2:]], cwd=cwd, env=env, capture_output=True, text=True)
            for line in shown:
                assert line in done.stdout + done.stderr, f"{command}: expected {line!r}, got {done.stderr[-2000:]}"
    return cwd


def cleanup(tmp_path: Path) -> None:
    [(_, body)] = doc_blocks("Cleaning up")
    subprocess.run(["bash", "-c", body], env=_shims(tmp_path / "cleanup-bin"), capture_output=True, timeout=600)


def test_tutorial_data_domain_runs_as_written(tmp_path):
    try:
        pkg = run_tutorial("1. A data domain", tmp_path)
    finally:
        cleanup(tmp_path)
    assert pkg.name == "lmmr1-bar-charts"
    assert len((pkg / "runs/data/bar_charts-n32-s1/data.jsonl").read_text().splitlines()) == 32
    before = json.loads((pkg / "runs/bar_charts/eval_before/final/results.json").read_text())
    after = json.loads((pkg / "runs/bar_charts/eval_after/final/results.json").read_text())
    assert before["overall"]["n"] == after["overall"]["n"] == 4 and "chart_answer" in after["overall"]
    assert len((pkg / "runs/bar_charts/mgt_charts/metrics.jsonl").read_text().splitlines()) == 2


def test_tutorial_env_domain_runs_as_written(tmp_path):
    try:
        pkg = run_tutorial("2. An env domain", tmp_path)
    finally:
        cleanup(tmp_path)
    assert pkg.name == "lmmr1-maze"
    after = json.loads((pkg / "runs/maze/eval_after/final/results.json").read_text())
    assert after["overall"]["n"] == 2 and {"success", "return", "turns"} <= set(after["overall"])
    assert Image.open(pkg / "maze-episode.gif").n_frames == 3  # the start and two turns
