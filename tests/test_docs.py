"""Every hook is documented with its exact signature and exercised by some test (datasette's rule)."""

import inspect
import re
from pathlib import Path

from lmmr1_core import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "lmmr1_spec")]


def test_hookspecs_found():
    assert {"register_rewards", "register_models", "on_step_end"} <= set(HOOKS)


def test_every_hook_is_documented_with_its_signature():
    doc = (ROOT / "docs/plugins.md").read_text()
    for name in HOOKS:
        sig = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"### `{sig}`" in doc, f"docs/plugins.md lacks a section for {sig}"


def test_every_hook_is_used_by_a_test_or_builtin_plugin():
    sources = "".join(p.read_text() for p in [*(ROOT / "tests").glob("test_*.py"), *(ROOT / "plugins").rglob("*.py")])
    for name in HOOKS:
        assert re.search(rf"\b{name}\b", sources), f"no test or built-in plugin uses {name}"
