"""``unet``: a U-Net trained as a denoising autoencoder with coarse noise.

Kascenas et al., MIDL 2022 (:func:`coarse_noise`); in ``reconstruction`` mode it is trained on
plain reconstruction instead. MSE against the clean image. Anomaly map: the residual
``|x - x_hat|`` of the clean input's reconstruction.
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
from imgae_dx_jax.models.unet import UNet
from imgae_dx_jax.schema import UNetConfig


def coarse_noise(key: jax.Array, shape: tuple[int, ...], resolution: int, std: float) -> jax.Array:
    """Coarse Gaussian noise (Kascenas et al., MIDL 2022) of shape ``[B, H, W, C]``.

    Noise is drawn i.i.d. from N(0, std^2) on a ``resolution x resolution`` grid per image and
    channel, then upsampled bilinearly to ``H x W``. ``std`` is the standard deviation of the
    grid values; bilinear interpolation lowers the per-pixel standard deviation between grid
    points (on average to about 0.68 * std for a 16 -> 64 upsampling).
    """
    batch, height, width, channels = shape
    grid = std * jax.random.normal(key, (batch, resolution, resolution, channels))
    return jax.image.resize(grid, (batch, height, width, channels), method="bilinear")


def _inputs(cfg: UNetConfig, batch: jax.Array, key: jax.Array) -> jax.Array:
    if cfg.mode == "denoising":
        return batch + coarse_noise(key, batch.shape, cfg.noise_resolution, cfg.noise_std)
    return batch


def build(cfg: UNetConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs) -> UNet:
    """The U-Net of ``cfg`` (fully convolutional: ``image_size`` is not needed)."""
    del image_size
    return UNet(cfg.widths, cfg.groups, fast=fast, dtype=dtype, rngs=rngs)


def optimizers(cfg: UNetConfig, model: nnx.Module) -> Optimizers:
    """One Adam optimiser, ``model``."""
    return single_optimizer(model, cfg.learning_rate)


def train_step(
    cfg: UNetConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Denoising (or plain reconstruction) MSE step; the clean image is the target."""
    return reconstruction_step(model, optimizers["model"], _inputs(cfg, batch, key), batch)


def eval_losses(cfg: UNetConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: MSE of the training objective, with the coarse noise drawn from ``key``."""
    return {"loss": mse(eval_view(model)(_inputs(cfg, batch, key)), batch)}


def anomaly_map(
    cfg: UNetConfig, model: nnx.Module, batch: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The residual ``|x - x_hat|`` of the clean input's reconstruction."""
    del cfg
    return residual_map(model, batch)


FAMILY = Family(build, optimizers, train_step, eval_losses, anomaly_map)
