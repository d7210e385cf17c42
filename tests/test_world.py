"""The world size against the parallel split and the batch sizes (lmmr1_core/world.py), and the train batch
counted in samples (``algorithm.train_batch_samples``): arithmetic on the config, no process started."""

import pytest
from click.testing import CliRunner

from lmmr1_core.cli import main
from lmmr1_core.config import RunConfig
from lmmr1_core.errors import ConfigError
from lmmr1_core.world import batch_plan, check_world


def config(tp=1, pp=1, rollout=None, batch_size=8, group_size=4, **algorithm):
    stage = {"kind": "rl", "data": [{"dataset": "arithmetic"}], "rewards": [{"name": "math_accuracy"}],
             "steps": 1, "batch_size": batch_size, "algorithm": {"group_size": group_size, **algorithm}}  # fmt: skip
    model = {"path": "m", "tensor_parallel": tp, "pipeline_parallel": pp, "rollout": rollout or {}}
    return RunConfig.model_validate({"name": "w", "model": model, "stages": {"rl": stage}})


@pytest.mark.parametrize(
    "world, kwargs",
    [(1, {}), (8, {}), (8, {"tp": 2, "pp": 2, "batch_size": 2}),
     (4, {"tp": 4, "batch_size": 1, "rollout": {"engine": "vllm", "tensor_parallel": 4}}),
     (8, {"tp": 2, "rollout": {"engine": "vllm", "tensor_parallel": 1}}),
     (4, {"train_batch_samples": 8})],  # 32 samples, 4 steps of 8: 2 per replica and step
)  # fmt: skip
def test_fitting_worlds_pass(world, kwargs):
    check_world(config(**kwargs), world)


def test_world_not_a_multiple_of_the_trainer_split():
    with pytest.raises(ConfigError, match=r"f.yaml: model.tensor_parallel x model.pipeline_parallel = 2 x 2 = 4 does "
                                          r"not divide the world size 6 .*start a multiple of 4 processes"):
        check_world(config(tp=2, pp=2), 6, "f.yaml")


def test_rollout_tensor_parallel_larger_than_the_world():
    cfg = config(rollout={"engine": "vllm", "tensor_parallel": 16})
    with pytest.raises(ConfigError, match=r"tensor_parallel: 16 is larger than the world \(8 processes\)"):
        check_world(cfg, 8)


def test_rollout_tensor_parallel_not_dividing_the_world():
    cfg = config(rollout={"engine": "vllm", "tensor_parallel": 3})
    with pytest.raises(ConfigError, match=r"model.rollout.tensor_parallel: 3 does not divide the world size 8: .*"
                                          r"use one of 1, 2, 4, 8"):
        check_world(cfg, 8)


def test_the_backend_generating_ignores_a_stray_engine_option():
    check_world(config(rollout={"engine": "backend"}), 8)


def test_batch_not_divisible_by_the_data_parallel_size():
    with pytest.raises(ConfigError, match=r"stages.rl.batch_size: 8 prompts do not split evenly over 3 data-parallel "
                                          r"replicas \(world 3 / \(tensor_parallel 1 x pipeline_parallel 1\)\): "
                                          r"use a multiple of 3"):
        check_world(config(), 3)
    with pytest.raises(ConfigError, match=r"over 4 data-parallel replicas \(world 8 / \(tensor_parallel 2 x"):
        check_world(config(tp=2, batch_size=6), 8)


@pytest.mark.parametrize("tp, pp", [(1, 1), (4, 1), (1, 2)])
def test_a_rollout_engine_spans_one_rank_or_one_trainer_replica(tp, pp):
    cfg = config(tp=tp, pp=pp, batch_size=2, rollout={"engine": "vllm", "tensor_parallel": 2})
    with pytest.raises(ConfigError, match=rf"model.rollout.tensor_parallel: 2: an engine's tensor-parallel ranks "
                                          rf"must pass the same prompts, .* a replica here is tensor_parallel {tp} x "
                                          rf"pipeline_parallel {pp} = {tp * pp} rank\(s\)"):
        check_world(cfg, 8)


def test_optimizer_steps_need_not_split_each_replicas_rows():
    """The mini-batches are drawn from the whole batch, as in one process; a replica may hold none of one."""
    check_world(config(batch_size=4, group_size=2, train_batch_samples=2), 4)


def test_eval_and_untrained_stages_are_not_split():
    cfg = RunConfig.model_validate({"name": "w", "model": {"path": "m"}, "stages": {
        "e": {"kind": "eval", "data": [{"dataset": "arithmetic"}], "batch_size": 3}}})  # fmt: skip
    check_world(cfg, 8)


def test_train_batch_samples_resolves_to_optimizer_steps():
    algo = config(batch_size=256, group_size=16, train_batch_samples=256).stages["rl"].algorithm
    assert (algo.mini_batches, algo.train_batch_samples) == (16, 256)
    assert config(batch_size=256, group_size=16, train_batch_samples=4096).stages["rl"].algorithm.mini_batches == 1
    both = config(batch_size=8, group_size=4, train_batch_samples=8, mini_batches=4)  # agreeing
    assert both.stages["rl"].algorithm.mini_batches == 4
    assert config(batch_size=8, group_size=4).stages["rl"].algorithm.mini_batches == 1  # nothing said: one step
    # a run's written config (model_dump) holds both and loads back
    cfg = config(batch_size=256, group_size=16, train_batch_samples=256)
    assert RunConfig.model_validate(cfg.model_dump(mode="json")).stages["rl"].algorithm.mini_batches == 16
    assert "train_batch_samples" not in cfg.stages["rl"].algorithm.algorithm_config()  # not a plugin option


def test_train_batch_samples_errors_name_the_key(tmp_path):
    base = tmp_path / "f.yaml"
    base.write_text("name: t\nmodel: {path: m}\nstages:\n  rl:\n    kind: rl\n    data: [{dataset: arithmetic, n: 4}]\n"
                    "    rewards: [{name: math_accuracy}]\n    steps: 1\n    batch_size: 4\n"
                    "    algorithm: {group_size: 4, train_batch_samples: 6}\n")  # fmt: skip
    result = CliRunner().invoke(main, ["validate", str(base)])
    assert result.exit_code == 2
    assert (f"{base}: invalid stage file\n  stages.rl: algorithm.train_batch_samples: 6 does not divide the rollout "
            "batch, batch_size x algorithm.group_size = 4 x 4 = 16 samples; use a divisor of 16") in result.output
    result = CliRunner().invoke(main, ["validate", str(base), "--set", "stages.rl.algorithm.train_batch_samples=4",
                                       "--set", "stages.rl.algorithm.mini_batches=2"])  # fmt: skip
    assert result.exit_code == 2
    assert ("stages.rl: algorithm.mini_batches: 2 disagrees with algorithm.train_batch_samples: 4 (16 samples per "
            "rollout / 4 = 4 optimizer steps); give only one of them") in result.output


def test_validate_checks_the_world_from_options_or_torchrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    f = tmp_path / "f.yaml"
    f.write_text("name: t\nmodel: {path: m, tensor_parallel: 2, rollout: {engine: vllm, tensor_parallel: 2}}\n"
                 "stages:\n  rl:\n"
                 "    kind: rl\n    data: [{dataset: arithmetic, n: 4}]\n    rewards: [{name: math_accuracy}]\n"
                 "    steps: 1\n    batch_size: 8\n"
                 "    algorithm: {group_size: 4, train_batch_samples: 8}\n")  # fmt: skip
    ok = CliRunner().invoke(main, ["validate", str(f), "--nproc-per-node", "4", "--nnodes", "2"])
    assert ok.exit_code == 0, ok.output
    assert "world: 8 processes, 4 data-parallel replicas of tensor_parallel 2 x pipeline_parallel 1; 4 vllm " \
           "rollout engines of tensor_parallel 2" in ok.output
    assert ("stage rl: rollout 8 prompts x 4 samples = 32 samples; 4 optimizer steps per rollout (1 epoch(s) x 4 "
            "of 8 samples); 2 prompts per replica") in ok.output
    bad = CliRunner().invoke(main, ["validate", str(f), "--nproc-per-node", "3"])
    assert bad.exit_code == 2 and "tensor_parallel x model.pipeline_parallel = 2 x 1 = 2 does not divide the " \
                                  "world size 3" in bad.output
    monkeypatch.setenv("WORLD_SIZE", "32")  # under torchrun, without options
    env = CliRunner().invoke(main, ["validate", str(f)])
    assert env.exit_code == 2 and "stages.rl.batch_size: 8 prompts do not split evenly over 16" in env.output
    monkeypatch.delenv("WORLD_SIZE")
    plain = CliRunner().invoke(main, ["validate", str(f)])
    assert plain.exit_code == 0 and "world:" not in plain.output and "4 optimizer steps per rollout" in plain.output


def test_batch_plan_without_a_world():
    lines = batch_plan(config(batch_size=256, group_size=16, train_batch_samples=256))
    assert lines == ["stage rl: rollout 256 prompts x 16 samples = 4096 samples; 16 optimizer steps per rollout "
                     "(1 epoch(s) x 16 of 256 samples)"]  # fmt: skip
