"""``ae``: a convolutional autoencoder with a dense bottleneck.

Without ``model.ae.uncertainty`` (the plain AE) it is trained on MSE and its anomaly map is
the residual ``|x - x_hat|``. With it (the default; Mao et al., MICCAI 2020) the decoder also
predicts a per-pixel log-variance, the model is trained on the Gaussian
negative log-likelihood (:func:`~imgae_dx_jax.families.losses.gaussian_nll`) and the map is the
squared error divided by the predicted variance, ``(x - mu)^2 / exp(logvar)``.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.families.base import Family, MakeTransform, Metrics, Optimizers
from imgae_dx_jax.families.losses import (
    eval_view,
    gaussian_nll,
    loss_step,
    mse,
    reconstruction_step,
    residual_map,
    single_optimizer,
)
from imgae_dx_jax.models.autoencoder import Autoencoder
from imgae_dx_jax.schema import AEConfig


def build(cfg: AEConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs) -> Autoencoder:
    """The autoencoder of ``cfg`` for ``image_size`` square images."""
    return Autoencoder(
        cfg.widths,
        cfg.latent_dim,
        image_size,
        uncertainty=cfg.uncertainty,
        fast=fast,
        dtype=dtype,
        rngs=rngs,
    )


def _nll(model: nnx.Module, batch: jax.Array) -> jax.Array:
    mean, logvar = cast(Autoencoder, model).mean_and_logvar(batch)
    return gaussian_nll(batch, mean, logvar)


def optimizers(cfg: AEConfig, model: nnx.Module, make_transform: MakeTransform) -> Optimizers:
    """One optimiser, ``model``."""
    return single_optimizer(model, make_transform(cfg.learning_rate))


def train_step(
    cfg: AEConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Reconstruction MSE (or, with uncertainty, Gaussian NLL) step; ``key`` is unused."""
    del key
    if cfg.uncertainty:
        return loss_step(model, optimizers["model"], lambda m: _nll(m, batch))
    return reconstruction_step(model, optimizers["model"], batch, batch)


def eval_losses(cfg: AEConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: the training loss (MSE or NLL) in eval mode (``key`` is unused)."""
    del key
    if cfg.uncertainty:
        return {"loss": _nll(eval_view(model), batch)}
    return {"loss": mse(eval_view(model)(batch), batch)}


def anomaly_map(cfg: AEConfig, model: nnx.Module, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The residual ``|x - x_hat|``, or with uncertainty ``(x - mu)^2 / exp(logvar)``."""
    if cfg.uncertainty:
        mean, logvar = cast(Autoencoder, model).mean_and_logvar(batch)
        return mean, (jnp.square(batch - mean) * jnp.exp(-logvar))[..., 0]
    return residual_map(model, batch)


FAMILY = Family(build, optimizers, train_step, eval_losses, anomaly_map)
