import json

import pytest
from click.testing import CliRunner

from lmmr1_core.cli import main
from lmmr1_core.config import apply_overrides, load_config, stage_order
from lmmr1_core.errors import ConfigError

GOOD = """
name: t
model: {{backend: hf, path: {model}}}
stages:
  a:
    kind: sft
    data: [{{dataset: arithmetic, n: 8}}]
    steps: 1
  b:
    kind: rl
    init_from: a
    data: [{{dataset: {dataset}, {data_extra}}}]
    rewards: [{{name: {reward}, weight: 1.0}}]
    steps: 2
"""


def stage_file(tmp_path, model="m", dataset="arithmetic", data_extra="n: 8", reward="math_accuracy", extra=""):
    (tmp_path / "m").mkdir(exist_ok=True)
    p = tmp_path / "run.yaml"
    p.write_text(GOOD.format(model=model, dataset=dataset, data_extra=data_extra, reward=reward) + extra)
    return p


def validate(path):
    return CliRunner().invoke(main, ["validate", str(path)])


def test_good_file_validates_without_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = validate(stage_file(tmp_path))
    assert result.exit_code == 0, result.output
    assert "stage b: rl from a, 2 steps, 8 samples" in result.output


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages: [\n")
    result = validate(p)
    assert result.exit_code == 2
    assert f"{p}: malformed YAML" in result.output
    assert "Traceback" not in result.output


def test_unknown_key_names_file_and_key(tmp_path):
    p = stage_file(tmp_path, extra="    stepz: 3\n")
    result = validate(p)
    assert result.exit_code == 2
    assert str(p) in result.output and "stages.b.stepz: unknown key" in result.output


def test_wrong_type_names_key(tmp_path):
    p = stage_file(tmp_path)
    p.write_text(p.read_text().replace("steps: 2", "steps: many"))
    result = validate(p)
    assert "stages.b.steps" in result.output and result.exit_code == 2


def test_unknown_plugin_name_lists_known_and_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = validate(stage_file(tmp_path, reward="math_acc"))
    assert result.exit_code == 2
    assert "stages.b.rewards.0.name: unknown reward 'math_acc' (did you mean 'math_accuracy'?)" in result.output
    assert "think_answer_format" in result.output


def test_cycle_in_stage_graph(tmp_path):
    p = stage_file(tmp_path)
    p.write_text(p.read_text().replace("kind: sft", "kind: sft\n    init_from: b"))
    with pytest.raises(ConfigError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        load_config(p)


def test_init_from_unknown_stage(tmp_path):
    p = stage_file(tmp_path)
    p.write_text(p.read_text().replace("init_from: a", "init_from: zz"))
    with pytest.raises(ConfigError, match=r"stages.b.init_from: no stage named 'zz'"):
        load_config(p)


def test_missing_dataset_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = validate(stage_file(tmp_path, dataset="jsonl", data_extra="path: nope.jsonl"))
    assert result.exit_code == 2
    assert "stages.b.data.0: nope.jsonl: no such data file" in result.output


def test_dataset_line_without_answer_names_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n\n" + json.dumps({"prompt": "2+2?"}) + "\n")
    result = validate(stage_file(tmp_path, dataset="jsonl", data_extra=f"path: {data}"))
    assert result.exit_code == 2
    assert f"{data}:3: missing field 'answer'" in result.output


def test_dataset_bad_json_line_names_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n{oops\n")
    result = validate(stage_file(tmp_path, dataset="jsonl", data_extra=f"path: {data}"))
    assert result.exit_code == 2 and f"{data}:2: invalid JSON" in result.output


def test_missing_image_file_names_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "count", "answer": "2", "images": ["pics/none.png"]}) + "\n")
    result = validate(stage_file(tmp_path, dataset="jsonl", data_extra=f"path: {data}"))
    assert result.exit_code == 2
    assert f"{data}:1: image file not found: {tmp_path / 'pics/none.png'}" in result.output


def test_missing_model_path(tmp_path):
    result = validate(stage_file(tmp_path, model="./no/such/model"))
    assert result.exit_code == 2 and "model.path: ./no/such/model does not exist" in result.output


def test_overrides_set_nested_keys_with_yaml_types(tmp_path):
    cfg = load_config(stage_file(tmp_path), ["stages.b.steps=7", "stages.b.algorithm.kl.coef=0.01"])
    assert cfg.stages["b"].steps == 7 and cfg.stages["b"].algorithm.kl.coef == 0.01
    assert stage_order(cfg) == ["a", "b"]
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["nonsense"])
    cfg = load_config(stage_file(tmp_path), ["stages.b.data.0.n=3"])
    assert cfg.stages["b"].data[0].loader_config() == {"n": 3}
    with pytest.raises(ConfigError, match="'5' is not an index of a 1-item list"):
        load_config(stage_file(tmp_path), ["stages.b.data.5.n=3"])
    # YAML 1.1 reads 1e-3 as a string; stage files and --set mean the number, also in plugin-specific keys
    cfg = load_config(stage_file(tmp_path, extra="    optim: {lr: 2e-4}\n"), ["stages.b.algorithm.critic_lr=1e-3"])
    assert cfg.stages["b"].optim.lr == 2e-4 and cfg.stages["b"].algorithm.algorithm_config() == {"critic_lr": 1e-3}


def test_reference_lists_every_stage_key():
    out = CliRunner().invoke(main, ["reference"]).output
    for key in ("init_from", "max_new_tokens", "group_size", "timeout_s", "target_template"):
        assert f"  {key}:" in out


def test_env_stage_with_rewards_is_an_error(tmp_path):
    p = stage_file(tmp_path)
    p.write_text(p.read_text().replace("init_from: a", "init_from: a\n    env: {name: sokoban}"))
    result = validate(p)
    assert result.exit_code == 2 and "stages.b.rewards: an env stage is rewarded by its env" in result.output


def test_rollout_engine_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = stage_file(tmp_path)
    p.write_text(p.read_text().replace("path: m}", "path: m, rollout: {engine: vllm, gpu_memory_utilization: 0.3}}"))
    ok = validate(p)
    assert ok.exit_code == 0, ok.output
    p.write_text(p.read_text().replace("engine: vllm", "engine: sglang"))
    result = validate(p)
    assert result.exit_code == 2 and "model.rollout.engine" in result.output
    assert "  kv_cache_gb:" in CliRunner().invoke(main, ["reference"]).output

