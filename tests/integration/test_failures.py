"""Training failures: NaN loss, a checkpoint that cannot be written, Ctrl-C (issue 9).

All start from one tiny trained run (two steps, checkpoint at step 2), copied per test.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from imgae_dx_jax.config import load_config
from imgae_dx_jax.train import main as train_main
from imgae_dx_jax.training import train
from imgae_dx_jax.training.selection import ValidationAUROC

pytestmark = pytest.mark.slow

ARGS = [
    "--model",
    "ae",
    "--set",
    "model.ae.widths=[8,16,32]",
    "--set",
    "model.ae.latent_dim=8",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--wandb",
    "disabled",
    "--set",
    "train.log_every=1",
    "--set",
    "train.checkpoint_every_steps=2",
]
OVERRIDES = [
    "model.name=ae",
    "model.ae.widths=[8,16,32]",
    "model.ae.latent_dim=8",
    "data.image_size=32",
    "train.batch_size=8",
    "train.epochs=1",
    "tracking.wandb=disabled",
    "train.log_every=1",
    "train.checkpoint_every_steps=2",
]


def steps(run: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in (run / "checkpoints").iterdir()
        if p.name.isdigit() and (p / "commit_success.txt").exists()
    )


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def resume_without_evaluation(run: Path, max_steps: int) -> None:
    config = load_config(None, [*OVERRIDES, f"train.max_steps={max_steps}"])
    train(config, run)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("failures") / "base"
    train(load_config(None, [*OVERRIDES, "train.max_steps=2"]), run)
    assert steps(run) == [2]
    return run


@pytest.fixture
def run(base, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    return copy


def test_nan_loss_stops_with_one_message_and_keeps_the_checkpoint(run, capsys):
    before, export = digest(run / "checkpoints" / "2"), digest(run / "export")
    capsys.readouterr()
    nan_args = ["--set", "model.ae.learning_rate=1e30", "--set", "train.max_steps=8"]
    code = train_main([*ARGS, *nan_args, "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    message = [line for line in err.splitlines() if line.startswith("imgae-train: error")]
    assert len(message) == 1 and "Traceback" not in err
    assert "non-finite loss at step" in message[0] and "loss=" in message[0]
    assert "checkpoint is intact" in message[0] and "learning_rate=" in message[0]
    assert steps(run) == [2] and digest(run / "checkpoints" / "2") == before
    assert digest(run / "export") == export  # the export of step 2 was not replaced
    resume_without_evaluation(run, 4)  # the same run continues with a sane learning rate
    assert 4 in steps(run)


# Orbax's failed background writers complain once more when their event loop is gone.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("select", "failed", "kept"),
    [
        # The export of the last model is written after the last checkpoint: that one fails.
        ("last", "could not write checkpoint 4", "previous checkpoint (step 2) is intact"),
        # An epoch of best validation AUROC is exported before its checkpoint is saved.
        ("auto", "could not write the model export", "previous export is intact"),
    ],
)
def test_checkpoint_write_error_is_reported_and_the_previous_one_kept(
    run, capsys, monkeypatch, select, failed, kept
):
    # A real I/O error, even for root: a file-size limit makes every larger write fail
    # with EFBIG ("File too large"), the way a full disk fails with ENOSPC.
    real_run = ValidationAUROC.run  # step 4's AUROC is the best: its model is exported
    monkeypatch.setattr(ValidationAUROC, "run", lambda *a: {**real_run(*a), "val_auroc": 1.0})
    before, export = digest(run / "checkpoints" / "2"), digest(run / "export")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    capsys.readouterr()
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, limits[1]))
    try:
        args = ["--set", "train.max_steps=4", "--set", f"train.select_checkpoint={select}"]
        code = train_main([*ARGS, *args, "--run-dir", str(run)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    err = capsys.readouterr().err
    assert code == 2, err
    message = [line for line in err.splitlines() if line.startswith("imgae-train: error")]
    assert len(message) == 1 and "Traceback" not in err
    assert failed in message[0] and "File too large" in message[0], message[0]
    assert kept in message[0], message[0]
    assert steps(run) == [2] and digest(run / "checkpoints" / "2") == before
    assert digest(run / "export") == export  # the export of step 2 was not replaced
    resume_without_evaluation(run, 4)  # the leftovers are cleaned up; the run continues
    assert 4 in steps(run)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(run, capsys):
    # In-process (no interpreter start-up): a thread presses Ctrl-C once a periodic checkpoint
    # after the base one is complete; the main thread's handler turns it into a clean stop.
    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 240
        while steps(run) == [2] and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    args = [*ARGS, "--set", "train.max_steps=400", "--set", "train.checkpoint_every_steps=3"]
    capsys.readouterr()
    presser.start()
    code = train_main([*args, "--run-dir", str(run)])
    presser.join()
    err = capsys.readouterr().err
    assert code == 130, err
    assert "SIGINT received" in err and "checkpoint saved" in err and "Traceback" not in err
    assert max(steps(run)) > 3  # the save on Ctrl-C, after the periodic one
    resume_without_evaluation(run, max(steps(run)) + 1)  # and it resumes
