"""Whether a resumed run has anything left to train (a finished run refuses changed settings)."""

from __future__ import annotations

import pytest

from imgae_dx_jax.config import load_config
from imgae_dx_jax.training.loop import Progress


@pytest.mark.parametrize(
    ("progress", "overrides", "stages", "trains"),
    [
        (Progress(), [], ["images_001"], True),
        # the last stage ends "in progress" with all its epochs: finished
        (Progress(stage="images_001", epoch=2, step=20), [], ["images_001"], False),
        # more epochs continue it
        (Progress(stage="images_001", epoch=2, step=20), ["train.epochs=3"], ["images_001"], True),
        # another stage continues it
        (
            Progress(stage="images_001", epoch=2, step=20),
            [],
            ["images_001", "images_002"],
            True,
        ),
        (Progress(completed_stages=["images_001"], step=20), [], ["images_001"], False),
        # stopped mid-epoch by the step budget: finished until the budget grows
        (
            Progress(stage="images_001", step=4, step_in_epoch=4),
            ["train.max_steps=4"],
            ["images_001"],
            False,
        ),
        (
            Progress(stage="images_001", step=4, step_in_epoch=4),
            ["train.max_steps=6"],
            ["images_001"],
            True,
        ),
        (
            Progress(stage="images_001", step=4, step_in_epoch=4),
            ["train.max_steps=0"],
            ["images_001"],
            True,
        ),
    ],
)
def test_progress_says_whether_training_takes_a_step(progress, overrides, stages, trains):
    config = load_config(overrides=["train.epochs=2", *overrides])
    assert progress.trains(config, stages) is trains
