"""The training loop's progress: the bar counts finished steps, the first step is timed; where
it validates."""

import logging

import pytest

from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.errors import DataError
from imgae_dx_jax.training.loop import validation_batches, validation_points
from imgae_dx_jax.training.train import train


def test_validation_points_are_evenly_spaced_and_end_the_epoch():
    assert validation_points(61, 1) == [61]
    assert validation_points(61, 4) == [15, 30, 46, 61]
    assert validation_points(3, 5) == [1, 2, 3]  # at most one per step


def test_validation_batches_say_what_is_missing():
    assert validation_batches(40, 16, 1) == 2
    assert validation_batches(40, 16, 2) == 2  # 20 images per process, batches of 8
    with pytest.raises(ConfigError, match=r"has 10 images, fewer than one batch of 16; lower"):
        validation_batches(10, 16, 1)
    with pytest.raises(DataError, match="no images: the data has too few patients"):
        validation_batches(0, 16, 1)  # a smaller batch would not help


def test_the_training_bar_moves_at_synchronised_steps_only(tmp_path, bars, caplog):
    config = load_config(
        overrides=[
            "model.name=ae",
            "model.ae.widths=[4,8]",
            "model.ae.latent_dim=4",
            "data.image_size=16",
            "data.cache=false",
            "train.batch_size=8",
            "train.epochs=1",
            "train.max_steps=7",
            "train.log_every=3",
            "tracking.wandb=disabled",
        ]
    )
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.training.loop"):
        train(config, tmp_path / "run")
    (bar,) = [b for b in bars if b.unit == "step"]
    assert bar.desc == "images_001 epoch 1/1" and bar.total > 7  # max_steps cuts the epoch
    # Steps 3 and 6 are log steps (train.log_every), where the metrics are fetched; step 7 is
    # the end of the (cut) epoch, where the loop waits for the last steps.
    assert bar.counts == [3, 6, 7]
    assert "img_s=" in bar.postfix and "loss=" in bar.postfix
    # The first step (compilation included) is timed once, the others are not.
    (first,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first step")]
    assert float(first.split()[2]) > 0
