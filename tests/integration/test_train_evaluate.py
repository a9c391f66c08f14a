"""End to end on the bundled real sample: train each family briefly, then evaluate."""

from __future__ import annotations

import csv
import json
import math

import pytest

from imgae_dx_jax.evaluate import main as evaluate_main
from imgae_dx_jax.reference import CANDIDATES
from imgae_dx_jax.train import main as train_main

TINY = {
    "unet": ["model.unet.widths=[8,16,32]", "model.unet.groups=4"],
    "ra": ["model.ra.widths=[8,16,16]", "model.ra.zdim=16", "data.image_size=32"],
    "ae": ["model.ae.widths=[8,16,32]", "model.ae.latent_dim=8", "tracking.images_every=2"],
}
KEYS = (
    "auroc",
    "auprc",
    "fpr_at_95_tpr",
    "f1",
    "threshold",
    "sensitivity",
    "specificity",
    "n_normal",
    "n_abnormal",
)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "ra", "ae"])
def test_train_then_evaluate_on_the_sample(model, tmp_path, capsys):
    run = tmp_path / f"run {model}"  # a space, as in Google Drive paths
    args = [
        "--model",
        model,
        "--stage",
        "images_001",
        "--run-dir",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.log_every=2",
    ]
    for item in TINY[model]:
        args += ["--set", item]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "Held-out test" in out
    assert "reference: raw-image " in out  # the model-free floor is printed beside the model

    assert (run / "config.yaml").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]
    assert all(math.isfinite(r["loss"]) for r in lines if "loss" in r)
    assert any("val_loss" in r for r in lines)
    # W&B (offline by default) gets the same metrics; the AE run also logs sample images.
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("*.wandb"))
    if model == "ae":
        assert list(wandb_runs[0].rglob("media/images/samples/input_reconstruction_map*.png"))

    (run / "eval").rename(tmp_path / "first_eval")
    assert evaluate_main(["--run", str(run)]) == 0
    out = capsys.readouterr().out
    # One run: its summary, once (no one-model comparison table repeating it), and the report.
    assert out.count("AUROC") > 1 and out.count("reference: raw-image ") == 1
    assert out.count("Held-out test") == 1 and f"Report: {run / 'eval'}" in out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in KEYS:
        assert key in metrics, key
    for key in ("auroc", "auprc", "fpr_at_95_tpr", "f1", "sensitivity", "specificity"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["model"] == model
    counts = metrics["split_counts"]["test"]
    assert (metrics["n_normal"], metrics["n_abnormal"]) == (counts["normal"], counts["abnormal"])
    # The model-free reference is scored on the same test images and paired with the model.
    reference = metrics["reference"]
    assert reference["statistic"] in CANDIDATES
    assert (reference["n_normal"], reference["n_abnormal"]) == (
        counts["normal"],
        counts["abnormal"],
    )
    versus = reference["difference"]
    assert versus["n_images"] == counts["normal"] + counts["abnormal"]
    assert versus["auroc_a"] == metrics["auroc"] and versus["auroc_b"] == reference["auroc"]
    with (run / "eval" / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["n_normal"] + metrics["n_abnormal"]
    assert {row["label"] for row in rows} == {"0", "1"}
    # Evaluating the same checkpoint twice gives the same scores.
    first = (tmp_path / "first_eval" / "scores.csv").read_text()
    assert first == (run / "eval" / "scores.csv").read_text()


def test_user_errors_are_one_message_without_traceback(tmp_path, capsys):
    assert train_main(["--set", "train.epochz=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epochz'" in err and "Traceback" not in err
    assert evaluate_main(["--run", str(tmp_path / "missing")]) == 2
    assert "no export/config.yaml" in capsys.readouterr().err
    missing = tmp_path / "nope.zip"
    assert (
        train_main(
            ["--source", "archive", "--data", str(missing), "--run-dir", str(tmp_path / "r")]
        )
        == 2
    )
    assert "archive not found" in capsys.readouterr().err
    # A batch larger than the validation split stops before the first training step.
    run = tmp_path / "big-batch"
    args = ["--batch-size", "128", "--max-steps", "2", "--run-dir", str(run), "--wandb", "disabled"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: the validation split has" in err and "fewer than one batch" in err
    assert "first step" not in err and "Traceback" not in err
