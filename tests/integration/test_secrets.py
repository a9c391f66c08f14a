"""No secret ever appears: planted fake Kaggle and W&B credentials are grepped for in every
output file of a run and in every stream (issue 9). Nothing leaves the machine: W&B is
offline and the Kaggle API host is a closed loopback port.
"""

from __future__ import annotations

import json
import socket

import pytest

from imgae_dx_jax.cli import config_main
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data import DataError, kaggle
from imgae_dx_jax.data.sources import open_store
from imgae_dx_jax.train import main as train_main

pytestmark = pytest.mark.slow

SECRETS = {
    "KAGGLE_KEY": "kagglekeyPLANTEDSECRET0001",
    "KAGGLE_API_TOKEN": "KGAT_kaggletokenPLANTEDSECRET0002",
    "WANDB_API_KEY": "wandbkeyPLANTEDSECRET0003" + "0" * 15,
}
JSON_KEY = "kagglejsonPLANTEDSECRET0004"


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def leaks(text: bytes | str) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    return [s for s in [*SECRETS.values(), JSON_KEY] if s.encode() in data]


@pytest.fixture
def _fresh_wandb_service():
    """W&B keeps one service process per Python process, with the environment it started
    with: shut it down afterwards so that later tests do not inherit the planted secrets."""
    yield
    import wandb

    wandb.teardown()


@pytest.mark.usefixtures("_fresh_wandb_service")
def test_planted_secrets_appear_nowhere(tmp_path, monkeypatch, capfd):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    config_file = home / ".kaggle" / "kaggle.json"
    config_file.write_text(json.dumps({"username": "planted-user", "key": JSON_KEY}))
    config_file.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "planted-user")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    endpoint = closed_port()
    monkeypatch.setattr(kaggle, "API_ENDPOINT", endpoint)

    run = tmp_path / "run"
    args = ["--model", "ae", "--set", "model.ae.widths=[8,16,32]", "--image-size", "32"]
    args += ["--batch-size", "8", "--set", "train.max_steps=2", "--set", "train.log_every=1"]
    args += ["--set", "tracking.images_every=1", "--wandb", "offline", "--run-dir", str(run)]
    assert train_main(args) == 0
    assert config_main(["show", "--set", "data.source=kaggle"]) == 0
    check = ["check", "--kaggle-endpoint", endpoint, "--wandb-endpoint", endpoint]
    assert config_main([*check, "--timeout", "2"]) == 0

    # A kaggle source that fails (nothing listens): the message is clear and clean.
    data = load_config(None, ["data.source=kaggle", "data.retries=0", "data.timeout=2"]).data
    with pytest.raises(DataError) as err:
        open_store(data)
    assert "cannot reach Kaggle" in str(err.value) and not leaks(str(err.value))
    assert "127.0.0.1" in str(err.value) and "api.kaggle.com" not in str(err.value)
    kaggle_run = ["--source", "kaggle", "--set", "data.retries=0"]
    code = train_main([*args[:-2], *kaggle_run, "--run-dir", str(tmp_path / "kaggle-run")])
    assert code == 2

    out, errors = capfd.readouterr()
    assert "Kaggle credentials: found" in out and "W&B credentials: found" in out
    assert "cannot reach Kaggle" in errors
    assert not leaks(out) and not leaks(errors)
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).parts[0] for p in files}
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "export", "eval", "wandb"} <= names
    leaked = {
        str(p.relative_to(run)): leaks(p.read_bytes()) for p in files if leaks(p.read_bytes())
    }
    assert not leaked
