"""``ae``: a plain convolutional autoencoder with a dense bottleneck, trained on MSE.

Anomaly map: the residual ``|x - x_hat|``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from imgae_dx_jax.families.base import Family, Metrics, Optimizers
from imgae_dx_jax.families.losses import (
    eval_view,
    mse,
    reconstruction_step,
    residual_map,
    single_optimizer,
)
from imgae_dx_jax.models.autoencoder import Autoencoder
from imgae_dx_jax.schema import AEConfig


def build(cfg: AEConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs) -> Autoencoder:
    """The autoencoder of ``cfg`` for ``image_size`` square images."""
    return Autoencoder(cfg.widths, cfg.latent_dim, image_size, fast=fast, dtype=dtype, rngs=rngs)


def optimizers(cfg: AEConfig, model: nnx.Module) -> Optimizers:
    """One Adam optimiser, ``model``."""
    return single_optimizer(model, cfg.learning_rate)


def train_step(
    cfg: AEConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Plain reconstruction MSE step (``key`` is unused: the AE is deterministic)."""
    del cfg, key
    return reconstruction_step(model, optimizers["model"], batch, batch)


def eval_losses(cfg: AEConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: reconstruction MSE in eval mode (``key`` is unused)."""
    del cfg, key
    return {"loss": mse(eval_view(model)(batch), batch)}


def anomaly_map(cfg: AEConfig, model: nnx.Module, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The residual ``|x - x_hat|``."""
    del cfg
    return residual_map(model, batch)


FAMILY = Family(build, optimizers, train_step, eval_losses, anomaly_map)
