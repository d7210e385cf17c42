"""Rebuild ``math_verify_cases.json`` from Math-Verify's own test suite (huggingface/Math-Verify, tests/).

    python tests/data/make_math_verify_cases.py MATH_VERIFY_CHECKOUT [OUT]

Runs that suite's (gold, prediction, expected) tests under pytest with ``compare_strings`` (and, for
``test_yujianll``, ``parse``/``verify``) wrapped, so each case is recorded with the settings its test
really passed (match types, float precision, strict, set-relation comparison) and the answer the
installed math-verify gave. Tests that check something other than a (gold, prediction) verdict
(string extraction, configs, timeouts, error handling) are not cases and are left out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFTEST = r"""
import json, os
import pytest

RECORDS = []

def _record(request, kind, gold, pred, settings, got):
    params = getattr(request.node, "callspec", None)
    params = dict(params.params) if params else {}
    expected = params.get("expected", params.get("result"))
    if expected is None:
        return
    RECORDS.append({
        "test": request.node.nodeid.split("::", 1)[1],
        "gold": gold, "pred": pred, "expected": int(expected), "settings": settings, "math_verify": int(got),
    })

@pytest.fixture(autouse=True)
def _wrap(request, monkeypatch):
    module = request.module
    if hasattr(module, "compare_strings"):
        original = module.compare_strings
        def compare_strings(gold, pred, match_types=["latex", "expr"], precision=6, strict=True,
                            allow_set_relation_comp=False):
            got = original(gold, pred, match_types=match_types, precision=precision, strict=strict,
                           allow_set_relation_comp=allow_set_relation_comp)
            _record(request, "compare_strings", gold, pred, {"match_types": list(match_types), "precision": precision,
                    "strict": strict, "allow_set_relation_comp": allow_set_relation_comp}, got)
            return got
        monkeypatch.setattr(module, "compare_strings", compare_strings)
    elif module.__name__.endswith("test_yujianll"):
        import math_verify
        params = request.node.callspec.params
        got = math_verify.verify(math_verify.parse(params["gold"]), math_verify.parse(params["pred"]))
        _record(request, "parse_verify", params["gold"], params["pred"], {"match_types": ["latex", "expr"],
                "precision": 6, "strict": True, "allow_set_relation_comp": False}, got)

def pytest_sessionfinish(session):
    with open(os.environ["CASES_OUT"], "w") as f:
        json.dump(RECORDS, f)
"""


def main() -> None:
    checkout = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("math_verify_cases.json")
    git_dir = checkout / ".git" if (checkout / ".git").exists() else checkout
    git = ["git", f"--git-dir={git_dir}"]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run([*git, "archive", "HEAD", "tests"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        Path(tmp, "conftest.py").write_text(CONFTEST)
        raw = Path(tmp, "cases.json")
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=tmp,
            env={**__import__("os").environ, "CASES_OUT": str(raw)},
            check=False,
        )
        cases = json.loads(raw.read_text())
    import math_verify

    data = {
        "source": "https://github.com/huggingface/Math-Verify, tests/",
        "commit": commit,
        "made_by": "tests/data/make_math_verify_cases.py",
        "math_verify_version": getattr(math_verify, "__version__", "unknown"),
        "note": "expected: the suite's verdict; math_verify: what the installed math-verify answered",
        "cases": cases,
    }
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases from {commit} -> {out}")


if __name__ == "__main__":
    main()
