"""The third-party path for real: pip-install the example plugin package, list it, run a stage naming it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples/lmmr1-reward-example"


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


def lmmr1(*args, cwd=None):
    cmd = [sys.executable, "-m", "lmmr1_core.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_pip_installed_plugin_is_listed_and_usable(tiny_text, tmp_path):
    installed = pip("install", "--no-deps", "--quiet", str(EXAMPLE))
    assert installed.returncode == 0, installed.stderr[-2000:]
    try:
        plugins = lmmr1("plugins", "--json")
        assert plugins.returncode == 0, plugins.stderr
        found = {p["name"]: p for p in json.loads(plugins.stdout)}["reward_example"]
        assert found["distribution"] == "lmmr1-reward-example" and found["version"] == "0.1.0"
        assert found["registered"] == {"rewards": ["answer_is_digits"]}

        stage = tmp_path / "s.yaml"
        stage.write_text(f"""
name: ex
model: {{backend: hf, path: {tiny_text}}}
output_dir: {tmp_path / "runs"}
stages:
  rl:
    kind: rl
    data: [{{dataset: arithmetic, n: 8}}]
    rewards: [{{name: answer_is_digits}}]
    algorithm: {{group_size: 2}}
    generation: {{max_new_tokens: 4}}
    steps: 1
    batch_size: 2
""")
        run = lmmr1("run", stage)
        assert run.returncode == 0, run.stderr[-2000:]
        row = json.loads((tmp_path / "runs/ex/rl/metrics.jsonl").read_text().splitlines()[0])
        assert "reward/answer_is_digits" in row
    finally:
        pip("uninstall", "--yes", "--quiet", "lmmr1-reward-example")
    gone = lmmr1("plugins", "--json")
    assert "reward_example" not in {p["name"] for p in json.loads(gone.stdout)}


def test_stage_naming_a_broken_plugins_reward_fails_with_its_error(tmp_path):
    # a plugin whose import fails: its entry point is installed, its module raises
    pkg = tmp_path / "broken"
    (pkg / "lmmr1_broken_example").mkdir(parents=True)
    (pkg / "lmmr1_broken_example/__init__.py").write_text("raise ImportError('needs libfoo 2.0')\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "lmmr1-broken-example"\nversion = "0.0.1"\n'
        '[project.entry-points.lmmr1]\nbroken_example = "lmmr1_broken_example"\n'
        '[tool.setuptools]\npackages = ["lmmr1_broken_example"]\n'
    )
    assert pip("install", "--no-deps", "--quiet", str(pkg)).returncode == 0
    try:
        listing = lmmr1("plugins")
        assert listing.returncode == 0
        assert "broken_example (lmmr1-broken-example): FAILED TO LOAD: ImportError: needs libfoo 2.0" in listing.stdout
        assert "builtin_rewards" in listing.stdout  # the others still load
        stage = tmp_path / "s.yaml"
        stage.write_text(
            "name: b\nmodel: {backend: hf, path: x/y}\nstages:\n  rl:\n    kind: rl\n"
            "    data: [{dataset: arithmetic, n: 4}]\n    rewards: [{name: broken_reward}]\n    steps: 1\n"
        )
        result = lmmr1("validate", stage)
        assert result.returncode == 2
        assert "unknown reward 'broken_reward'" in result.stderr
        assert (
            "plugin 'broken_example' (lmmr1-broken-example) failed to load: ImportError: needs libfoo 2.0"
            in result.stderr
        )
    finally:
        pip("uninstall", "--yes", "--quiet", "lmmr1-broken-example")
