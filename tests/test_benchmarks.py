"""Benchmark loaders on small copies of each benchmark in its publishers' layouts (tests/benchmark_fixtures.py),
and the judge reward."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import benchmark_fixtures as fx
import pytest

from lmmr1_core import load_dataset, load_reward
from lmmr1_core.errors import DataError


def score(samples, completions, reward="geometry_answer"):
    return load_reward(reward)(
        prompts=[s.messages for s in samples], completions=completions, answer=[s.answer for s in samples],
        options=[s.meta.get("options") for s in samples],
    )  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Every benchmark written once, in its publishers' layouts (see benchmark_fixtures)."""
    root = tmp_path_factory.mktemp("benchmarks")
    return {name: getattr(fx, name)(root / name) for name in ("mathvista", "mathverse", "mathvision", "mmstar",
                                                              "math500", "gpqa")}  # fmt: skip


# --- splits: the paper's by default; a split without answers is refused -----------------------------


def test_mathvista_saved_folder_reads_testmini_not_the_withheld_test(bench):
    samples = load_dataset("mathvista", path=str(bench["mathvista"] / "saved"))
    assert [s.id for s in samples] == ["1", "2"] and {s.meta["split"] for s in samples} == {"testmini"}
    assert [s.answer for s in samples] == ["1.2", "the dog"]
    assert isinstance(samples[0].images[0], bytes)  # decoded_image's embedded bytes, not a PIL image
    assert samples[0].meta["category"] == "textbook question answering"
    assert samples[0].messages[0]["content"][-1]["text"].startswith("Hint: Please answer the question requiring")
    assert score(samples, ["<answer>1.2</answer>", "<answer>B</answer>"]) == [1.0, 1.0]
    assert score(samples, ["<answer>1.5</answer>", "<answer>the cat</answer>"]) == [0.0, 0.0]


@pytest.mark.parametrize("where", ["saved", "file", "test_only", "one_split"])
def test_mathvista_test_split_withholds_answers_and_is_refused(bench, where, tmp_path):
    import datasets

    root = bench["mathvista"]
    if where == "saved":
        kwargs = {"path": str(root / "saved"), "split": "test"}
    elif where == "file":
        kwargs = {"path": str(next((root / "repo/data").glob("test-*.parquet")))}
    elif where == "one_split":  # load_dataset(..., split="test").save_to_disk(): a Dataset that knows its split
        test_file = str(next((root / "repo/data").glob("test-*.parquet")))
        datasets.load_dataset("parquet", data_files={"test": test_file}, split="test").save_to_disk(str(tmp_path / "t"))
        kwargs = {"path": str(tmp_path / "t")}
    else:  # a folder holding only the test split: the default falls to it, and is refused
        datasets.DatasetDict({"test": datasets.load_from_disk(str(root / "saved"))["test"]}).save_to_disk(
            str(tmp_path / "t"))
        kwargs = {"path": str(tmp_path / "t")}
    with pytest.raises(DataError, match=r"split 'test' withholds its answers .* evaluate split 'testmini'"):
        load_dataset("mathvista", **kwargs)


def test_mathvista_repository_folder_and_annotation_file(bench):
    repo = bench["mathvista"] / "repo"
    samples = load_dataset("mathvista", path=str(repo))  # data/testmini-*.parquet, preferred to the .json
    assert [s.id for s in samples] == ["1", "2"] and isinstance(samples[0].images[0], bytes)
    assert samples[0].meta["split"] == "testmini"
    annot = load_dataset("mathvista", path=str(repo / "annot_testmini.json"))
    assert [s.answer for s in annot] == ["1.2", "the dog"] and annot[0].meta["split"] == "testmini"
    assert annot[1].images == [str(repo / "images/2.jpg")] and annot[1].meta["options"] == ["the cat", "the dog"]
    with pytest.raises(DataError, match=r"holds split 'testmini', not 'test'"):
        load_dataset("mathvista", path=str(repo / "annot_testmini.json"), split="test")
    with pytest.raises(DataError, match=r"no split 'val' \(splits: testmini, test\)"):
        load_dataset("mathvista", path=str(repo), split="val")


def test_each_benchmark_defaults_to_the_split_the_paper_evaluates(bench):
    expected = {"mathvista": "testmini", "mathverse": "testmini", "mathvision": "test", "mmstar": "val",
                "math500": "test", "gpqa_diamond": "train"}  # fmt: skip
    for name, split in expected.items():
        folder = bench["gpqa" if name == "gpqa_diamond" else name]
        for path in (folder / "saved", folder / "repo"):
            samples = load_dataset(name, path=str(path))
            assert {s.meta["split"] for s in samples} == {split}, (name, path)
    testmini = load_dataset("mathvision", path=str(bench["mathvision"] / "saved"), split="testmini")
    assert [s.id for s in testmini] == ["1", "2"] and testmini[0].meta["split"] == "testmini"


# --- file types the repositories ship --------------------------------------------------------------


def test_gpqa_diamond_csv_as_shipped(bench):
    csv = bench["gpqa"] / "repo/gpqa_diamond.csv"
    samples = load_dataset("gpqa_diamond", path=str(csv))
    assert [s.id for s in samples] == ["recA1b2", "recC3d4"] and samples[0].meta["split"] == "train"
    s = samples[0]
    assert s.messages[0]["content"].startswith("Which particle is a lepton?\nConsider, among others, the following.")
    assert s.meta["options"]["ABCD".index(s.answer)] == "electron"  # shuffled, but the letter follows it
    assert samples[1].meta["options"]["ABCD".index(samples[1].answer)] == "C2H4Cl2"
    assert [x.answer for x in load_dataset("gpqa_diamond", path=str(bench["gpqa"] / "saved"))] == [
        x.answer for x in samples]  # the same seeded order from the csv and the saved folder
    assert score([s], [f"<answer>{s.answer}</answer>"], "choice_accuracy") == [1.0]
    assert score([s], ["<answer>electron</answer>"], "choice_accuracy") == [1.0]
    assert score([s], ["<answer>proton</answer>"], "choice_accuracy") == [0.0]


def test_mmstar_parquet_tsv_and_saved_folder_parse_the_inline_options(bench):
    repo = bench["mmstar"] / "repo"
    for path in (repo / "mmstar.parquet", repo / "MMStar.tsv", bench["mmstar"] / "saved"):
        samples = load_dataset("mmstar", path=str(path))
        assert [s.id for s in samples] == ["0", "1"] and samples[0].meta["split"] == "val", path
        assert samples[0].meta["options"] == ["The suitcase is on the book.", "The suitcase is beneath the cat.",
                                              "The suitcase is beneath the bed.", "The suitcase is beneath the book."]
        assert samples[1].meta["options"] == ["A cat, sitting on a mat.", "Two dogs", "3, 4, and 5", "None"]
        assert samples[0].messages[0]["content"][-1]["text"] == fx.MMSTAR_QUESTIONS[0]
        assert isinstance(samples[0].images[0], bytes)
        if path.suffix == ".tsv":  # base64; the second row names the first row's index for the same image
            assert samples[0].images == samples[1].images == [fx.png()]
        assert samples[0].meta["category"] == "instance reasoning"
        assert samples[1].meta["l2_category"] == "object counting"
        got = score(samples, ["<answer>The suitcase is on the book</answer>", "<answer>3, 4, and 5</answer>"],
                    "choice_accuracy")  # fmt: skip
        assert got == [1.0, 1.0]
        assert score(samples, ["<answer>A</answer>", "<answer>Two dogs</answer>"], "choice_accuracy") == [1.0, 0.0]


def test_tsv_with_option_columns(tmp_path):
    path = fx.vlmevalkit_mcq_tsv(tmp_path / "MMStar.tsv")
    [s] = load_dataset("mmstar", path=str(path))
    assert s.meta["options"] == ["red", "green", "blue"]
    assert s.messages[0]["content"][-1]["text"] == "Which colour is the square?\nOptions: A: red, B: green, C: blue"
    assert s.images == [fx.png()]
    assert score([s], ["<answer>green</answer>"], "choice_accuracy") == [1.0]


def test_mathvision_options_in_the_figure_and_image_markers(bench):
    samples = {s.id: s for s in load_dataset("mathvision", path=str(bench["mathvision"] / "repo"))}
    text = {k: s.messages[0]["content"][-1]["text"] for k, s in samples.items()}
    assert text["1"] == "Which number should be written in place of the question mark?"
    assert text["2"] == "Which bike is most expensive?"  # choices drawn in the figure: no "A. A" lines
    assert text["21"] == "Which of the figures shown bellow cannot be cut out of the figure illustrated nearby?"
    assert text["15"].endswith("Which weekday was that?\n(A) Wednesday\n(B) Thursday\n(C) Friday\n(D) Tuesday\n"
                               "(E) Sunday")  # fmt: skip
    assert all("<image" not in t for t in text.values())
    assert samples["2"].meta["options"] == ["A", "B", "C", "D", "E"] and samples["15"].meta["category"] == "arithmetic"
    ordered = [samples[k] for k in ("1", "2", "15", "21")]
    good = ["<answer>60</answer>", "<answer>A</answer>", "<answer>Wednesday</answer>", "<answer>(E)</answer>"]
    assert score(ordered, good) == [1.0] * 4
    assert score(ordered, ["<answer>61</answer>", "<answer>B</answer>", "<answer>Friday</answer>",
                           "<answer>A</answer>"]) == [0.0] * 4  # fmt: skip


def test_mathvision_github_layout_images_at_the_repository_root(bench):
    gh = bench["mathvision"] / "github"
    samples = load_dataset("mathvision", path=str(gh))  # data/test.jsonl; images/ beside data/, not in it
    assert [s.id for s in samples] == ["1", "2", "15", "21"] and samples[0].meta["split"] == "test"
    assert samples[0].images == [str(gh / "images/1.jpg")]
    one = load_dataset("mathvision", path=str(gh / "data/testmini.jsonl"))
    assert [s.id for s in one] == ["1", "2"] and one[0].meta["split"] == "testmini"
    assert one[1].images == [str(gh / "images/2.jpg")]


def test_mathverse_parquet_and_saved_folder(bench):
    for path in (bench["mathverse"] / "repo/testmini.parquet", bench["mathverse"] / "saved"):
        samples = load_dataset("mathverse", path=str(path))
        assert [s.id for s in samples] == ["1", "6"] and samples[0].meta["split"] == "testmini"
        assert samples[0].meta["category"] == "Text Dominant" and samples[0].meta["subject"] == "Plane Geometry"
        assert samples[0].messages[0]["content"][-1]["text"].startswith("Please first conduct reasoning")
        assert isinstance(samples[1].images[0], bytes)
        # the choices sit in the prompt ("A:25°"): the scorer reads them there
        assert score(samples, ["<answer>25°</answer>", "<answer>12</answer>"]) == [1.0, 1.0]
        assert score(samples, ["<answer>B</answer>", "<answer>13</answer>"]) == [0.0, 0.0]


def test_math500_jsonl(bench):
    samples = load_dataset("math500", path=str(bench["math500"] / "repo/test.jsonl"))
    assert [s.id for s in samples] == ["test/precalculus/807.json", "test/prealgebra/1.json"]
    assert samples[1].images == [] and samples[1].meta["category"] == "Prealgebra"
    assert score(samples[1:], ["<answer>\\boxed{5/6}</answer>"], "math_accuracy") == [1.0]
    with pytest.raises(DataError, match=r"holds split 'test', not 'train'"):
        load_dataset("math500", path=str(bench["math500"] / "repo/test.jsonl"), split="train")


def test_strip_placeholders_and_inline_options():
    from lmmr1_plugins.datasets.benchmarks import inline_options, strip_placeholders

    assert strip_placeholders("When the ant <image1> walks from home <image2> along\n<image6>\n<image7>") == (
        "When the ant walks from home along")
    assert strip_placeholders("a\n\nb <image 3>") == "a\n\nb"
    assert inline_options("Q?\nOptions: A: yes, B: no") == ["yes", "no"]
    assert inline_options("Q? Options are not here") == []


def test_benchmark_record_missing_a_field_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl\[0\]: not a math500 record: missing field 'problem'"):
        load_dataset("math500", path=str(tmp_path / "m.jsonl"))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(DataError, match=r"m.txt: expected \.parquet, \.jsonl, \.json, \.csv, \.tsv"):
        load_dataset("math500", path=str(tmp_path / "m.txt"))


def test_eval_on_a_saved_mathvista_folder_prints_the_split(bench, tiny_vl, tmp_path):
    from click.testing import CliRunner

    from lmmr1_core.cli import main

    saved = str(bench["mathvista"] / "saved")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_vl), "--data", f"mathvista:path={saved}",
                                       "--rewards", "geometry_answer", "--max-new-tokens", "2",
                                       "--output-dir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((out / "eval/eval/final/results.json").read_text())
    assert res["splits"] == {saved: "testmini"} and res["overall"]["n"] == 2
    table = (out / "eval/eval/final/table.txt").read_text().splitlines()
    assert table[0] == f"{saved}: split testmini" and table[1].split()[:2] == ["n", "geometry_answer"]
    assert f"{saved}: split testmini" in result.output


def test_format_table_without_splits_is_unchanged():
    from lmmr1_core.evaluate import format_table

    res = {"overall": {"n": 1, "acc": 1.0}, "datasets": {"d": {"n": 1, "acc": 1.0}}, "categories": {}}
    assert format_table(res).splitlines()[0].split()[:2] == ["n", "acc"]
    lines = format_table({**res, "splits": {"d": "val"}}).splitlines()
    assert lines[0] == "d: split val" and lines[1].split()[:2] == ["n", "acc"] and len(lines) == 4


class _Judge(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        answer = text.split("Reference answer: ")[1].split("\n")[0]
        response = text.split("Model response:\n")[1].split("\n\nIs the final")[0]
        verdict = "maybe" if "unsure" in response else ("Yes" if answer in response else "No.")
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_judge_accuracy_against_an_openai_compatible_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = load_reward("judge_accuracy", url=f"http://127.0.0.1:{srv.server_address[1]}/v1")
        out = judge(prompts=[[{"role": "user", "content": "q"}]] * 4,
                    completions=["it is forty-two: 42", "it is 41", "I am unsure", "x"],
                    answer=["42", "42", "42", None])  # fmt: skip
        assert out == [1.0, 0.0, None, None]
    finally:
        srv.shutdown()
        srv.server_close()
