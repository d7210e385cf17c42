"""The plugin contracts: the core never imports a plugin, every contract member is documented, and the
built-in plugins meet the contracts they are registered under."""

import ast
import inspect
import re
import typing
from pathlib import Path

import pytest

from lmmr1_core import contracts
from lmmr1_core.plugins import registry

ROOT = Path(__file__).parent.parent
PROTOCOLS = [contracts.Backend, contracts.WithReference, contracts.WithCritic, contracts.WithRolloutWeights,
             contracts.WithAdapter, contracts.WithDataParallel, contracts.RolloutEngine, contracts.Algorithm,
             contracts.Env, contracts.Reward]  # fmt: skip
CAPABILITY_PROTOCOL = {contracts.REFERENCE: contracts.WithReference, contracts.CRITIC: contracts.WithCritic,
                       contracts.ROLLOUT_WEIGHTS: contracts.WithRolloutWeights,
                       contracts.ADAPTER: contracts.WithAdapter,
                       contracts.DATA_PARALLEL: contracts.WithDataParallel}  # fmt: skip


def members(proto) -> set[str]:
    """A Protocol's own and inherited members: methods and annotated attributes."""
    out: set[str] = set()
    for cls in proto.__mro__:
        if cls in (typing.Protocol, typing.Generic, object):
            continue
        out |= {n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
        out |= {n for n, v in vars(cls).items() if callable(v) and (not n.startswith("_") or n == "__call__")}
    return out - {"__call__"} if proto is not contracts.Reward else out


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_a_plugin():
    offenders = [f"{p.name} imports {m}" for p in sorted((ROOT / "lmmr1_core").glob("*.py"))
                 for m in imported_modules(p) if m.split(".")[0] == "lmmr1_plugins"]  # fmt: skip
    assert not offenders, offenders


def test_the_import_walk_sees_imports_inside_functions(tmp_path):
    """The walk above would catch the import that used to sit inside run.run()."""
    f = tmp_path / "m.py"
    f.write_text("def run():\n    from lmmr1_plugins.models.vllm_engine import rollout_engine\n")
    assert "lmmr1_plugins.models.vllm_engine" in imported_modules(f)


def test_the_core_does_not_name_builtin_algorithms_or_engines():
    """``if name == "ppo"`` / ``engine == "vllm"`` in the core would be a missing capability on a contract."""
    names = set(registry("algorithms")) | set(registry("rollout_engines"))
    for p in (ROOT / "lmmr1_core").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                assert not names & set(consts), f"{p.name}:{node.lineno} compares with a plugin name"


def test_every_contract_member_is_documented():
    doc = (ROOT / "docs/plugins.md").read_text()
    section = doc[doc.index("## Contracts") :]
    for proto in PROTOCOLS:
        assert f"**`{proto.__name__}`**" in section or f"(`{proto.__name__}`)" in section, proto.__name__
        for name in members(proto) - {"__call__"}:
            assert re.search(rf"`{name}\b", section), f"docs/plugins.md: {proto.__name__}.{name} is not documented"
    for cap in contracts.CAPABILITIES:
        assert f"| `{cap}` (`{CAPABILITY_PROTOCOL[cap].__name__}`)" in section


def _missing(obj, proto) -> list[str]:
    return sorted(n for n in members(proto) if not hasattr(obj, n))


def test_the_hf_backend_meets_the_backend_contract(tiny_text):
    from lmmr1_core import load_model

    backend = load_model("hf", path=str(tiny_text), device="cpu")
    assert isinstance(backend, contracts.Backend)
    assert _missing(backend, contracts.Backend) == []
    assert set(backend.capabilities) == set(contracts.CAPABILITIES) - {contracts.ADAPTER}  # adapter: with lora
    for cap in contracts.CAPABILITIES:
        assert _missing(backend, CAPABILITY_PROTOCOL[cap]) == [], cap


def test_the_megatron_backend_declares_what_it_implements():
    """Checked on the class: building one needs megatron-core and a process group."""
    pytest.importorskip("megatron.core")
    from lmmr1_plugins.models.megatron.backend import MegatronBackend

    instance_attrs = {"tokenizer", "eos_ids", "path", "dtype", "device", "is_vl"}  # set in __init__ or properties
    for proto in [contracts.Backend, *(CAPABILITY_PROTOCOL[c] for c in MegatronBackend.capabilities)]:
        missing = [n for n in _missing(MegatronBackend, proto) if n not in instance_attrs]
        assert missing == [], (proto.__name__, missing)
    src = inspect.getsource(MegatronBackend.__init__)
    assert "self.path" in src and "self.device, self.dtype" in src


def test_the_vllm_engine_meets_the_engine_contract():
    from lmmr1_plugins.models.vllm_engine import VLLMRollout

    assert [n for n in _missing(VLLMRollout, contracts.RolloutEngine) if n != "last_sync_s"] == []
    assert "self.last_sync_s" in inspect.getsource(VLLMRollout.__init__)
    assert registry("rollout_engines")["vllm"].plugin == "builtin_models"


@pytest.mark.parametrize("name", sorted(registry("algorithms")))
def test_builtin_algorithms_meet_the_algorithm_contract(name):
    algorithm = registry("algorithms")[name].obj()
    required = members(contracts.Algorithm)
    if not algorithm.needs_critic:
        required -= {"value_targets", "value_loss"}
    assert sorted(n for n in required if not hasattr(algorithm, n)) == []
    if algorithm.needs_critic:
        assert algorithm.critic_lr > 0


@pytest.mark.parametrize("name", ["sokoban"])
def test_builtin_envs_meet_the_env_contract(name):
    env = registry("envs")[name].obj()
    assert isinstance(env, contracts.Env)
    obs = env.reset(3)
    assert obs.text and env.reset(3).text == obs.text


def _no_critic_backend(**cfg):
    from lmmr1_core import load_model

    backend = load_model("hf", **cfg)
    backend.capabilities = frozenset({contracts.REFERENCE})
    return backend


def test_a_backend_without_a_critic_is_refused_before_the_first_step(tiny_text, tmp_path, plugin, monkeypatch):
    """A third-party backend that declares no critic gets one clear line for ppo, not an AttributeError."""
    from click.testing import CliRunner

    from lmmr1_core import hookimpl
    from lmmr1_core.cli import main

    class NoCritic:
        @hookimpl
        def register_models(self, register):
            register("no_critic", _no_critic_backend)

    plugin(NoCritic())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n')
    (tmp_path / "s.yaml").write_text(f"""
name: t
model: {{backend: no_critic, path: {tiny_text}, device: cpu}}
stages:
  a:
    kind: rl
    data: [{{dataset: jsonl, path: d.jsonl}}]
    rewards: [{{name: math_accuracy}}]
    algorithm: {{name: ppo, group_size: 2}}
    generation: {{max_new_tokens: 4}}
    steps: 1
""")
    result = CliRunner().invoke(main, ["run", "s.yaml"])
    assert result.exit_code == 2, result.output
    assert "algorithm 'ppo' needs a model backend with the 'critic' capability" in result.output
    assert not (tmp_path / "runs/t/a/metrics.jsonl").exists() or not (tmp_path / "runs/t/a/metrics.jsonl").read_text()
