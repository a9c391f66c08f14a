"""Two tiny runs on the bundled sample, compared by one evaluate command into a full report."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from imgae_dx_jax.data.stores import sample_archive_path
from imgae_dx_jax.evaluate import main as evaluate_main
from imgae_dx_jax.train import main as train_main

TINY = {
    "unet": ["model.unet.widths=[8,16,32]", "model.unet.groups=4"],
    "ae": ["model.ae.widths=[8,16,32]", "model.ae.latent_dim=8"],
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train each tiny model for 4 steps at 32 px (training ends with its own evaluation)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for model, sets in TINY.items():
        args = [
            "--model",
            model,
            "--run-dir",
            str(root / model),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--set",
            "train.max_steps=4",
            "--set",
            "train.log_every=2",
            "--set",
            "tracking.wandb=disabled",
        ]
        for item in sets:
            args += ["--set", item]
        assert train_main(args) == 0
        out[model] = root / model
    return out


def test_two_runs_give_the_full_report(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        evaluate_main(
            [
                "--run",
                str(runs["unet"]),
                "--run",
                str(runs["ae"]),
                "--out",
                str(out),
                "--wandb",
                "offline",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "unet - ae: AUROC difference" in printed and "paired patient bootstrap" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"unet", "ae"}
    assert metrics["bootstrap"]["n_resamples"] >= 1000
    for m in metrics["models"].values():
        low, high = m["auroc_ci"]
        assert low <= m["auroc"] <= high
        assert m["auprc_ci"][0] <= m["auprc"] <= m["auprc_ci"][1]
        for key in (
            "fpr_at_95_tpr",
            "best_f1",
            "sensitivity",
            "specificity",
            "f1",
            "auroc_patient_weighted",
            "val_specificity",
        ):
            assert 0.0 <= m[key] <= 1.0, key
        assert m["score"] in m["score_val_auroc"] and m["threshold_rule"] == "specificity"
        assert m["val_specificity"] >= m["target_specificity"] == 0.95
        assert len(m["per_finding"]) == 14
        assert sum(r["n_abnormal"] > 0 for r in m["per_finding"]) >= 5
        assert {r["group"] for r in m["subgroups"]} == {"view", "sex", "age"}
        loc = m["localization"]
        assert loc["n_images_with_boxes"] >= 1 and loc["n_boxes"] >= 1
        assert 0.0 <= loc["pixel_auroc"] <= 1.0 and 0.0 <= loc["pointing_game"] <= 1.0
    (paired,) = metrics["paired"]
    assert (paired["a"], paired["b"]) == ("unet", "ae")
    assert 0.0 < paired["p_value"] <= 1.0 and paired["ci_low"] <= paired["ci_high"]
    test_counts = metrics["test_split"]
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == test_counts["normal"] + test_counts["abnormal"]
    assert all(row["score_unet"] and row["score_ae"] for row in rows)

    html = (out / "report.html").read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert {p.stem for p in figures} == {
        "roc",
        "pr",
        "histograms",
        "reconstructions_unet",
        "reconstructions_ae",
        "training_unet",
        "training_ae",
    }
    for figure in figures:
        assert f'alt="{figure.name}"' in html
    assert (out / "report.md").is_file()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    # The runs' own calibrations (score, threshold, overlay scale) are kept for imgae-predict.
    for name, run in runs.items():
        saved = json.loads((run / "export" / "threshold.json").read_text())
        assert "map_scale" in saved
        assert saved["score"] == metrics["models"][name]["score"]
        assert saved["score_aurocs"] == metrics["models"][name]["score_val_auroc"]


def test_runs_with_different_test_splits_are_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(runs["ae"], other)
    path = other / "export" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["data"]["split_seed"] = 1
    path.write_text(yaml.safe_dump(config))
    assert (
        evaluate_main(
            [
                "--run",
                str(runs["unet"]),
                "--run",
                str(other),
                "--out",
                str(tmp_path / "x"),
                "--wandb",
                "disabled",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "different test splits" in err and "Traceback" not in err
    assert evaluate_main(["--run", str(runs["unet"]), "--bootstrap", "10"]) == 2
    assert "at least 1000" in capsys.readouterr().err


def test_other_data_source_writes_beside_the_run_and_keeps_its_threshold(runs, capsys):
    run = runs["unet"]
    threshold = (run / "export" / "threshold.json").read_text()
    assert evaluate_main(["--run", str(run), "--source", "sample", "--wandb", "disabled"]) == 0
    assert "Held-out test" in capsys.readouterr().out
    metrics = json.loads((run / "eval-sample" / "metrics.json").read_text())
    assert metrics["model"] == "unet" and (run / "eval-sample" / "report.html").is_file()
    assert (run / "export" / "threshold.json").read_text() == threshold
    # Other data given by --data alone (the run's own source) also goes beside the run's own
    # report, never over it.
    own = (run / "eval" / "metrics.json").read_bytes()
    shutil.rmtree(run / "eval-sample")
    args = ["--run", str(run), "--data", str(sample_archive_path()), "--wandb", "disabled"]
    assert evaluate_main(args) == 0
    assert (run / "eval" / "metrics.json").read_bytes() == own
    assert (run / "eval-sample" / "metrics.json").is_file()
