"""``ae``: a convolutional autoencoder with a dense bottleneck, or a deep ensemble of them.

Without ``model.ae.uncertainty`` (the plain AE) it is trained on MSE and its anomaly map is
the residual ``|x - x_hat|``. With it (the default; Mao et al., MICCAI 2020) the decoder also
predicts a per-pixel log-variance, the model is trained on the Gaussian
negative log-likelihood (:func:`~imgae_dx_jax.families.losses.gaussian_nll`) and the map is the
squared error divided by the predicted variance, ``(x - mu)^2 / exp(logvar)``.

With ``model.ae.ensemble: K`` above 1 the family is K independently initialised autoencoders
(:class:`~imgae_dx_jax.models.autoencoder.AutoencoderEnsemble`) trained in the same step on
the same batch, each on its own loss: the step differentiates the sum of the members' losses,
so each member gets the gradient it would get alone; the reported loss is their mean. The
reconstruction is the members' mean image, and the map (``model.ae.ensemble_map``) is
``variance``, the per-pixel variance over the members of their mean images ``mu_k`` (their
disagreement, the ensemble's epistemic uncertainty; an uncertainty head's predicted variance
does not enter it), or ``mean``, the average of the members' own maps above.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.families.base import LOW_MEMORY_CPU, Family, MakeTransform, Metrics, Optimizers
from imgae_dx_jax.families.losses import (
    eval_view,
    loss_step,
    reconstruction_loss,
    reconstruction_map,
    single_optimizer,
)
from imgae_dx_jax.models.autoencoder import Autoencoder, AutoencoderEnsemble
from imgae_dx_jax.schema import AEConfig


def build(
    cfg: AEConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs
) -> Autoencoder | AutoencoderEnsemble:
    """The autoencoder of ``cfg`` for ``image_size`` square images (an ensemble if K > 1)."""

    def member() -> Autoencoder:
        return Autoencoder(
            cfg.widths,
            cfg.latent_dim,
            image_size,
            uncertainty=cfg.uncertainty,
            fast=fast,
            dtype=dtype,
            rngs=rngs,
        )

    if cfg.ensemble > 1:
        return AutoencoderEnsemble([member() for _ in range(cfg.ensemble)])
    return member()


def members(model: nnx.Module) -> list[Autoencoder]:
    """The autoencoders of ``model``: an ensemble's members, or the single model itself."""
    if isinstance(model, AutoencoderEnsemble):
        return list(model.members)
    return [cast(Autoencoder, model)]


def _summed_loss(cfg: AEConfig, model: nnx.Module, batch: jax.Array) -> jax.Array:
    losses = [reconstruction_loss(m, batch, batch, cfg.uncertainty) for m in members(model)]
    return jnp.sum(jnp.stack(losses))


def optimizers(cfg: AEConfig, model: nnx.Module, make_transform: MakeTransform) -> Optimizers:
    """One optimiser, ``model`` (over every member of an ensemble)."""
    return single_optimizer(model, make_transform(cfg.learning_rate))


def train_step(
    cfg: AEConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Reconstruction MSE (or, with uncertainty, Gaussian NLL) step; ``key`` is unused.

    An ensemble steps on the sum of its members' losses and reports their mean as ``loss``.
    """
    del key
    metrics = loss_step(model, optimizers["model"], lambda m: _summed_loss(cfg, m, batch))
    return {"loss": metrics["loss"] / cfg.ensemble}


def eval_losses(cfg: AEConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: the training loss (MSE or NLL; an ensemble's mean) in eval mode.

    ``key`` is unused.
    """
    del key
    return {"loss": _summed_loss(cfg, eval_view(model), batch) / cfg.ensemble}


def anomaly_map(cfg: AEConfig, model: nnx.Module, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The residual ``|x - x_hat|``, or with uncertainty ``(x - mu)^2 / exp(logvar)``.

    An ensemble returns its members' mean image and, by ``cfg.ensemble_map``, the per-pixel
    variance of the members' mean images (``variance``) or the average of their maps
    (``mean``).
    """
    outputs = [reconstruction_map(m, batch, cfg.uncertainty) for m in members(model)]
    if len(outputs) == 1:
        return outputs[0]
    means = jnp.stack([mean for mean, _ in outputs])
    if cfg.ensemble_map == "variance":
        amap = jnp.var(means, axis=0)[..., 0]
    else:
        amap = jnp.mean(jnp.stack([member_map for _, member_map in outputs]), axis=0)
    return jnp.mean(means, axis=0), amap


FAMILY = Family(
    build, optimizers, train_step, eval_losses, anomaly_map, cpu_compiler_options=LOW_MEMORY_CPU
)
