import os
import sys
from pathlib import Path

import pytest

from lmmr1_core.threads import prepare_environment

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
prepare_environment()  # as the CLI does, before anything loads torch: in-process runs compute what CLI runs do
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tests/helper_plugins.py holds module-level (forkable) test rewards


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    from lmmr1_plugins.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-text", "text")


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> Path:
    from lmmr1_plugins.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-vl", "vl")


@pytest.fixture
def plugin(request):
    """Register an in-process plugin (a module or class) for one test, unregistered in ``finally``."""
    from lmmr1_core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    registered = []

    def add(obj, name=None):
        registered.append(pm.register(obj, name=name))
        return obj

    try:
        yield add
    finally:
        for name in registered:
            pm.unregister(name=name)


def write_stage(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_stage_file(tmp_path: Path, name: str, sets: list[str] = ()):
    """``lmmr1 run stages/NAME`` as a user runs it: a subprocess in a fresh directory holding a copy of
    ``stages/``; returns the finished process (stdout/stderr captured)."""
    import shutil
    import subprocess

    shutil.copytree(TESTS.parent / "stages", tmp_path / "stages", dirs_exist_ok=True)
    cmd = [sys.executable, "-m", "lmmr1_core.cli", "run", f"stages/{name}", *(a for s in sets for a in ("--set", s))]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
