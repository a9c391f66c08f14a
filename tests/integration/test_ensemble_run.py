"""End to end with an AE ensemble: train on the bundled sample, evaluate, restore, predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imgae_dx_jax.checkpoints import restore_model
from imgae_dx_jax.evaluate import main as evaluate_main
from imgae_dx_jax.families.ae import members
from imgae_dx_jax.predict import predict
from imgae_dx_jax.run_dir import load_export_config
from imgae_dx_jax.train import main as train_main


@pytest.mark.slow
def test_ensemble_trains_evaluates_and_predicts(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [
        "train.max_steps=4",
        "train.log_every=2",
        "tracking.wandb=disabled",
        "model.ae.widths=[8,16,32]",
        "model.ae.latent_dim=8",
        "model.ae.ensemble=2",
    ]
    args = ["--model", "ae", "--stage", "images_001", "--run-dir", str(run), "--batch-size", "8"]
    for item in overrides:
        args += ["--set", item]
    assert train_main(args) == 0
    assert "Held-out test" in capsys.readouterr().out

    config = load_export_config(run)
    assert config.model.ae.ensemble == 2
    model = restore_model(run, config)
    first, second = members(model)
    assert not np.array_equal(np.asarray(first.head.bias[...]), np.asarray(second.head.bias[...]))

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0
    assert evaluate_main(["--run", str(run)]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["auroc"] == metrics["auroc"]

    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    (result,) = predict([image], run, tmp_path / "out")
    assert result.error is None and result.score is not None and np.isfinite(result.score)
    assert result.overlay is not None and result.overlay.is_file()
