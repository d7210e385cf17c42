"""Small copies of the benchmarks LMM-R1 reports on, in the layouts their publishers ship.

Each builder writes ``datasets`` data with the benchmark's own Features (``Image()`` columns hold
embedded PNG bytes, as the hub's parquet files do) the way the hub writes it: ``save_to_disk`` folders
of a ``DatasetDict`` with every published split, and the repository's data files. Records are real
ones from each benchmark (shortened); the schema facts and where they come from:

- MathVista (``AI4Math/MathVista``): dataset card ``dataset_info`` (README.md @ d32e834): features pid,
  question, image (str), decoded_image (image), choices (sequence), unit, precision (float64), answer,
  question_type, answer_type, metadata (struct: category, context, grade, img_height, img_width,
  language, skills, source, split, task), query; configs: split ``testmini`` -> ``data/testmini-*``
  (1,000), ``test`` -> ``data/test-*`` (5,141), "the answer labels for test will NOT be publicly
  released" (card, Data Downloading). The repository also ships ``annot_testmini.json`` ({pid: record}).
- MathVerse (``AI4Math/MathVerse``): card ``dataset_info`` config ``testmini``: sample_index,
  problem_index, problem_version, question, image (image), answer, question_type, metadata (struct:
  split, source, subject, subfield), query_wo, query_cot, question_for_eval; split ``testmini``
  (3,940) -> ``testmini.parquet``; config ``testmini_text_only`` -> ``testmini_text_only.parquet``.
- MathVision (``MathLLMs/MathVision``): card ``dataset_info``: id, question, options (sequence), image
  (str), decoded_image (image), answer, solution, level (int64), subject; splits ``test`` (3,040) ->
  ``data/test-*``, ``testmini`` (304) -> ``data/testmini-*``. The GitHub repository
  (``mathllm/MATH-V``) ships ``data/test.jsonl`` / ``data/testmini.jsonl`` whose ``image`` is
  ``images/<id>.jpg`` at the repository root, ``solution`` null, questions with ``<image1>`` markers and
  ``options`` of just ``A``..``E`` when the choices are drawn in the figure (its ``models/Qwen-VL.py``
  then prompts no option lines: ``if ''.join(options) != 'ABCDE'``).
- MMStar (``Lin-Chen/MMStar``): card ``dataset_info`` (commit a9beb09): index (int64), question,
  image (image), answer, category, l2_category, meta_info (struct: source, split, image_path); config
  split ``val`` -> ``mmstar.parquet`` (1,500). Options inline in the question: "...\\nOptions: A: The
  suitcase is on the book., B: ..." (record as quoted in public evaluation logs). The repository also
  ships ``MMStar.tsv`` (VLMEvalKit's layout: index, question, answer, category, l2_category, bench,
  image as base64, as read by public MMStar.tsv adapters); VLMEvalKit's multiple-choice .tsv files
  may carry the options as ``A``..``D`` columns instead.
- MATH-500 (``HuggingFaceH4/MATH-500``): ``test.jsonl``, split ``test``: problem, solution, answer,
  subject, level, unique_id.
- GPQA (``Idavidrein/gpqa``): ``gpqa_diamond.csv``, config ``gpqa_diamond``, one split ``train``
  (lm-evaluation-harness ``tasks/gpqa``: "huggingface dataset only has train split"); columns include
  Pre-Revision Question, Question, Correct Answer, Incorrect Answer 1-3, Explanation, Record ID,
  High-level domain, Subdomain (card ``dataset_info`` of a mirror of the repository).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image as PILImage


def png(color=(0, 128, 0)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _image(color=(0, 128, 0)) -> dict:
    return {"bytes": png(color), "path": None}


def _save(dd, root: Path, files: dict[str, str]) -> None:
    """``save_to_disk`` under root/saved, and each split as the repository's data file (``files[split]``)."""
    dd.save_to_disk(str(root / "saved"))
    for split, name in files.items():
        out = root / "repo" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        dd[split].to_parquet(str(out)) if name.endswith(".parquet") else dd[split].to_json(str(out))


# --- MathVista -------------------------------------------------------------------------------------


def mathvista_features():
    from datasets import Features, Image, Sequence, Value

    meta = {k: Value("string") for k in ("category", "context", "grade", "language", "source", "split", "task")}
    meta.update(img_height=Value("int64"), img_width=Value("int64"), skills=Sequence(Value("string")))
    return Features({
        "pid": Value("string"), "question": Value("string"), "image": Value("string"), "decoded_image": Image(),
        "choices": Sequence(Value("string")), "unit": Value("string"), "precision": Value("float64"),
        "answer": Value("string"), "question_type": Value("string"), "answer_type": Value("string"),
        "metadata": meta, "query": Value("string"),
    })  # fmt: skip


def _mathvista_rows(split: str, answers: bool) -> dict:
    def meta(task, category):
        return {"category": category, "context": "geometry diagram", "grade": "high school", "img_height": 30,
                "img_width": 40, "language": "english", "skills": ["geometry reasoning"], "source": "Geometry3K",
                "split": split, "task": task}  # fmt: skip

    return {
        "pid": ["1", "2"],
        "question": ["When a spring does work on an object, ... how much work?", "Which is bigger?"],
        "image": ["images/1.jpg", "images/2.jpg"],
        "decoded_image": [_image(), _image((0, 0, 200))],
        "choices": [None, ["the cat", "the dog"]],
        "unit": [None, None],
        "precision": [1.0, None],
        "answer": ["1.2", "the dog"] if answers else ["", ""],
        "question_type": ["free_form", "multi_choice"],
        "answer_type": ["float", "text"],
        "metadata": [meta("textbook question answering", "math-targeted-vqa"), meta("figure question answering",
                                                                                      "general-vqa")],
        "query": ["Hint: Please answer the question requiring a floating-point number with one decimal place and "
                  "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: When a spring does work on "
                  "an object, ... how much work?",
                  "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
                  "the end.\nQuestion: Which is bigger?\nChoices:\n(A) the cat\n(B) the dog"],
    }  # fmt: skip


def mathvista(root: Path) -> Path:
    """root/saved (testmini + test), root/repo/data/{testmini,test}-*.parquet and annot_testmini.json."""
    from datasets import Dataset, DatasetDict, Image

    f = mathvista_features()
    dd = DatasetDict({"testmini": Dataset.from_dict(_mathvista_rows("testmini", True), features=f),
                      "test": Dataset.from_dict(_mathvista_rows("test", False), features=f)})  # fmt: skip
    _save(dd, root, {"testmini": "data/testmini-00000-of-00001-725687bf7a18d64b.parquet",
                     "test": "data/test-00000-of-00002-6b81bd7f7e2065e6.parquet"})  # fmt: skip
    annot = {}
    for rec in dd["testmini"].cast_column("decoded_image", Image(decode=False)):
        rec = dict(rec)
        rec.pop("decoded_image")
        annot[rec["pid"]] = rec
    (root / "repo/annot_testmini.json").write_text(json.dumps(annot))
    (root / "repo/images").mkdir()
    for pid in annot:
        PILImage.new("RGB", (40, 30)).save(root / f"repo/images/{pid}.jpg")
    return root


# --- MathVerse -------------------------------------------------------------------------------------


def mathverse(root: Path) -> Path:
    """root/saved (DatasetDict with split testmini) and root/repo/testmini.parquet."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    f = Features({
        "sample_index": Value("string"), "problem_index": Value("string"), "problem_version": Value("string"),
        "question": Value("string"), "image": Image(), "answer": Value("string"),
        "question_type": Value("string"),
        "metadata": {k: Value("string") for k in ("split", "source", "subject", "subfield")},
        "query_wo": Value("string"), "query_cot": Value("string"), "question_for_eval": Value("string"),
    })  # fmt: skip
    q = ("As shown in the figure, AB is the diameter of circle O, ... then the degree of angle BCD is ()\n"
         "Choices:\nA:25°\nB:35°\nC:45°\nD:65°")  # fmt: skip
    rows = {
        "sample_index": ["1", "6"], "problem_index": ["1", "2"],
        "problem_version": ["Text Dominant", "Vision Only"],
        "question": [q, ""], "image": [_image(), _image()], "answer": ["A", "12"],
        "question_type": ["multi-choice", "free-form"],
        "metadata": [{"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
                     {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Length"}],
        "query_wo": ["Please directly answer the question ...\nQuestion: " + q, "..."],
        "query_cot": ["Please first conduct reasoning, and then answer the question ...\nQuestion: " + q,
                      "According to the question shown in the image, please first conduct reasoning ..."],
        "question_for_eval": [q, "According to the question shown in the image, ..."],
    }  # fmt: skip
    dd = DatasetDict({"testmini": Dataset.from_dict(rows, features=f)})
    _save(dd, root, {"testmini": "testmini.parquet"})
    return root


# --- MathVision ------------------------------------------------------------------------------------

MATHVISION_RECORDS = [  # data/test.jsonl of mathllm/MATH-V, ids 1, 2, 15 and 21
    {"id": "1", "question": "Which number should be written in place of the question mark?\n<image1>",
     "options": [], "answer": "60", "solution": None, "level": 2, "subject": "arithmetic", "image": "images/1.jpg"},
    {"id": "2", "question": "Which bike is most expensive?\n<image1>", "options": ["A", "B", "C", "D", "E"],
     "answer": "A", "solution": None, "level": 2, "subject": "arithmetic", "image": "images/2.jpg"},
    {"id": "15", "question": "Emily celebrated her birthday on Thursday, and her sister Liepa 8 days earlier. "
     "Which weekday was that?\n<image1>", "options": ["Wednesday", "Thursday", "Friday", "Tuesday", "Sunday"],
     "answer": "A", "solution": None, "level": 2, "subject": "arithmetic", "image": "images/15.jpg"},
    {"id": "21", "question": "Which of the figures shown bellow cannot be cut out of the figure illustrated "
     "nearby?\n<image1>\n<image2>", "options": ["A", "B", "C", "D", "E"], "answer": "E", "solution": None,
     "level": 1, "subject": "combinatorial geometry", "image": "images/21.jpg"},
]  # fmt: skip


def mathvision(root: Path) -> Path:
    """root/saved (test + testmini), root/repo/data/{test,testmini}-*.parquet (hub) and root/github
    (data/test.jsonl, data/testmini.jsonl, images/ at the root)."""
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value

    f = Features({
        "id": Value("string"), "question": Value("string"), "options": Sequence(Value("string")),
        "image": Value("string"), "decoded_image": Image(), "answer": Value("string"),
        "solution": Value("string"), "level": Value("int64"), "subject": Value("string"),
    })  # fmt: skip

    def rows(recs):
        return {k: [r[k] for r in recs] for k in f if k != "decoded_image"} | {"decoded_image": [_image()] * len(recs)}

    dd = DatasetDict({"test": Dataset.from_dict(rows(MATHVISION_RECORDS), features=f),
                      "testmini": Dataset.from_dict(rows(MATHVISION_RECORDS[:2]), features=f)})  # fmt: skip
    _save(dd, root, {"test": "data/test-00000-of-00001-3532b8d3f1b4047a.parquet",
                     "testmini": "data/testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet"})  # fmt: skip
    gh = root / "github"
    (gh / "data").mkdir(parents=True)
    (gh / "images").mkdir()
    for name, recs in (("test", MATHVISION_RECORDS), ("testmini", MATHVISION_RECORDS[:2])):
        (gh / f"data/{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for r in MATHVISION_RECORDS:
        PILImage.new("RGB", (40, 30)).save(gh / r["image"])
    return root


# --- MMStar ----------------------------------------------------------------------------------------

MMSTAR_QUESTIONS = [
    "Which option describe the object relationship in the image correctly?\nOptions: A: The suitcase is on the "
    "book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., D: The suitcase is beneath "
    "the book.",
    "What is shown?\nOptions: A: A cat, sitting on a mat., B: Two dogs, C: 3, 4, and 5, D: None",
]
MMSTAR_ANSWERS = ["A", "C"]


def mmstar(root: Path) -> Path:
    """root/saved (DatasetDict with split val), root/repo/mmstar.parquet and root/repo/MMStar.tsv."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    f = Features({
        "index": Value("int64"), "question": Value("string"), "image": Image(), "answer": Value("string"),
        "category": Value("string"), "l2_category": Value("string"),
        "meta_info": {"source": Value("string"), "split": Value("string"), "image_path": Value("string")},
    })  # fmt: skip
    rows = {"index": [0, 1], "question": MMSTAR_QUESTIONS, "image": [_image(), _image((9, 9, 9))],
            "answer": MMSTAR_ANSWERS, "category": ["instance reasoning", "fine-grained perception"],
            "l2_category": ["cross-instance relation reasoning", "object counting"],
            "meta_info": [{"source": "MMBench", "split": "val", "image_path": "images/0.jpg"},
                          {"source": "SEEDBench_IMG", "split": "val", "image_path": "images/1.jpg"}]}  # fmt: skip
    dd = DatasetDict({"val": Dataset.from_dict(rows, features=f)})
    _save(dd, root, {"val": "mmstar.parquet"})
    tsv = Dataset.from_dict({
        "index": [0, 1], "question": MMSTAR_QUESTIONS, "answer": MMSTAR_ANSWERS,
        "category": rows["category"], "l2_category": rows["l2_category"], "bench": ["MMBench", "SEEDBench_IMG"],
        "image": [base64.b64encode(png()).decode(), "0"],  # "0": the same image as the row with index 0
    })  # fmt: skip
    tsv.to_csv(str(root / "repo/MMStar.tsv"), sep="\t", index=False)
    return root


def vlmevalkit_mcq_tsv(path: Path) -> Path:
    """A VLMEvalKit multiple-choice .tsv: the options as A..D columns, the question without them."""
    from datasets import Dataset

    Dataset.from_dict({
        "index": [7], "question": ["Which colour is the square?"], "A": ["red"], "B": ["green"], "C": ["blue"],
        "D": [None], "answer": ["B"], "category": ["coarse perception"], "l2_category": ["image style & quality"],
        "image": [base64.b64encode(png()).decode()],
    }).to_csv(str(path), sep="\t", index=False)  # fmt: skip
    return path


# --- MATH-500 and GPQA -----------------------------------------------------------------------------

MATH500_RECORDS = [
    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.", "solution": "...",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"},
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "solution": "...", "answer": "\\frac{5}{6}",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"},
]  # fmt: skip


def math500(root: Path) -> Path:
    """root/repo/test.jsonl and root/saved (DatasetDict with split test)."""
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"test": Dataset.from_list(MATH500_RECORDS)})
    _save(dd, root, {"test": "test.jsonl"})
    return root


GPQA_COLUMNS = ["Pre-Revision Question", "Pre-Revision Correct Answer", "Pre-Revision Incorrect Answer 1",
                "Pre-Revision Incorrect Answer 2", "Pre-Revision Incorrect Answer 3", "Pre-Revision Explanation",
                "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3",
                "Explanation", "Subdomain", "Record ID", "High-level domain"]  # fmt: skip


def gpqa(root: Path) -> Path:
    """root/repo/gpqa_diamond.csv (written by pandas, multi-line quoted cells) and root/saved (split train)."""
    from datasets import Dataset, DatasetDict

    q1 = "Which particle is a lepton?\nConsider, among others, the following."
    rec1 = ["", "", "", "", "", "", q1, "electron", "proton", "neutron", "pion", "Leptons: e, mu, tau.",
            "Particle Physics", "recA1b2", "Physics"]  # fmt: skip
    rec2 = ["", "", "", "", "", "", "What is 1,2-dichloroethane's formula?", " C2H4Cl2 ", "CH2Cl2", "C2H2Cl2",
            "C2H5Cl", "", "Organic Chemistry", "recC3d4", "Chemistry"]  # fmt: skip
    ds = Dataset.from_dict({c: [rec1[k], rec2[k]] for k, c in enumerate(GPQA_COLUMNS)})
    (root / "repo").mkdir(parents=True)
    ds.to_csv(str(root / "repo/gpqa_diamond.csv"), index=False)
    DatasetDict({"train": ds}).save_to_disk(str(root / "saved"))
    return root
