"""The run directory: one config reader (with migration) for resume and export alike."""

from __future__ import annotations

import json

import pytest
import yaml

from imgae_dx_jax import __version__
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.errors import ConfigError, FinishedRunError, RunDirError, RunError


def older_release(path) -> None:
    """Rewrite a config.yaml as a release without ``tracking`` and ``model.fast_path`` had it."""
    tree = yaml.safe_load(path.read_text())
    del tree["tracking"], tree["model"]["fast_path"]
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


def test_resume_reads_an_older_config_with_defaults(tmp_path, caplog):
    config = load_config(overrides=["model.name=ae", "train.epochs=3"])
    rundir.write_config(config, tmp_path)
    older_release(tmp_path / "config.yaml")
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        saved = rundir.prepare(tmp_path, "auto", overwrite=False)
    assert saved == config
    assert "tracking" in caplog.text and "model.fast_path" in caplog.text
    rundir.check_compatible(saved, config, trains=False)


def test_export_reader_is_the_same_reader(tmp_path):
    config = load_config(overrides=["model.name=unet"])
    export = rundir.export_dir(tmp_path)
    export.mkdir()
    rundir.write_config(config, export)
    older_release(export / "config.yaml")
    assert rundir.load_export_config(tmp_path) == config


def test_written_config_is_headed_by_the_version(tmp_path):
    rundir.write_config(load_config(), tmp_path)
    assert (tmp_path / "config.yaml").read_text().startswith(f"# imgae-dx-jax {__version__}\n")


def test_calibration_round_trip_and_errors(tmp_path):
    with pytest.raises(RunError, match="no validation threshold yet"):
        rundir.load_calibration(tmp_path)
    rundir.export_dir(tmp_path).mkdir()
    calibration = rundir.Calibration(0.25, 0.5, "top5", "maximum F1", {"mean": 0.6, "top5": 0.7})
    rundir.write_calibration(tmp_path, calibration, n_val_images=10)
    assert rundir.load_calibration(tmp_path) == calibration
    path = rundir.export_dir(tmp_path) / "threshold.json"
    # Before the image score was chosen: the maximum-F1 threshold of the mean score.
    path.write_text(json.dumps({"threshold": 0.25, "map_scale": 0.5}))
    assert rundir.load_calibration(tmp_path) == rundir.Calibration(
        0.25, 0.5, "mean", "maximum F1", {}
    )
    path.write_text(json.dumps({"threshold": 0.25}))
    with pytest.raises(RunError, match="older version"):
        rundir.load_calibration(tmp_path)


@pytest.mark.parametrize(
    ("path", "before"),
    [
        (("data", "intensity"), "none"),
        (("train", "lr_schedule"), "constant"),
        (("eval", "border"), 0.0),
        (("model", "ae", "uncertainty"), False),
        (("model", "ra", "validations_per_epoch"), 1),
        (("model", "unet", "patches"), 1),
        (("model", "unet", "patch_side"), (0.1, 0.4)),
        (("model", "unet", "patch_alpha"), (0.0, 1.0)),
    ],
)
def test_a_run_from_before_a_setting_keeps_its_old_behaviour(tmp_path, caplog, path, before):
    config = load_config(overrides=["model.name=ae"])
    rundir.write_config(config, tmp_path)
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    *sections, key = path
    node = tree
    for section in sections:
        node = node[section]
    assert node.pop(key) != before  # today's default differs from the old behaviour
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        old = rundir.read_config(tmp_path / "config.yaml")
    value: object = old
    for part in path:
        value = getattr(value, part)
    assert value == before and f"{'.'.join(path)}={before}" in caplog.text


@pytest.mark.parametrize(
    "change", ["data.intensity=p99", r"data.patient_pattern=^(IM-\d+)", "data.intensity=none"]
)
def test_resume_refuses_a_changed_input_or_patient_grouping(change):
    saved = load_config(overrides=["data.source=imagefolder", "data.path=x"])
    new = load_config(overrides=["data.source=imagefolder", "data.path=x", change])
    with pytest.raises(RunDirError, match=change.split("=")[0]):
        rundir.check_compatible(saved, new, trains=True)


def test_a_finished_run_refuses_every_setting_that_would_not_take_effect(caplog):
    saved = load_config(overrides=["model.name=ae", "train.epochs=2"])
    changes = ["model.ae.learning_rate=1e-4", "train.epochs=1", "train.precision=bf16"]
    new = load_config(overrides=["model.name=ae", "train.epochs=2", *changes])
    with pytest.raises(FinishedRunError) as refused:
        rundir.check_compatible(saved, new, trains=False)
    message = str(refused.value)
    for line in (
        "model.ae.learning_rate: 0.001 -> 0.0001",
        "train.epochs: 2 -> 1",
        "train.precision: 'auto' -> 'bf16'",
    ):
        assert line in message
    assert "another --run-dir" in message and "--resume never --overwrite" in message
    assert isinstance(refused.value, RunDirError)  # callers catching RunDirError still do
    # While training continues, the same changes apply to the steps still to train, loudly.
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        rundir.check_compatible(saved, new, trains=True)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and "model.ae.learning_rate: 0.001 -> 0.0001" in warned[0]
    assert "train.precision" in warned[1]
    assert "resuming with a changed setting train.epochs: 2 -> 1" in caplog.text  # its length


def test_a_finished_run_may_be_rerun_with_settings_that_leave_its_model(caplog):
    saved = load_config(overrides=["model.name=ae", "data.stages=[images_001,images_002]"])
    neutral = [
        "eval.threshold=f1",
        "eval.score=top5",
        "tracking.wandb=disabled",
        "data.num_threads=1",
        "data.cache_dir=/elsewhere",
        "train.log_every=1",
        "train.keep_checkpoints=1",
        "train.local_checkpoint_dir=/content/checkpoints",
        "model.fast_path=never",
        "model.unet.learning_rate=0.5",  # another family's setting
        "data.stages=[images_002]",  # a stage it has trained
    ]
    new = load_config(overrides=["model.name=ae", *neutral])
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        rundir.check_compatible(saved, new, trains=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "resuming with a changed setting eval.threshold: 'specificity' -> 'f1'" in caplog.text


def test_each_run_directory_has_its_own_local_checkpoint_directory(tmp_path):
    assert rundir.local_checkpoints_dir(tmp_path / "ae", load_config()) is None
    config = load_config(overrides=[f"train.local_checkpoint_dir={tmp_path / 'local'}"])
    first = rundir.local_checkpoints_dir(tmp_path / "a" / "ae", config)
    second = rundir.local_checkpoints_dir(tmp_path / "b" / "ae", config)
    assert first is not None and second is not None and first != second
    assert first.parent == second.parent == tmp_path / "local"
    assert first.name.startswith("ae-")
    assert rundir.local_checkpoints_dir(tmp_path / "a" / "ae", config) == first
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"train\.local_checkpoint_dir"):
        load_config(overrides=[f"train.local_checkpoint_dir={tmp_path / 'file'}"])


def _record(key: str) -> Record:
    return Record(key, key, "all", 0, (), key, 0, "", "")


def test_other_data_must_hold_out_what_the_run_trained_on(tmp_path, caplog):
    trained = Splits((_record("a/NORMAL/x.png"),), (_record("a/NORMAL/v.png"),), (), False)
    rundir.write_split_manifest(tmp_path, trained)
    fresh = Splits((), (_record("b/NORMAL/v.png"),), (_record("b/NORMAL/y.png"),), False)
    with caplog.at_level("WARNING", logger="imgae_dx_jax"):
        rundir.check_held_out(tmp_path, fresh, "other data")
    assert not caplog.records  # v.png validated the run, never trained it
    chose = Splits((), (), (_record("a/NORMAL/v.png"),), False)
    with pytest.raises(RunError, match=r"1 images of the test split .* validation split of"):
        rundir.check_held_out(tmp_path, chose, "other data")  # it chose the run's model
    rundir.check_held_out(tmp_path, Splits((), chose.test, (), False), "other data")
    leaked = Splits((), (), (_record("a/NORMAL/x.png"), _record("b/NORMAL/y.png")), False)
    with pytest.raises(RunError, match=r"1 images of the test split .*a/NORMAL/x\.png"):
        rundir.check_held_out(tmp_path, leaked, "other data")
    moved = Splits((), (_record("test/NORMAL/x.png"),), (), False)
    with caplog.at_level("WARNING", logger="imgae_dx_jax"):
        rundir.check_held_out(tmp_path, moved, "other data")
    assert "1 images of the val split of other data (e.g. test/NORMAL/x.png)" in caplog.text
    assert "if they are the same images, this evaluation is not held out" in caplog.text
