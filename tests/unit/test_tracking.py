"""W&B tracking: an offline run is written locally with the logged keys and no secrets."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from imgae_dx_jax.config import ConfigError, load_config, to_dict
from imgae_dx_jax.tracking import Tracker, TrackingError, wandb_credentials, wandb_server

SIGNED = "https://storage.example.com/archive.zip?X-Goog-Signature=deadbeef"


def test_offline_run_is_written_with_the_logged_keys(tmp_path, monkeypatch):
    config = to_dict(load_config())
    config["data"]["path"] = SIGNED
    # W&B records the command line: a signed --data URL must not reach it whole.
    argv = ["imgae-train", "--source", "url", "--data", SIGNED, "--run-dir", "argv-marker"]
    monkeypatch.setattr(sys, "argv", argv)
    tracker = Tracker.from_config(load_config().tracking, job_type="evaluate")
    assert tracker.mode == "offline" and not tracker.enabled
    with tracker:
        tracker.start(config | {"kaggle_token": "s3cret"}, tmp_path / "run")
        assert tracker.enabled and sys.argv is argv
        tracker.log({"loss": 0.5, "val/auroc": np.float32(0.75)}, step=1)
        tracker.log({"images_per_s": 12.0}, step=2)
        tracker.log_images(
            {"samples/reconstruction": np.zeros((8, 8, 1), np.float32)},
            step=3,
            captions={"samples/reconstruction": "step 3"},
        )
        tracker.log_table("test/per_finding", ["finding", "auroc"], [["Mass", 0.7]], step=3)
        tracker.summary({"test/auroc": 0.75})
        run_dir = tracker.run_dir
    assert not tracker.enabled
    assert run_dir is not None and run_dir.parent == tmp_path / "run" / "wandb"
    assert run_dir.name.startswith("offline-run-")
    keys = (
        b"loss",
        b"val/auroc",
        b"images_per_s",
        b"samples/reconstruction",
        b"test/per_finding",
        b"test/auroc",
        b"image_size",
        b"argv-marker",
        b"https://storage.example.com/archive.zip",
    )
    # W&B's service process may still be flushing the run file right after finish().
    deadline = time.monotonic() + 30
    while True:
        data = b"".join(p.read_bytes() for p in run_dir.glob("run-*.wandb"))
        if all(key in data for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for key in keys:
        assert key in data, key
    assert b"s3cret" not in data and b"deadbeef" not in data
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert list((run_dir / "files" / "media" / "table").rglob("*.table.json"))


def test_configured_directory_and_disabled_mode(tmp_path):
    elsewhere = tmp_path / "wandb-logs"
    with Tracker("offline", directory=elsewhere) as tracker:
        tracker.start({"a": 1}, tmp_path / "run")
        assert tracker.run_dir is not None and tracker.run_dir.parent == elsewhere / "wandb"
    disabled = Tracker("disabled")
    disabled.start({"a": 1}, tmp_path / "off")
    disabled.log({"loss": 1.0}, step=1)
    disabled.finish()
    assert not disabled.enabled and not (tmp_path / "off").exists()


def test_online_without_credentials_is_one_clear_error(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "login", lambda **kwargs: False)
    with pytest.raises(TrackingError, match="wandb login"):
        Tracker("online").start({"a": 1}, tmp_path)


def test_bad_modes_are_rejected():
    with pytest.raises(TrackingError, match="choose one of"):
        Tracker("sometimes")
    with pytest.raises(ConfigError, match=r"tracking\.wandb"):
        load_config(overrides=["tracking.wandb=sometimes"])


def test_wandb_credentials_say_where_never_what(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials() is None  # no file
    netrc.write_text("machine example.org login user password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert wandb_server() == "https://api.wandb.ai" and wandb_credentials() is None
    monkeypatch.setenv("WANDB_BASE_URL", "https://example.org")
    assert wandb_credentials() == f"{netrc} entry for example.org"
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    found = wandb_credentials()
    assert found == "WANDB_API_KEY environment variable" and "0123" not in found
