"""Benchmark loaders on small files written in each benchmark's published layout, and the judge reward."""

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from lmmr1_core import load_dataset, load_reward


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 128, 0)).save(buf, format="PNG")
    return buf.getvalue()


def score(samples, completions, reward="geometry_answer"):
    return load_reward(reward)(
        prompts=[s.messages for s in samples], completions=completions, answer=[s.answer for s in samples],
        options=[s.meta.get("options") for s in samples],
    )  # fmt: skip


def test_mathvista_parquet_with_decoded_images(tmp_path):
    import datasets

    rows = {
        "pid": ["1", "2"],
        "question": ["What is the value?", "Which is bigger?"],
        "query": ["Hint: answer with a number.\nWhat is the value?", "Hint: choose.\nWhich is bigger?\nChoices: ..."],
        "image": ["images/1.jpg", "images/2.jpg"],
        "decoded_image": [png_bytes(), png_bytes()],
        "choices": [None, ["the cat", "the dog"]],
        "answer": ["3.5", "the dog"],
        "question_type": ["free_form", "multi_choice"],
        "metadata": [{"task": "figure QA", "category": "math"}, {"task": "textbook QA", "category": "general"}],
    }
    path = tmp_path / "testmini.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    samples = load_dataset("mathvista", path=str(path))
    assert [s.id for s in samples] == ["1", "2"] and samples[0].meta["category"] == "figure QA"
    assert isinstance(samples[0].images[0], bytes)  # decoded_image wins over the path
    assert samples[0].messages[0]["content"][-1]["text"].startswith("Hint: answer with a number.")
    assert score(samples, ["<answer>3.50</answer>", "<answer>B</answer>"]) == [1.0, 1.0]
    assert score(samples, ["<answer>4</answer>", "<answer>the cat</answer>"]) == [0.0, 0.0]


def test_mathvision_and_mathverse_jsonl_with_image_paths(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images/1.png")
    mv = {"id": "7", "question": "Find the angle.", "options": ["30", "45", "60"], "image": "images/1.png",
          "answer": "B", "solution": "", "level": 2, "subject": "metric geometry - angle"}  # fmt: skip
    (tmp_path / "mathvision.jsonl").write_text(json.dumps(mv) + "\n")
    [s] = load_dataset("mathvision", path=str(tmp_path / "mathvision.jsonl"))
    assert s.images == [str(tmp_path / "images/1.png")] and s.meta["category"] == "metric geometry - angle"
    assert "A. 30\nB. 45\nC. 60" in s.messages[0]["content"][-1]["text"]
    assert score([s], ["<answer>45</answer>"]) == [1.0]
    verse = {"sample_index": "11", "problem_index": "3", "problem_version": "Vision Dominant",
             "question": "q", "query_cot": "Please solve: q", "image": "images/1.png", "answer": "12",
             "question_type": "free-form", "metadata": {"subject": "plane geometry"}}  # fmt: skip
    (tmp_path / "mathverse.jsonl").write_text(json.dumps(verse) + "\n")
    [s] = load_dataset("mathverse", path=str(tmp_path / "mathverse.jsonl"))
    assert s.meta["category"] == "Vision Dominant" and s.meta["subject"] == "plane geometry"
    assert s.messages[0]["content"][-1]["text"] == "Please solve: q"


def test_mmstar_math500_gpqa(tmp_path):
    import datasets

    star = {"index": [0], "question": ["Which colour?\nOptions: A: red, B: green"], "image": [png_bytes()],
            "answer": ["B"], "category": ["coarse perception"], "l2_category": ["colour"],
            "meta_info": [{"source": "x"}]}  # fmt: skip
    datasets.Dataset.from_dict(star).save_to_disk(str(tmp_path / "mmstar"))
    [s] = load_dataset("mmstar", path=str(tmp_path / "mmstar"))
    assert s.answer == "B" and s.meta["category"] == "coarse perception" and isinstance(s.images[0], bytes)
    assert score([s], ["<answer>(B)</answer>"], "choice_accuracy") == [1.0]

    m5 = {"problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "solution": "...", "answer": "\\frac{5}{6}",
          "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"}  # fmt: skip
    (tmp_path / "math500.jsonl").write_text(json.dumps(m5) + "\n")
    [s] = load_dataset("math500", path=str(tmp_path / "math500.jsonl"), split="test")
    assert s.id == "test/prealgebra/1.json" and s.images == []
    assert score([s], ["<answer>\\boxed{5/6}</answer>"], "math_accuracy") == [1.0]

    q = {"Record ID": "rec1", "Question": "Which particle is a lepton?", "Correct Answer": "electron",
         "Incorrect Answer 1": "proton", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion",
         "High-level domain": "Physics"}  # fmt: skip
    (tmp_path / "gpqa.json").write_text(json.dumps([q]))
    [s] = load_dataset("gpqa_diamond", path=str(tmp_path / "gpqa.json"))
    letter = s.answer
    assert s.meta["options"]["ABCD".index(letter)] == "electron"  # shuffled, but the letter follows it
    assert [s.answer for s in load_dataset("gpqa_diamond", path=str(tmp_path / "gpqa.json"))] == [letter]
    assert score([s], [f"<answer>{letter}</answer>"], "choice_accuracy") == [1.0]
    assert score([s], ["<answer>electron</answer>"], "choice_accuracy") == [1.0]


def test_benchmark_record_missing_a_field_is_named(tmp_path):
    from lmmr1_core.errors import DataError

    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl\[0\]: not a math500 record: missing field 'problem'"):
        load_dataset("math500", path=str(tmp_path / "m.jsonl"))


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
