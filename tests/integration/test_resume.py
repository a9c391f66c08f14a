"""Exact resume: killed runs, progressive stages, corrupt checkpoints, mismatched configs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from imgae_dx_jax.checkpoints import MIRROR_TMP_PREFIX, Checkpoints
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.stores import sample_archive_path
from imgae_dx_jax.train import main as train_main
from imgae_dx_jax.training import train

pytestmark = pytest.mark.slow

TINY_UNET = [
    "--model",
    "unet",
    "--set",
    "model.unet.widths=[8,16,32]",
    "--set",
    "model.unet.groups=4",
]
TINY_AE = ["--model", "ae", "--set", "model.ae.widths=[8,16,32]", "--set", "model.ae.latent_dim=8"]
# W&B is not under test here; its background writer would race the directory digests.
COMMON = [
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--set",
    "train.log_every=2",
    # A cosine schedule spans the step budget known to each invocation, so stage-by-stage
    # training equals one invocation only at a constant rate (or a fixed train.max_steps).
    "--set",
    "train.lr_schedule=constant",
    "--wandb",
    "disabled",
]


def export_params(run: Path) -> dict[str, np.ndarray]:
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore((run / "export" / "model").absolute())
    flat = {}

    def visit(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}/{key}", value)
        else:
            flat[prefix] = np.asarray(node)

    visit("", tree)
    return flat


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = export_params(a), export_params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def completed_steps(run: Path) -> list[int]:
    ckpt = run / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in ckpt.iterdir()
        if p.name.isdigit() and (p / "commit_success.txt").exists()
    )


def launch(args: list[str]) -> subprocess.Popen[bytes]:
    code = "import sys; from imgae_dx_jax.train import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("model_args", "sig"),
    [(TINY_UNET, signal.SIGKILL), (TINY_AE, signal.SIGTERM)],
    ids=["unet-sigkill", "ae-sigterm"],
)
def test_killed_run_resumes_bit_identically(tmp_path, model_args, sig):
    args = [
        *model_args,
        *COMMON,
        "--epochs",
        "2",
        "--set",
        "train.max_steps=14",
        "--set",
        "train.checkpoint_every_steps=3",
    ]
    reference = tmp_path / "reference"
    assert train_main([*args, "--run-dir", str(reference)]) == 0

    run = tmp_path / "killed run"
    process = launch([*args, "--run-dir", str(run)])
    try:
        # Kill right after the first complete checkpoint (SIGKILL: no chance to save more);
        # SIGTERM instead asks for a save at the next step and a clean exit.
        wait_for(lambda: completed_steps(run) or process.poll() is not None)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        process.send_signal(sig)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    if sig == signal.SIGTERM:
        assert code == 143
        assert b"checkpoint saved" in process.stderr.read()
    else:
        assert code == -signal.SIGKILL
    assert not (run / "export").exists()
    assert 0 < max(completed_steps(run)) < 14

    assert train_main([*args, "--run-dir", str(run)]) == 0
    assert_same_params(reference, run)
    assert (reference / "eval" / "scores.csv").read_text() == (
        run / "eval" / "scores.csv"
    ).read_text()


def two_stage_archive(path: Path) -> Path:
    """The sample with its images split by name order over images_001 and images_002."""
    with zipfile.ZipFile(sample_archive_path()) as src, zipfile.ZipFile(path, "w") as dst:
        images = sorted(n for n in src.namelist() if n.endswith(".png"))
        for name in src.namelist():
            target = name
            if name in images[600:]:
                target = name.replace("images_001/", "images_002/")
            dst.writestr(target, src.read(name))
    return path


def test_progressive_stages_in_two_invocations_equal_one(tmp_path, capsys):
    archive = two_stage_archive(tmp_path / "two_stages.zip")
    args = [*TINY_AE, *COMMON, "--epochs", "1", "--source", "archive", "--data", str(archive)]
    together = tmp_path / "together"
    assert train_main([*args, "--stage", "images_001,images_002", "--run-dir", str(together)]) == 0
    apart = tmp_path / "apart"
    assert train_main([*args, "--stage", "images_001", "--run-dir", str(apart)]) == 0
    capsys.readouterr()
    assert train_main([*args, "--stage", "images_002", "--run-dir", str(apart)]) == 0
    assert "checkpoint 14 (stage images_001: 1 full epoch(s) and 0 step(s) trained)" in (
        capsys.readouterr().err
    )
    assert_same_params(together, apart)
    for run in (together, apart):
        assert "- images_001\n  - images_002" in (run / "config.yaml").read_text()
    assert (together / "eval" / "scores.csv").read_text() == (
        apart / "eval" / "scores.csv"
    ).read_text()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        *TINY_AE,
        *COMMON,
        "--epochs",
        "1",
        "--set",
        "train.checkpoint_every_steps=2",
        "--run-dir",
        str(run),
    ]
    assert train_main([*args, "--set", "train.max_steps=4"]) == 0
    assert completed_steps(run) == [2, 4]
    for blob in (run / "checkpoints" / "4" / "model").rglob("d/*"):
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    capsys.readouterr()
    assert train_main([*args, "--set", "train.max_steps=6"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and len(warnings[0]) < 600, warnings  # not TensorStore's text
    assert "checkpoint 4 is unreadable (" in warnings[0]
    assert f"moved to {run / 'checkpoints' / 'corrupt-4'}" in warnings[0]
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert "resuming from checkpoint 2" in err
    assert (run / "checkpoints" / "corrupt-4").is_dir()
    assert 6 in completed_steps(run)


def test_mismatched_or_ineffective_config_is_refused_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY_AE, *COMMON, "--epochs", "1", "--set", "train.max_steps=2", "--run-dir", str(run)]
    assert train_main(args) == 0
    before = tree_digest(run)
    capsys.readouterr()
    assert train_main([*args, "--set", "model.ae.latent_dim=4"]) == 2
    err = capsys.readouterr().err
    assert "model.ae.latent_dim: 8 -> 4" in err and "Traceback" not in err
    # A finished run trains nothing: a new learning rate would silently not take effect.
    assert train_main([*args, "--set", "model.ae.learning_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "model.ae.learning_rate: 0.001 -> 0.0001" in err
    assert "another --run-dir" in err and "Traceback" not in err
    assert train_main([*args[:-2], "--run-dir", str(run), "--resume", "never"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert tree_digest(run) == before


def test_a_finished_run_rerun_with_other_evaluation_settings_is_evaluated_with_them(
    tmp_path, capsys
):
    run = tmp_path / "run"
    args = [*TINY_AE, *COMMON, "--epochs", "1", "--set", "train.max_steps=4", "--run-dir", str(run)]
    assert train_main(args) == 0
    params = export_params(run)
    capsys.readouterr()
    assert train_main([*args, "--set", "eval.threshold=youden", "--set", "eval.score=mean"]) == 0
    out, err = capsys.readouterr()
    assert "image score mean (eval.score mean" in out
    assert "checkpoint 4 (stage images_001: 0 full epoch(s) and 4 step(s) trained)" in err
    exported = yaml.safe_load((run / "export" / "config.yaml").read_text())
    assert exported["eval"]["threshold"] == "youden" and exported["eval"]["score"] == "mean"
    saved = json.loads((run / "export" / "threshold.json").read_text())
    assert saved["score"] == "mean"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["threshold_rule"] == "youden"
    assert all(np.array_equal(params[k], v) for k, v in export_params(run).items())


def test_run_of_an_older_release_resumes(tmp_path, capsys):
    """A config.yaml without the keys added since (an older release's run) still resumes."""
    run = tmp_path / "run"
    args = [*TINY_AE, *COMMON, "--epochs", "1", "--run-dir", str(run)]
    assert train_main([*args, "--set", "train.max_steps=2"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["tracking"], saved["model"]["fast_path"], saved["train"]["precision"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    assert train_main([*args, "--set", "train.max_steps=4"]) == 0
    err = capsys.readouterr().err
    assert "predates these settings" in err and "model.fast_path" in err
    assert "resuming from checkpoint 2" in err
    assert 4 in completed_steps(run)


# Trains with every file copied to the run directory slowed down, like a lazily synced mount.
SLOW_MOUNT_TRAINING = """
import sys, time
from pathlib import Path
from imgae_dx_jax import checkpoints
from imgae_dx_jax.config import load_config
from imgae_dx_jax.training import train

copy = checkpoints._copy_file

def slow_copy(source, destination):
    time.sleep(float(sys.argv[1]))
    copy(source, destination)

checkpoints._copy_file = slow_copy
train(load_config(overrides=sys.argv[3:]), Path(sys.argv[2]))
"""


def test_a_run_on_a_slow_mount_killed_at_any_point_restores_from_the_run_directory(
    tmp_path, caplog
):
    run, local = tmp_path / "run on a slow mount", tmp_path / "local disk"
    settings = [
        "model.name=ae",
        "model.ae.widths=[8,16,32]",
        "model.ae.latent_dim=8",
        "data.image_size=32",
        "train.batch_size=8",
        "train.epochs=1",
        "train.max_steps=12",
        "train.checkpoint_every_steps=1",
        "train.keep_checkpoints=2",
        f"train.local_checkpoint_dir={local}",
        "tracking.wandb=disabled",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_MOUNT_TRAINING, "0.02", str(run), *settings],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Freezing the process (SIGSTOP) and copying the run directory gives what a kill at that
    # moment leaves there; many such moments, then a real SIGKILL.
    pauses, snapshots, caught_copying = random.Random(0), [], 0
    try:
        wait_for(lambda: completed_steps(run) or process.poll() is not None)
        while len(snapshots) < 8 and process.poll() is None:
            time.sleep(pauses.uniform(0.05, 0.5))
            snapshot = tmp_path / f"killed {len(snapshots)}" / "checkpoints"
            process.send_signal(signal.SIGSTOP)
            try:
                shutil.copytree(run / "checkpoints", snapshot)
            finally:
                process.send_signal(signal.SIGCONT)
            caught_copying += any(snapshot.glob(f"{MIRROR_TMP_PREFIX}*"))
            snapshots.append(snapshot)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        process.kill()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert caught_copying, "no kill fell in the middle of a copy: slow the copies down"

    for number, snapshot in enumerate(snapshots):  # each restored on a new machine
        newest = max(int(p.name) for p in snapshot.iterdir() if p.name.isdigit())
        checkpoints = Checkpoints(snapshot, keep=2, staging=tmp_path / f"new machine {number}")
        step, restored = checkpoints.restore_latest(None, None)
        kept = {str(s) for s in checkpoints.steps()}
        checkpoints.close()
        assert step == newest == restored["meta"]["progress"]["step"]  # none was set aside
        assert {p.name for p in snapshot.iterdir()} == kept  # and no leftover remains

    last = max(completed_steps(run))
    assert last < 12
    shutil.rmtree(local)  # a new machine
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        train(load_config(overrides=settings), run)
    assert f"resuming from checkpoint {last} " in caplog.text
    assert max(completed_steps(run)) == 12
    assert not any((run / "checkpoints").glob(f"{MIRROR_TMP_PREFIX}*"))
