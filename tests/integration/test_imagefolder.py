"""End to end from a class-folder tree: train, evaluate, resume; split by patient."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import zipfile
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import SaveCadence, restore_model
from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.errors import Interrupted
from imgae_dx_jax.evaluate import main as evaluate_main
from imgae_dx_jax.schema import Config
from imgae_dx_jax.train import main as train_main
from imgae_dx_jax.training.selection import ValidationAUROC
from imgae_dx_jax.training.train import TrainResult, train

ROOT = Path(__file__).resolve().parents[2]
PEDIATRIC_ZIP = ROOT / "benchmarks" / "data" / "pediatric-pneumonia-dev.zip"
PATTERN = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"
pytestmark = pytest.mark.skipif(
    not PEDIATRIC_ZIP.is_file(), reason="the development set is in the repository, not the sdist"
)


def _class_tree(root: Path, per_class: int = 32) -> dict[str, str]:
    """Copy pediatric images of patients with several files into ``root/<class>/``.

    Returns:
        file name -> patient, from the name.
    """
    pattern = re.compile(PATTERN)
    patients: dict[str, str] = {}
    with zipfile.ZipFile(PEDIATRIC_ZIP) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".jpeg"))
        for label in ("NORMAL", "PNEUMONIA"):
            files = defaultdict(list)
            for member in members:
                name = member.rsplit("/", 1)[1]
                if f"/{label}/" in member:
                    files[pattern.match(name).group(1)].append(member)  # type: ignore[union-attr]
            # Half the files from patients with several (two each), half from single-file ones.
            several = [ms[:2] for ms in files.values() if len(ms) > 1][: per_class // 4]
            single = [ms for ms in files.values() if len(ms) == 1][: per_class // 2]
            chosen = [m for ms in several + single for m in ms]
            (root / label).mkdir(parents=True)
            for member in chosen[:per_class]:
                name = member.rsplit("/", 1)[1]
                (root / label / name).write_bytes(archive.read(member))
                patients[name] = pattern.match(name).group(1)  # type: ignore[union-attr]
    return patients


@pytest.mark.slow
def test_train_and_evaluate_from_a_class_folder_tree_split_by_patient(
    tmp_path, capsys, monkeypatch
):
    tree = tmp_path / "chest_xray"
    patients = _class_tree(tree)
    assert len(set(patients.values())) < len(patients)  # some patients have several files
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    args = [
        "--source",
        "imagefolder",
        "--data",
        "chest_xray",  # relative: the run records it absolute
        "--stage",
        "images_002",  # an NIH stage: ignored for an image folder
        "--model",
        "ae",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--run-dir",
        str(run),
        "--wandb",
        "disabled",
    ]
    for item in (
        "model.ae.widths=[4,8]",
        "model.ae.latent_dim=4",
        "train.max_steps=3",
        "data.split=[0.5,0.25,0.25]",
        f"data.patient_pattern={PATTERN}",
    ):
        args += ["--set", item]
    assert train_main(args) == 0
    assert "AUROC" in capsys.readouterr().out

    manifest = json.loads((run / "splits.json").read_text())
    where: dict[str, set[str]] = defaultdict(set)
    for split, keys in manifest.items():
        assert keys, split
        for key in keys:
            where[patients[key.rsplit("/", 1)[1]]].add(split)
    assert all(len(splits) == 1 for splits in where.values()), where
    assert any(
        sum(patients[k.rsplit("/", 1)[1]] == p for ks in manifest.values() for k in ks) > 1
        for p in where
    )  # a patient with several files is kept together

    assert train_main(args) == 0  # rerun: resumes its stage, max_steps already reached
    assert "resuming from checkpoint 3 (stage all: 0 full epoch(s) and 3 step(s)" in (
        capsys.readouterr().err
    )
    assert {r["stage"] for r in _records(run) if "stage" in r} == {"all"}

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["stages"] == ["all"]
    counts = metrics["split_counts"]["test"]
    assert (metrics["n_normal"], metrics["n_abnormal"]) == (counts["normal"], counts["abnormal"])
    assert counts["normal"] and counts["abnormal"]
    assert 0.0 <= metrics["auroc"] <= 1.0
    # The run reads its data from any working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluate_main(["--run", str(run), "--wandb", "disabled"]) == 0


@pytest.mark.slow
def test_the_epoch_of_best_validation_auroc_becomes_the_export(tmp_path, monkeypatch):
    # The validation AUROCs the loop sees are scripted (best: epoch 2 of 3), the scoring is
    # real: the export must hold epoch 2's weights, and evaluation, scoring that export on
    # the same validation patients, must find the AUROC the loop computed for it.
    real_run = ValidationAUROC.run
    calls: list[tuple[dict, object]] = []
    scripted = iter([0.6, 0.8, 0.7])

    def run(self, state):
        result = real_run(self, state)
        calls.append((result, jax.tree.map(np.array, state)))
        return {**result, "val_auroc": next(scripted)}

    monkeypatch.setattr(ValidationAUROC, "run", run)
    tree = tmp_path / "chest_xray"
    _class_tree(tree)
    run_path = tmp_path / "run"
    args = ["--source", "imagefolder", "--data", str(tree), "--model", "ae"]
    args += ["--image-size", "32", "--epochs", "3", "--batch-size", "4"]
    args += ["--run-dir", str(run_path), "--wandb", "disabled"]
    for item in (
        "model.ae.widths=[4,8]",
        "model.ae.latent_dim=4",
        "data.split=[0.5,0.25,0.25]",
        f"data.patient_pattern={PATTERN}",
    ):  # train.select_checkpoint: auto, the default -- val_auroc, with both classes validating
        args += ["--set", item]
    assert train_main(args) == 0

    assert [r["val_auroc"] for r in _records(run_path) if "val_auroc" in r] == [0.6, 0.8, 0.7]
    assert len(calls) == 3
    export = restore_model(run_path, rundir.read_config(run_path / "config.yaml"))
    exported = jax.tree.leaves(nnx.state(export, nnx.Param))
    at = [jax.tree.leaves(nnx.filter_state(state, nnx.Param)) for _, state in calls]
    assert not all(np.array_equal(a, b) for a, b in zip(at[1], at[2], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(exported, at[1], strict=True))

    metrics = json.loads((run_path / "eval" / "metrics.json").read_text())
    chosen = calls[1][0]
    assert metrics["score"] == chosen["val_score"]
    assert metrics["score_val_auroc"][metrics["score"]] == pytest.approx(chosen["val_auroc"])


@pytest.mark.slow
def test_a_model_between_epoch_ends_can_become_the_export(tmp_path, monkeypatch, caplog):
    # Two validation points per epoch (model.ae.validations_per_epoch=2), two epochs; the
    # scripted AUROCs make the middle of epoch 2 the best: its weights are the export.
    real_run = ValidationAUROC.run
    states: list[object] = []
    scripted = iter([0.6, 0.7, 0.9, 0.8])

    def run(self, state):
        states.append(jax.tree.map(np.array, state))
        return {**real_run(self, state), "val_auroc": next(scripted)}

    monkeypatch.setattr(ValidationAUROC, "run", run)
    tree = tmp_path / "chest_xray"
    _class_tree(tree)
    config = _small_config(tree, "auto", more=["model.ae.validations_per_epoch=2"])
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.training.loop"):
        result = train(config, tmp_path / "run")
    epoch = _steps_per_epoch(caplog)
    half = round(epoch / 2)
    assert _validated_steps(tmp_path / "run") == [half, epoch, epoch + half, 2 * epoch]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"stage all epoch 2/2 at step {half}/{epoch}:") for m in messages)
    export = restore_model(tmp_path / "run", result.config)
    exported = jax.tree.leaves(nnx.state(export, nnx.Param))
    best = jax.tree.leaves(nnx.filter_state(states[2], nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(exported, best, strict=True))
    assert not _exports_the_final_model(tmp_path / "run", result)


@pytest.mark.slow
def test_every_validation_point_is_validated_once_across_stops(tmp_path, monkeypatch, caplog):
    # SIGTERM during the last step before the first validation point: the run saves and stops
    # unvalidated, and the resumed run validates that point before training on. Checkpoints
    # every step and a step budget that ends at a validation point validate each point once.
    tree = tmp_path / "chest_xray"
    _class_tree(tree)
    more = ["model.ae.validations_per_epoch=2"]
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.training.loop"):
        train(_small_config(tree, "auto", epochs=1, more=["train.max_steps=1"]), tmp_path / "x")
    half = round(_steps_per_epoch(caplog) / 2)
    real_due = SaveCadence.due

    def due(self, step):
        if step == half:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_due(self, step)

    with monkeypatch.context() as patch:
        patch.setattr(SaveCadence, "due", due)
        with pytest.raises(Interrupted, match=f"stopped by SIGTERM at step {half}"):
            train(_small_config(tree, "auto", epochs=1, more=more), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").is_file()
    more.append("train.checkpoint_every_steps=1")
    train(_small_config(tree, "auto", epochs=1, more=more), tmp_path / "run")
    epoch = _steps_per_epoch(caplog)
    assert _validated_steps(tmp_path / "run") == [half, epoch]
    budget = [*more, f"train.max_steps={epoch + half}"]
    train(_small_config(tree, "auto", epochs=2, more=budget), tmp_path / "run")
    assert _validated_steps(tmp_path / "run") == [half, epoch, epoch + half]


def _steps_per_epoch(caplog: pytest.LogCaptureFixture) -> int:
    found = {
        int(m.group(1))
        for r in caplog.records
        if (m := re.search(r"(\d+) steps per epoch", r.getMessage()))
    }
    assert len(found) == 1, found
    return found.pop()


def _records(run: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _validated_steps(run: Path) -> list[int]:
    return [r["step"] for r in _records(run) if "val_loss" in r]


def _small_config(
    tree: Path, select: str, epochs: int = 2, more: list[str] | None = None
) -> Config:
    return load_config(
        overrides=[
            "data.source=imagefolder",
            f"data.path={tree}",
            f"data.patient_pattern={PATTERN}",
            "data.image_size=16",
            "data.split=[0.5,0.25,0.25]",
            "model.name=ae",
            "model.ae.widths=[4,8]",
            "model.ae.latent_dim=4",
            "train.batch_size=4",
            f"train.epochs={epochs}",
            f"train.select_checkpoint={select}",
            "tracking.wandb=disabled",
            *(more or []),
        ]
    )


def test_without_abnormal_validation_images_auto_exports_the_last_model(tmp_path, caplog, capsys):
    # A folder of normal images only: nothing to compute an AUROC on. The default (auto)
    # exports the model after the last step; val_auroc, asked for explicitly, is an error
    # that names the key.
    tree = tmp_path / "normals"
    _class_tree(tree)
    shutil.rmtree(tree / "PNEUMONIA")
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.training.loop"):
        result = train(_small_config(tree, "auto"), tmp_path / "run")
    assert any("lacks normal or abnormal" in r.getMessage() for r in caplog.records)
    assert not any("val_auroc" in r for r in _records(tmp_path / "run"))
    assert _exports_the_final_model(tmp_path / "run", result)
    # Its evaluation needs labelled data, and says where to give it.
    capsys.readouterr()
    assert evaluate_main(["--run", str(tmp_path / "run"), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert "needs normal and abnormal images" in err and "--source imagefolder --data" in err

    with pytest.raises(ConfigError, match=r"train\.select_checkpoint"):
        train(_small_config(tree, "val_auroc"), tmp_path / "run2")


def test_a_run_resumed_with_last_exports_its_last_model(tmp_path, monkeypatch):
    # The first epoch is chosen on validation AUROC (the default, auto); resumed for a second
    # epoch with train.select_checkpoint=last, the export is the model after the last step,
    # not the epoch chosen before.
    tree = tmp_path / "chest_xray"
    _class_tree(tree)
    real_run = ValidationAUROC.run
    monkeypatch.setattr(ValidationAUROC, "run", lambda *a: {**real_run(*a), "val_auroc": 1.0})
    first = train(_small_config(tree, "auto", epochs=1), tmp_path / "run")
    assert first.precision == "float32"  # train.precision auto, on the CPU
    assert _exports_the_final_model(tmp_path / "run", first)  # epoch 1, chosen
    resumed = train(_small_config(tree, "last", epochs=2), tmp_path / "run")
    assert _exports_the_final_model(tmp_path / "run", resumed)


def _exports_the_final_model(run: Path, result: TrainResult) -> bool:
    export = restore_model(run, result.config)
    final = jax.tree.leaves(nnx.state(result.model, nnx.Param))
    exported = jax.tree.leaves(nnx.state(export, nnx.Param))
    return all(np.array_equal(a, b) for a, b in zip(exported, final, strict=True))
