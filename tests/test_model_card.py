"""final/README.md: a Hugging Face model card (front matter the Hub reads) that says how the weights were made."""

import json

import yaml

from lmmr1_core.config import RunConfig
from lmmr1_core.model_card import card_text, write_model_card

SECRET = "sk-test-do-not-publish-42"


def _config() -> RunConfig:
    return RunConfig.model_validate({
        "name": "recipe",
        "model": {"backend": "hf", "path": "Qwen/Qwen2.5-VL-3B-Instruct"},
        "stages": {
            "fre": {"kind": "rl", "steps": 3, "data": [{"dataset": "jsonl", "path": "data/fre.jsonl"}],
                    "rewards": [{"name": "math_accuracy"},
                                {"name": "judge_accuracy", "url": "http://judge", "api_key": SECRET}],
                    "algorithm": {"name": "reinforce_pp_baseline", "group_size": 2}},
            "eval_fre": {"kind": "eval", "init_from": "fre", "data": [{"dataset": "geometry", "name": "geo"}],
                         "rewards": [{"name": "geometry_answer"}]},
        },
    })  # fmt: skip


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def test_the_card_describes_the_weights_and_redacts_secrets(tmp_path):
    cfg = _config()
    run_dir = tmp_path / "runs/recipe"
    (run_dir / "fre").mkdir(parents=True)
    rows = [{"step": s, "reward/mean": 0.1 * s, "kl": 0.01} for s in (1, 2, 3)]
    (run_dir / "fre/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = card_text(cfg, "fre", run_dir)
    front = _front(text)
    assert front["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and front["library_name"] == "transformers"
    assert {"lmmr1", "reinforcement-learning", "reinforce_pp_baseline"} <= set(front["tags"])
    assert "fre (rl) <- model Qwen/Qwen2.5-VL-3B-Instruct   <- these weights" in text
    assert "eval_fre (eval) <- fre" in text and "`data/fre.jsonl`" in text
    assert "| reward/mean | 0.3 |" in text and "## Final metrics (step 3)" in text
    assert SECRET not in text and "api_key: '***'" in text
    assert "## Evaluation" not in text  # no eval has run yet

    (run_dir / "eval_fre/final").mkdir(parents=True)
    results = {"overall": {"n": 4, "geometry_answer": 0.5, "n_unscored": 0, "n_dropped": 0},
               "datasets": {"geo": {"n": 4, "geometry_answer": 0.5, "n_unscored": 0, "n_dropped": 0}},
               "categories": {}}  # fmt: skip
    (run_dir / "eval_fre/final/results.json").write_text(json.dumps(results))
    (tmp_path / "final").mkdir()
    text = write_model_card(tmp_path / "final", cfg, "fre", run_dir).read_text()
    assert "## Evaluation: `eval_fre`" in text and "| geo | 4 | 0.5 | 0 | 0 |" in text


def test_a_local_model_names_no_base_model_but_a_later_stage_inherits_one(tmp_path):
    cfg = _config()
    cfg.model.path = str(tmp_path / "local-model")
    (tmp_path / "local-model").mkdir()
    assert "base_model" not in _front(card_text(cfg, "fre", tmp_path / "runs/recipe"))
    # a run starting from an earlier lmmr1 result keeps that result's hub base
    (tmp_path / "local-model/README.md").write_text("---\nbase_model: Qwen/Qwen2.5-VL-3B-Instruct\ntags: [lmmr1]\n"
                                                    "---\n# earlier\n")  # fmt: skip
    assert _front(card_text(cfg, "fre", tmp_path / "runs/recipe"))["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_a_run_writes_the_card_into_final_and_refreshes_it_after_an_eval(tiny_text, tmp_path):
    from lmmr1_core.run import run

    cfg = RunConfig.model_validate({
        "name": "carded", "output_dir": str(tmp_path / "runs"),
        "model": {"backend": "hf", "path": str(tiny_text), "device": "cpu"},
        "logging": {"tensorboard": False},
        "stages": {
            "warm": {"kind": "sft", "data": [{"dataset": "arithmetic", "n": 8}], "steps": 2, "batch_size": 2},
            "ev": {"kind": "eval", "init_from": "warm", "data": [{"dataset": "arithmetic", "n": 2}],
                   "rewards": [{"name": "math_accuracy", "workers": 1}], "generation": {"max_new_tokens": 4}},
        },
    })  # fmt: skip
    run_dir = run(cfg, "test")
    text = (run_dir / "warm/final/README.md").read_text()
    assert _front(text)["tags"] == ["lmmr1", "sft"]
    assert "## Final metrics (step 2)" in text and "## Evaluation: `ev`" in text  # refreshed after ev ran
