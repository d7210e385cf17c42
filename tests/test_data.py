"""Data formats (ours, LMM-R1's, parquet with embedded images, saved/hub datasets), prompt building,
the offline generators and evaluation."""

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from lmmr1_core import load_dataset, load_model, load_reward
from lmmr1_core.cli import main
from lmmr1_core.config import StageConfig
from lmmr1_core.errors import DataError
from lmmr1_core.prompts import build_messages


def png(path: Path | None = None, color=(255, 0, 0), size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_lmmr1_record_format_with_file_uris(tmp_path, tiny_vl):
    png(tmp_path / "imgs/a.png")
    png(tmp_path / "abs.png")
    content = [
        {"type": "image", "image": "file://imgs/a.png"},  # relative to the data file
        {"type": "image", "image": f"file://{tmp_path / 'abs.png'}"},  # absolute URI, as LMM-R1's files hold
        {"type": "text", "text": "How many images?"},
    ]
    rec = {"message": json.dumps([{"role": "user", "content": content}]), "answer": "2", "subject": "counting"}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    [s] = load_dataset("jsonl", path=str(tmp_path / "d.jsonl"))
    assert s.images == [str(tmp_path / "imgs/a.png"), str(tmp_path / "abs.png")]
    assert s.answer == "2" and s.meta == {"subject": "counting"}
    b = load_model("hf", path=str(tiny_vl))
    prompt = b.encode(s.messages, s.images, s.id)
    merge = b.image_processor.merge_size**2
    expected = sum(int(g.prod()) // merge for g in prompt.image_grid_thw)
    assert prompt.input_ids.count(b.model.config.image_token_id) == expected


def test_parquet_with_embedded_image_bytes(tmp_path, tiny_vl):
    import datasets

    raw = tmp_path / "raw.parquet"
    datasets.Dataset.from_dict({"question": ["colour?"], "solution": ["red"], "image": [png()]}).to_parquet(str(raw))
    feat = tmp_path / "feature.parquet"
    features = datasets.Features({"prompt": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "images": datasets.Sequence(datasets.Image())})  # fmt: skip
    datasets.Dataset.from_dict(
        {"prompt": ["colour?"], "answer": ["blue"], "images": [[{"bytes": png(color=(0, 0, 255)), "path": None}]]},
        features=features,
    ).to_parquet(str(feat))
    b = load_model("hf", path=str(tiny_vl))
    [s1] = load_dataset("parquet", path=str(raw), prompt_key="question", answer_key="solution", images_key="image")
    [s2] = load_dataset("parquet", path=str(feat))
    assert s1.answer == "red" and isinstance(s1.images[0], bytes)
    for s in (s1, s2):
        prompt = b.encode(s.messages, s.images, s.id)
        assert prompt.pixel_values is not None and prompt.image_grid_thw.shape == (1, 3)


def test_json_saved_and_hub_directory_loaders(tmp_path):
    import datasets

    records = [{"problem": f"{i} + 1?", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "list.json").write_text(json.dumps({"data": records}))
    assert [s.answer for s in load_dataset("json", path=str(tmp_path / "list.json"), field="data",
                                           prompt_key="problem")] == ["1", "2", "3"]  # fmt: skip
    ds = datasets.Dataset.from_list([{"prompt": r["problem"], "answer": r["answer"]} for r in records])
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(load_dataset("saved", path=str(tmp_path / "saved"))) == 3
    hubdir = tmp_path / "hubdir"
    hubdir.mkdir()
    ds.to_json(str(hubdir / "train.jsonl"))
    samples = load_dataset("hub", path=str(hubdir), split="train")
    assert [s.messages[0]["content"] for s in samples] == ["0 + 1?", "1 + 1?", "2 + 1?"]
    with pytest.raises(DataError, match="not a saved dataset"):
        load_dataset("saved", path=str(hubdir))


def test_bad_message_field_names_the_record(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"message": "[{not json", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'message' is not valid JSON"):
        load_dataset("jsonl", path=str(tmp_path / "d.jsonl"))


def test_prompt_template_and_system_prompt():
    cfg = StageConfig(kind="rl", data=[{"dataset": "x"}], system_prompt="Be brief.",
                      prompt_template="{prompt}\nAnswer in <answer></answer> with \\boxed{}.")  # fmt: skip
    msgs = [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Q?"}]}]
    out = build_messages(msgs, cfg.prompt_template, cfg.system_prompt)
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert out[1]["content"][1]["text"] == "Q?\nAnswer in <answer></answer> with \\boxed{}."
    assert msgs[0]["content"][1]["text"] == "Q?"  # the sample itself is untouched


@pytest.mark.parametrize("kind", ["geometry", "perce_reason"])
def test_generators_are_deterministic_and_verifiable(kind, tmp_path):
    result = CliRunner().invoke(main, ["data", "make", kind, str(tmp_path / "a"), "--n", "12", "--seed", "3"])
    assert result.exit_code == 0, result.output
    CliRunner().invoke(main, ["data", "make", kind, str(tmp_path / "b"), "--n", "12", "--seed", "3"])
    CliRunner().invoke(main, ["data", "make", kind, str(tmp_path / "c"), "--n", "12", "--seed", "4"])
    a = (tmp_path / "a/data.jsonl").read_text()
    assert a.replace("/a/", "/b/") == (tmp_path / "b/data.jsonl").read_text()
    assert a != (tmp_path / "c/data.jsonl").read_text()
    samples = load_dataset(kind, n=12, seed=3, dir=str(tmp_path / "a"))
    assert len(samples) == 12 and all(Path(s.images[0]).exists() for s in samples)
    assert len({s.meta["category"] for s in samples}) == 4
    # every gold answer is one the verifiers can check, and the gold itself scores 1.0
    reward = load_reward("geometry_answer")
    completions = [f"<answer>{s.answer}</answer>" for s in samples]
    options = [s.meta.get("options") for s in samples]
    scores = reward(prompts=[s.messages for s in samples], completions=completions,
                    answer=[s.answer for s in samples], options=options)  # fmt: skip
    assert scores == [1.0] * 12


def test_eval_command_greedy_and_pass_at_k(tiny_text, tmp_path):
    data = tmp_path / "qa.jsonl"
    records = [{"prompt": f"{i}?", "answer": str(i), "category": "ab"[i % 2]} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    args = ["--data", str(data), "--data", "arithmetic:n=3", "--max-new-tokens", "4", "--output-dir", str(out)]
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_text), *args])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "eval/eval/final/results.json").read_text())
    assert res["overall"]["n"] == 7 and set(res["datasets"]) == {str(data), "arithmetic"}
    assert set(res["categories"]) == {f"{data} / a", f"{data} / b"}
    assert 0.0 <= res["overall"]["math_accuracy"] <= 1.0
    assert "overall" in result.output and "math_accuracy" in result.output
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_text), "--data", str(data), "--k", "3",
                                       "--max-new-tokens", "4", "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((out / "eval/eval/final/results.json").read_text())
    overall = res["overall"]
    assert overall["math_accuracy/pass@3"] >= overall["math_accuracy/mean@3"] >= 0.0
    rows = [json.loads(x) for x in (out / "eval/eval/samples.jsonl").read_text().splitlines()]
    assert all(len(r["completions"]) == 3 for r in rows)


def test_summarize_by_hand():
    from lmmr1_core.evaluate import summarize

    rows = [
        {"source": "d", "category": "x", "scores": {"acc": [1.0, 0.0]}},
        {"source": "d", "category": "y", "scores": {"acc": [0.0, 0.0]}},
        {"source": "d", "category": "y", "scores": {"acc": [None, 1.0]}},  # None: unscored, counts as 0
        {"source": "d", "category": "y", "scores": {"acc": [None, None]}, "dropped": True},  # too long: 0
    ]
    res = summarize(rows, ["acc"], 2)
    # mean@2 over every completion of every prompt: (1+0+0+0+0+1+0+0)/8; pass@2: 2 of 4 prompts had a 1.0
    assert res["overall"] == {"n": 4, "acc/mean@2": 0.25, "acc/pass@2": 0.5, "n_unscored": 1, "n_dropped": 1}
    assert res["categories"]["d / y"]["acc/pass@2"] == 1 / 3


def test_eval_keeps_dropped_prompts_in_the_denominator(tiny_text, tmp_path):
    data = tmp_path / "qa.jsonl"
    records = [{"prompt": "1?", "answer": "1"}, {"prompt": "word " * 3000, "answer": "2"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_text), "--data", str(data), "--max-new-tokens", "2",
                                       "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((out / "eval/eval/final/results.json").read_text())
    assert res["overall"]["n"] == 2 and res["overall"]["n_dropped"] == 1
    assert "n_dropped" in result.output
