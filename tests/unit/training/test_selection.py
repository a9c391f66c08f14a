"""The epoch-selection evaluator scores given weights and keeps no model of its own."""

from __future__ import annotations

import gc
import weakref

import jax
import numpy as np
from flax import nnx

from imgae_dx_jax.config import load_config
from imgae_dx_jax.data import load_splits
from imgae_dx_jax.families import create_model
from imgae_dx_jax.training.selection import ValidationAUROC


def test_the_evaluator_scores_the_weights_it_is_given_and_keeps_none(tmp_path):
    config = load_config(
        overrides=[
            "data.image_size=16",
            f"data.cache_dir={tmp_path}",
            "model.ae.widths=[8,16]",
            "model.ae.latent_dim=4",
        ]
    )
    store, _, splits = load_splits(config.data)
    model = create_model(config.model, 16, rngs=nnx.Rngs(0))
    evaluator = ValidationAUROC(config, store, splits.val, model)
    state = jax.tree.map(np.array, nnx.state(model))  # copies: a view keeps its array
    first = evaluator.run(state)
    other = jax.tree.map(np.array, nnx.state(create_model(config.model, 16, rngs=nnx.Rngs(1))))
    assert 0.0 <= first["val_auroc"] <= 1.0 and first["val_score"]
    assert evaluator.run(other) != first  # the weights given, not those it was built with
    assert evaluator.run(state) == first

    kernel = weakref.ref(model.head.kernel[...])
    del model
    gc.collect()
    assert kernel() is None, "the evaluator keeps the weights of the model it was built from"
