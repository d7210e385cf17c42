import json
from importlib import metadata

import pytest
from click.testing import CliRunner

import lmmr1_core
from lmmr1_core import hookimpl, plugins
from lmmr1_core.cli import main
from lmmr1_core.errors import PluginError


def test_builtins_are_loaded_through_entry_points():
    report = {p["name"]: p for p in plugins.plugin_report()}
    assert report["builtin_rewards"]["distribution"] == "lmmr1"
    assert "math_accuracy" in report["builtin_rewards"]["registered"]["rewards"]
    assert report["builtin_models"]["registered"]["models"] == ["hf", "megatron"]
    assert set(report["builtin_stages"]["registered"]["stages"]) == {"rl", "sft", "eval"}


def test_plugins_command_lists_what_each_plugin_registered():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = {p["name"]: p for p in json.loads(result.output)}
    assert data["builtin_datasets"]["registered"]["datasets"] == [
        "jsonl",
        "json",
        "parquet",
        "saved",
        "hub",
        "arithmetic",
        "geometry",
        "perce_reason",
        "perception",
        "mathvista",
        "mathverse",
        "mathvision",
        "mmstar",
        "math500",
        "gpqa_diamond",
    ]
    text = CliRunner().invoke(main, ["plugins"]).output
    assert "builtin_algorithms (lmmr1 0.1.0)" in text and "algorithms: grpo" in text


def test_in_process_plugin_registers_a_reward(plugin):
    class Plugin:
        @hookimpl
        def register_rewards(self, register):
            register("shout", lambda prompts, completions, **kw: [float(c.isupper()) for c in completions])

    plugin(Plugin(), name="shouty")
    reward = lmmr1_core.load_reward("shout")
    assert reward(prompts=["p", "p"], completions=["YES", "no"]) == [1.0, 0.0]
    assert plugins.lookup("rewards", "shout").plugin == "shouty"


def test_duplicate_name_is_an_error_naming_both_plugins(plugin):
    class Copycat:
        @hookimpl
        def register_rewards(self, register):
            register("math_accuracy", lambda prompts, completions, **kw: [0.0] * len(completions))

    plugin(Copycat(), name="copycat")
    with pytest.raises(PluginError, match="'builtin_rewards' and plugin 'copycat'"):
        plugins.registry("rewards")


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(PluginError) as err:
        lmmr1_core.load_reward("math_acuracy")
    msg = str(err.value)
    assert "did you mean 'math_accuracy'" in msg
    assert "known rewards:" in msg and "think_answer_format" in msg


def test_load_dataset_and_model_api(tiny_text):
    samples = lmmr1_core.load_dataset("arithmetic", n=3, seed=5)
    assert len(samples) == 3 and all(isinstance(s, lmmr1_core.Sample) for s in samples)
    backend = lmmr1_core.load_model("hf", path=str(tiny_text))
    assert backend.is_vl is False


def _fake_entry_points(extra):
    real = metadata.entry_points

    def entry_points(group=None, **kw):
        eps = list(real(group=group, **kw))
        return eps + extra if group == "lmmr1" else eps

    return entry_points


def test_broken_plugin_is_reported_and_the_rest_still_load(monkeypatch):
    bad = metadata.EntryPoint("broken_one", "lmmr1_no_such_module_xyz", "lmmr1")
    monkeypatch.setattr(plugins.metadata, "entry_points", _fake_entry_points([bad]))
    plugins.reset_plugin_manager()
    try:
        report = {p["name"]: p for p in plugins.plugin_report()}
        assert "ModuleNotFoundError" in report["broken_one"]["error"]
        assert "math_accuracy" in plugins.registry("rewards")
        with pytest.raises(PluginError, match="plugin 'broken_one' .* failed to load: ModuleNotFoundError"):
            lmmr1_core.load_reward("from_the_broken_plugin")
        out = CliRunner().invoke(main, ["plugins"]).output
        assert "broken_one" in out and "FAILED TO LOAD" in out
    finally:
        monkeypatch.undo()
        plugins.reset_plugin_manager()


def test_disable_and_allow_plugins_by_name(monkeypatch):
    monkeypatch.setenv("LMMR1_DISABLE_PLUGINS", "builtin_rewards")
    plugins.reset_plugin_manager()
    try:
        assert "math_accuracy" not in plugins.registry("rewards")
        assert "hf" in plugins.registry("models")
        monkeypatch.delenv("LMMR1_DISABLE_PLUGINS")
        monkeypatch.setenv("LMMR1_LOAD_PLUGINS", "builtin_models")
        plugins.reset_plugin_manager()
        assert plugins.registry("rewards") == {}
        assert "hf" in plugins.registry("models")
    finally:
        monkeypatch.undo()
        plugins.reset_plugin_manager()


def test_env_plugin_through_the_public_api(plugin):
    class Counter:
        """A one-number env: the episode ends when the model says 3."""

        def __init__(self, start=0):
            self.n = start

        def reset(self, seed=None):
            return lmmr1_core.Observation(text=str(self.n))

        def step(self, action_text):
            self.n += 1
            return lmmr1_core.Observation(text=str(self.n)), float(action_text == "3"), action_text == "3", {}

    class EnvPlugin:
        @hookimpl
        def register_envs(self, register):
            register("counter", Counter)

    plugin(EnvPlugin(), name="envs")
    env = lmmr1_core.load_env("counter", start=2)
    assert env.reset().text == "2"
    assert env.step("3")[1:3] == (1.0, True)
    report = {p["name"]: p for p in plugins.plugin_report()}
    assert report["envs"]["registered"] == {"envs": ["counter"]}
    assert report["envs"]["distribution"] == "(in-process)"
