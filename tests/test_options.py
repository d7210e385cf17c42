"""Plugin options are checked against each plugin's declaration before any model loads."""

from click.testing import CliRunner
from test_config import stage_file, validate

from lmmr1_core import options
from lmmr1_core.cli import main
from lmmr1_core.plugins import lookup


def _replace(p, old, new):
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))
    return p


def test_a_mistyped_reward_option_names_file_key_plugin_and_the_closest_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _replace(stage_file(tmp_path, reward="geometry_answer"), "weight: 1.0}", "weight: 1.0, reltol: 0.1}")
    result = validate(p)
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "run.yaml: stages.b.rewards.0.reltol: reward 'geometry_answer' has no option 'reltol'" in line
    assert "did you mean 'rel_tol'?" in line


def test_a_reward_option_of_the_wrong_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _replace(stage_file(tmp_path, reward="length_penalty"), "weight: 1.0}", "weight: 1.0, max_tokens: lots}")
    result = validate(p)
    assert result.exit_code == 2 and "stages.b.rewards.0.max_tokens: reward 'length_penalty' expects" in result.output


def test_a_right_reward_option_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _replace(stage_file(tmp_path, reward="geometry_answer"), "weight: 1.0}", "weight: 1.0, rel_tol: 0.05}")
    assert validate(p).exit_code == 0


def test_unknown_and_mistyped_algorithm_options_fail_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = stage_file(tmp_path, extra="    algorithm: {name: grpo, clip_epsilon: 0.3}\n")
    result = validate(base)  # the model path is an empty directory: nothing could have loaded
    assert result.exit_code == 2
    assert "stages.b.algorithm.clip_epsilon: algorithm 'grpo' has no option 'clip_epsilon'" in result.output
    assert "did you mean 'clip_eps'?" in result.output
    _replace(base, "clip_epsilon: 0.3", "clip_eps: wide")
    result = validate(base)
    assert result.exit_code == 2 and "stages.b.algorithm.clip_eps: algorithm 'grpo' expects float" in result.output
    # lmmr1 run says the same, before it builds or loads a model
    result = CliRunner().invoke(main, ["run", str(base)])
    assert result.exit_code == 2 and "expects float" in result.output
    assert not (tmp_path / "runs").exists()


def test_env_and_engine_options_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = stage_file(tmp_path)
    text = p.read_text().replace("init_from: a", "init_from: a\n    env: {name: sokoban, num_box: 2}")
    text = text.replace("    rewards: [{name: math_accuracy, weight: 1.0}]\n", "")
    p.write_text(text)
    result = validate(p)
    assert result.exit_code == 2 and "stages.b.env.num_box: env 'sokoban' has no option 'num_box'" in result.output
    assert "did you mean 'num_boxes'?" in result.output
    p.write_text(text.replace("num_box: 2", "num_boxes: 2").replace("path: m}", "path: m, rollout: {engine: vllm, "
                                                                    "kv_cache: 2}}"))  # fmt: skip
    result = validate(p)
    assert result.exit_code == 2 and "model.rollout.kv_cache: rollout engine 'vllm' has no option" in result.output


def test_reference_lists_each_plugins_options():
    out = CliRunner().invoke(main, ["reference"]).output
    assert "rewards (options under stages.<name>.rewards[]):" in out
    geometry = out[out.index("  geometry_answer (builtin_rewards):") :]
    assert geometry.splitlines()[1].startswith("    rel_tol: float, default")
    assert "    clip_eps: float, default 0.2" in out
    assert "    kv_cache_gb:" in out and "    num_boxes: int, default 1" in out


def test_reward_columns_are_not_options():
    sch = options.schema("rewards", lookup("rewards", "choice_accuracy").obj)
    assert "answer" not in sch.options and not sch.open
    sch = options.schema("rewards", lookup("rewards", "math_accuracy").obj)
    assert "answer" not in sch.options


def test_an_open_signature_accepts_unlisted_keys():
    def factory(a: int = 1, **rest):
        return None

    options.check("envs", "x", factory, {"a": 2, "anything": 3}, "f: stages.s.env")
    sch = options.schema("envs", factory)
    assert sch.open and list(sch.options) == ["a"]


def test_tis_with_top_p_below_one_is_refused(tmp_path, monkeypatch):
    """The engines report log-probs before top-p (hf) or after it (vLLM); TIS would weigh different things."""
    monkeypatch.chdir(tmp_path)
    p = stage_file(tmp_path, extra="    algorithm: {name: grpo, tis_cap: 2.0}\n    generation: {top_p: 0.9}\n")
    result = validate(p)
    assert result.exit_code == 2 and "stages.b.algorithm.tis_cap: truncated importance sampling" in result.output
    p.write_text(p.read_text().replace("top_p: 0.9", "top_p: 1.0"))
    assert validate(p).exit_code == 0
