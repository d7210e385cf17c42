"""Secrets never reach the disk, checkpoints cannot run code, untrusted inputs are bounded."""

import json
import os
import pickle
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_run import _InterruptAt, read_jsonl, write

from lmmr1_core import hookimpl, secrets
from lmmr1_core.checkpoint import read_trainer_state, write_manifest, write_trainer_state
from lmmr1_core.cli import main
from lmmr1_core.errors import ConfigError, LmmError
from lmmr1_core.plugins import get_plugin_manager

SECRET = "sk-SECRET-123-do-not-store"


def keyed_reward(prompts, completions, api_key: str = "", **kwargs):
    """A reward that needs an API key (as a judge would); scores 1.0 only when it got the real one."""
    return [1.0 if api_key == SECRET else 0.0 for _ in completions]


class _KeyedPlugin:
    @hookimpl
    def register_rewards(self, register):
        register("keyed", keyed_reward)


@pytest.fixture
def keyed():
    pm = get_plugin_manager()
    pm.register(_KeyedPlugin(), name="keyed")
    try:
        yield
    finally:
        pm.unregister(name="keyed")


def _files_holding(root: Path, text: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_secret_by_reference_reaches_the_reward_and_nothing_else(tiny_text, tmp_path, keyed, monkeypatch):
    monkeypatch.setenv("KEYED_API_KEY", SECRET)
    f = write(tmp_path, tiny_text, steps=2, rewards="{name: keyed, api_key: '${env:KEYED_API_KEY}'}")
    result = CliRunner().invoke(main, ["run", str(f)])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "runs/small/rl/metrics.jsonl")
    assert all(r["reward/keyed"] == 1.0 for r in rows)  # the reward was given the variable's value
    assert _files_holding(tmp_path / "runs", SECRET) == [] and SECRET not in result.output
    assert "${env:KEYED_API_KEY}" in (tmp_path / "runs/small/config.yaml").read_text()
    assert "warning" not in result.output


def test_a_literal_secret_is_redacted_and_warned_about(tiny_text, tmp_path, keyed):
    f = write(tmp_path, tiny_text, steps=1, rewards=f"{{name: keyed, api_key: {SECRET}}}")
    result = CliRunner().invoke(main, ["run", str(f)])
    assert result.exit_code == 0, result.output
    assert "stages.rl.rewards.0.api_key: a secret written into the stage file" in result.output
    assert "api_key: ${env:API_KEY}" in result.output
    assert _files_holding(tmp_path / "runs", SECRET) == []
    assert SECRET not in result.output.replace(str(f), "")
    assert "api_key: '***'" in (tmp_path / "runs/small/config.yaml").read_text()


def test_an_unset_variable_is_a_config_error(tiny_text, tmp_path, keyed, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    f = write(tmp_path, tiny_text, rewards="{name: keyed, api_key: '${env:NOT_SET_ANYWHERE}'}")
    result = CliRunner().invoke(main, ["validate", str(f)])
    assert result.exit_code == 2
    assert "stages.rl.rewards.0.api_key: environment variable NOT_SET_ANYWHERE is not set" in result.output


def test_redact_keeps_references_and_hides_nested_header_values():
    data = {"rewards": [{"name": "http_reward", "url": "u", "headers": {"Authorization": "Bearer x"}},
                        {"name": "j", "api_key": "${env:K}", "max_tokens": 5, "hf_token": "t"}]}  # fmt: skip
    out = secrets.redact(data, declared=("headers",))
    assert out["rewards"][0]["headers"] == {"Authorization": "***"} and out["rewards"][0]["url"] == "u"
    assert out["rewards"][1] == {"name": "j", "api_key": "${env:K}", "max_tokens": 5, "hf_token": "***"}


def test_a_mistyped_secret_is_not_echoed_in_the_error():
    from lmmr1_core import options

    def judge(prompts, completions, api_key: int = 0, **kwargs):
        return [0.0]

    with pytest.raises(ConfigError) as err:
        options.check("rewards", "judge", judge, {"api_key": SECRET}, "f: stages.s.rewards.0")
    assert SECRET not in str(err.value) and "'***'" in str(err.value)


class _Boom:
    """A pickle that runs code when loaded: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    write_trainer_state(tmp_path, {"step": 1, "position": 0}, {"optimizer": {}, "scheduler": {}})
    read_trainer_state(tmp_path)  # the genuine article loads
    torch.save({"optimizer": _Boom(marker), "scheduler": {}, "rng": {}}, tmp_path / "trainer_state.pt")
    with pytest.raises(LmmError, match="refused to load its trainer state"):
        read_trainer_state(tmp_path)
    assert not marker.exists()
    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps(_Boom(marker)))  # a plain pickle too
    with pytest.raises(LmmError, match="refused"):
        read_trainer_state(tmp_path)
    assert not marker.exists()


def test_a_checkpoint_from_an_older_version_fails_with_what_to_do(tmp_path):
    torch.save({"step": 1}, tmp_path / "trainer_state.pt")
    with pytest.raises(LmmError, match="older lmmr1.*--fresh"):
        read_trainer_state(tmp_path)


def test_resuming_a_run_whose_checkpoint_was_tampered_with(tiny_text, tmp_path):
    f = write(tmp_path, tiny_text, steps=4, save_every=2)
    pm = get_plugin_manager()
    pm.register(_InterruptAt(3), name="interrupt")
    try:
        assert CliRunner().invoke(main, ["run", str(f)]).exit_code == 130
    finally:
        pm.unregister(name="interrupt")
    ckpt = tmp_path / "runs/small/rl/checkpoints/step-000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and "optimizer" not in state  # plain data in JSON, tensors apart
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Boom(marker), "scheduler": {}, "rng": {}}, ckpt / "trainer_state.pt")
    result = CliRunner().invoke(main, ["run", str(f)])  # the manifest no longer matches: not even opened
    assert result.exit_code == 2 and "trainer_state.pt is " in result.output and "the manifest says" in result.output
    write_manifest(ckpt)  # an attacker can write a matching manifest: the loader itself still refuses
    result = CliRunner().invoke(main, ["run", str(f)])
    assert result.exit_code == 2 and "refused to load its trainer state" in result.output
    assert not marker.exists()


def test_huge_images_are_refused_before_decoding(monkeypatch, tmp_path):
    from lmmr1_plugins.models import hf
    from PIL import Image

    from lmmr1_core.errors import DataError

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(hf, "MAX_IMAGE_PIXELS", 1000)
    decoded = []
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: decoded.append(1))
    with pytest.raises(DataError, match=r"sample s1: image .*big.png is 40x30 pixels, over the limit"):
        hf._load_image(str(tmp_path / "big.png"), "s1")
    with pytest.raises(DataError, match="sample s2: its embedded image is 40x30 pixels"):
        hf._load_image((tmp_path / "big.png").read_bytes(), "s2")
    assert decoded == []


def test_hub_datasets_never_take_trust_remote_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from test_config import stage_file, validate

    p = stage_file(tmp_path, dataset="hub", data_extra="path: some/dataset, trust_remote_code: true")
    result = validate(p)
    assert result.exit_code == 2 and "trust_remote_code" in result.output
    src = (Path(__file__).parent.parent / "plugins/datasets/files.py").read_text()
    assert "trust_remote_code" not in src


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_http_reward_verifies_tls_certificates(tmp_path):
    """A server with a self-signed certificate is refused: verification is on by default."""
    import ssl

    from lmmr1_core import load_reward
    from lmmr1_core.errors import RewardError

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True)  # fmt: skip
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append(1)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"rewards": [1.0]}')

        def log_message(self, *args):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        reward = load_reward("http_reward", url=f"https://127.0.0.1:{srv.server_address[1]}/", retries=0)
        with pytest.raises(RewardError, match="CERTIFICATE_VERIFY_FAILED"):
            reward(prompts=["p"], completions=["x"], answer=["x"])
        assert hits == []
    finally:
        srv.shutdown()
        srv.server_close()
    assert os.environ.get("PYTHONHTTPSVERIFY") != "0"
