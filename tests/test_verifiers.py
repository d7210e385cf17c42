"""The built-in verifiers on the answer forms real math/geometry data uses, and bad input."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmmr1_core import load_reward
from lmmr1_core.errors import RewardError
from lmmr1_core.rewards import LoadedReward, RewardSet


def score(name, completion, gold, **cols):
    cols = {k: [v] for k, v in cols.items()}
    return load_reward(name)(
        prompts=[[{"role": "user", "content": "q"}]], completions=[completion], answer=[gold], **cols
    )[0]


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("\\frac{1}{2}", "0.5", 1.0),  # fractions
        ("\\dfrac{3}{4}", "0.75", 1.0),
        ("\\sqrt{8}", "2\\sqrt{2}", 1.0),  # radicals, simplified
        ("50\\%", "0.5", 1.0),  # percentages
        ("[1, 3)", "[1,3)", 1.0),  # intervals
        ("[1,3)", "(1,3)", 0.0),
        ("\\{1,2\\}", "\\{2,1\\}", 1.0),  # sets, any order
        ("x=3", "3", 1.0),  # equations against their value, both ways
        ("3", "x=3", 1.0),
        ("12 cm", "12", 1.0),  # units
        ("12\\text{ cm}", "12", 1.0),
        ("30^\\circ", "30", 1.0),
        ("1,000", "1000", 1.0),  # thousands separators
        ("1,000,000", "10^6", 1.0),
        ("\\$5", "5", 1.0),
        ("x^2+2x+1", "(x+1)^2", 1.0),
        ("7", "so \\boxed{7}", 1.0),  # \boxed inside the answer
        ("3", "4", 0.0),
        # chosen behaviour where math-verify is lenient or blind (see plugins/rewards/math.py):
        ("50%", "50", 1.0),  # percent equals its number too
        ("2.5", "2,5", 0.0),  # a decimal comma reads as the set {2, 5}
        ("0.333", "1/3", 0.0),  # no rounding tolerance
        ("\\frac{\\sqrt{3}}{2}", "\\sin(60^\\circ)", 0.0),  # degrees inside trig are not evaluated
    ],
)
def test_math_accuracy_answer_forms(gold, pred, expected):
    assert score("math_accuracy", f"<think>.</think><answer>{pred}</answer>", gold) == expected


def test_math_accuracy_boxed_without_answer_tags():
    assert score("math_accuracy", "so the result is \\boxed{\\frac{3}{4}} indeed", "0.75") == 1.0


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("", "3", 0.0),  # empty completion
        ("x" * 100_000, "3", 0.0),  # huge completion, no answer
        ("<answer>" + "1+" * 50_000 + "1</answer>", "3", 0.0),  # huge answer is not parsed at all
        ("<answer>3</answer>", "???", None),  # unparseable gold: not applicable, never a free 1.0
        ("<answer>3</answer>", None, None),  # gold missing
        (b"<answer>3\xff</answer>".decode("utf-8", errors="surrogateescape"), "3", 1.0),  # non-UTF-8 bytes
    ],
)
def test_math_accuracy_bad_input(completion, gold, expected):
    assert score("math_accuracy", completion, gold) == expected


@pytest.mark.parametrize(
    "pred, expected",
    [("B", 1.0), ("(B)", 1.0), ("B.", 1.0), ("B. 45°", 1.0), ("The answer is B", 1.0), ("45°", 1.0), ("45", 1.0),
     ("C", 0.0), ("60°", 0.0), ("", 0.0)],
)  # fmt: skip
def test_choice_accuracy_forms(pred, expected):
    opts = ["30°", "45°", "60°", "90°"]
    assert score("choice_accuracy", f"<answer>{pred}</answer>", "B", options=opts) == expected


def test_choice_accuracy_reads_options_from_the_prompt_and_gold_as_text():
    prompt = [{"role": "user", "content": "Which angle?\nA. 30°\nB. 45°\nC. 60°"}]
    reward = load_reward("choice_accuracy")
    assert reward(prompts=[prompt], completions=["<answer>C</answer>"], answer=["60°"]) == [1.0]
    assert reward(prompts=[prompt], completions=["<answer>C</answer>"], answer=["F"]) == [None]


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("8.66", "5\\sqrt{3}", 1.0),  # rounded gold vs exact root (rel tol 1e-2)
        ("5\\sqrt{3}", "8.66", 1.0),
        ("8.66", "8.9", 0.0),
        ("60^\\circ", "\\frac{\\pi}{3}", 1.0),  # degrees vs radians
        ("\\frac{\\pi}{3}", "60°", 1.0),
        ("\\frac{\\pi}{3}", "60", 0.0),  # a bare 60 is not pi/3
        ("2\\pi", "6.283", 1.0),
        ("x+1", "1+x", 1.0),  # not a number: falls back to symbolic equality
        ("12", "", 0.0),
    ],
)
def test_geometry_answer(gold, pred, expected):
    assert score("geometry_answer", f"<answer>{pred}</answer>", gold) == expected


def test_geometry_answer_choice_question_and_tolerance_option():
    opts = {"A": "3", "B": "4"}
    assert score("geometry_answer", "<answer>B</answer>", "B", options=opts) == 1.0
    strict = load_reward("geometry_answer", rel_tol=1e-6)
    assert strict(prompts=["q"], completions=["<answer>8.66</answer>"], answer=["5\\sqrt{3}"]) == [0.0]


def test_length_penalty_dapo_shape():
    reward = load_reward("length_penalty", max_tokens=10, buffer=4)
    ids = [[0] * n for n in (3, 6, 8, 10, 14)]
    # soft limit 6: 0, 0, -(8-6)/4, -(10-6)/4, clamped -1
    assert reward(prompts=[""] * 5, completions=[""] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="buffer"):
        load_reward("length_penalty", max_tokens=10, buffer=0)(prompts=[""], completions=[""])


class _Scorer(BaseHTTPRequestHandler):
    calls = []
    fail_first = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        scores = [float(c.strip() == a) for c, a in zip(body["completions"], body["answers"])]
        out = json.dumps({"rewards": scores}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    _Scorer.calls, _Scorer.fail_first = [], 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/score"
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_reward_posts_the_batch_and_retries(server):
    _Scorer.fail_first = 2  # two 503s, then an answer: retried with backoff
    reward = load_reward("http_reward", url=server, backoff_s=0.01)
    out = reward(prompts=["p", "p"], completions=["4", "5"], answer=["4", "4"], id=["a", "b"])
    assert out == [1.0, 0.0]
    assert len(_Scorer.calls) == 3 and _Scorer.calls[-1]["columns"] == {"id": ["a", "b"]}


def test_http_reward_in_worker_processes(server):
    rs = RewardSet([LoadedReward("http", load_reward("http_reward", url=server), 1.0, 5.0, 2)])
    try:
        totals, _ = rs(["p"] * 3, ["1", "2", "3"], {"answer": ["1", "0", "3"], "id": ["a", "b", "c"]})
    finally:
        rs.close()
    assert totals == [1.0, 0.0, 1.0]
    # http_reward declares itself batched: one request per worker's chunk, not one per sample
    assert sorted(len(c["completions"]) for c in _Scorer.calls) == [1, 2]


def test_http_reward_server_down_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = load_reward("http_reward", url=f"http://127.0.0.1:{port}/", retries=1, backoff_s=0.01)
    with pytest.raises(RewardError, match=r"unreachable after 2 tries"):
        reward(prompts=["p"], completions=["x"], answer=["x"])
    rs = RewardSet([LoadedReward("http", reward, 1.0, 5.0, 1)])
    try:
        with pytest.raises(RewardError, match=r"reward 'http': http_reward: .* unreachable"):
            rs(["p"], ["x"], {"answer": ["x"], "id": ["a"]})
    finally:
        rs.close()


def test_batches_are_verified_in_parallel_worker_processes():
    import os

    pid = lambda prompts, completions, **kw: [float(os.getpid())] * len(completions)  # noqa: E731
    rs = RewardSet([LoadedReward("pid", pid, 1.0, 5.0, 2)])
    try:
        _, per = rs(["p"] * 4, ["a"] * 4, {"id": list("abcd")})
    finally:
        rs.close()
    pids = set(per["pid"])
    assert len(pids) == 2 and os.getpid() not in pids
