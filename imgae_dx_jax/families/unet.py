"""``unet``: a U-Net trained as a denoising autoencoder with coarse noise and foreign patches.

Kascenas et al., MIDL 2022 (:func:`coarse_noise`, optionally rolled as the authors do); with
``model.unet.noise`` ``patch`` or ``both`` (the default) the corruption is (or includes)
foreign patch interpolation (:func:`foreign_patch`), an anatomy-aware synthetic anomaly;
``coarse`` is the authors' corruption alone. In
``reconstruction`` mode it is trained on plain reconstruction instead. MSE against the clean
image; anomaly map: the residual ``|x - x_hat|`` of the clean input's reconstruction. With
``model.unet.uncertainty`` (an option beyond the paper: the AE's uncertainty head, Mao et al.,
MICCAI 2020) the U-Net also predicts a per-pixel log-variance, is trained on the Gaussian
negative log-likelihood of the clean image, and maps ``(x - mu)^2 / exp(logvar)``.
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
from imgae_dx_jax.models.unet import UNet
from imgae_dx_jax.schema import UNetConfig


def coarse_noise(
    key: jax.Array, shape: tuple[int, ...], resolution: int, std: float, roll: bool = False
) -> jax.Array:
    """Coarse Gaussian noise (Kascenas et al., MIDL 2022) of shape ``[B, H, W, C]``.

    Noise is drawn i.i.d. from N(0, std^2) on a ``resolution x resolution`` grid per image and
    channel, then upsampled bilinearly to ``H x W``. ``std`` is the standard deviation of the
    grid values; bilinear interpolation lowers the per-pixel standard deviation between grid
    points (on average to about 0.68 * std for a 16 -> 64 upsampling). With ``roll`` the
    upsampled noise is rolled (cyclically shifted) by a random offset in y and x, the same
    for the whole batch, as the authors' ``torch.roll``; the grid values are those without it.
    """
    batch, height, width, channels = shape
    grid = std * jax.random.normal(key, (batch, resolution, resolution, channels))
    noise = jax.image.resize(grid, (batch, height, width, channels), method="bilinear")
    if roll:
        dy, dx = jax.random.randint(jax.random.fold_in(key, 1), (2,), 0, jnp.array([height, width]))
        noise = jnp.roll(noise, (dy, dx), axis=(1, 2))
    return noise


def foreign_patch(
    key: jax.Array,
    batch: jax.Array,
    side: tuple[float, float],
    alpha: tuple[float, float],
) -> jax.Array:
    """Foreign patch interpolation: blend a rectangle of another image into each image.

    Every image ``x_i`` of ``batch`` [B, H, W, C] gets one axis-aligned rectangle, of sides
    drawn uniformly between ``side[0]`` and ``side[1]`` of the image side and placed
    uniformly inside the image, where it becomes ``(1 - a_i) * x_i + a_i * x_j`` with
    ``a_i ~ U(alpha[0], alpha[1])`` and ``x_j`` the image ``j = (i + s) mod B`` of the same
    batch at the same location (``s`` drawn once per batch in ``1 .. B - 1``; a batch of one
    is returned as is). Outside the rectangle the image is unchanged.
    """
    min_side, max_side = side
    size, height, width, _ = batch.shape
    k_shift, k_h, k_w, k_y, k_x, k_a = jax.random.split(key, 6)
    shift = jax.random.randint(k_shift, (), 1, max(size, 2))
    partner = jnp.roll(batch, shift, axis=0)

    def interval(k_len: jax.Array, k_pos: jax.Array, extent: int) -> jax.Array:
        low = max(1, round(min_side * extent))
        length = jax.random.randint(k_len, (size,), low, max(low, round(max_side * extent)) + 1)
        start = jnp.floor(jax.random.uniform(k_pos, (size,)) * (extent - length + 1))
        pos = jnp.arange(extent)
        return (pos >= start[:, None]) & (pos < (start + length)[:, None])

    inside = interval(k_h, k_y, height)[:, :, None] & interval(k_w, k_x, width)[:, None, :]
    weight = jax.random.uniform(k_a, (size, 1, 1, 1), batch.dtype, alpha[0], alpha[1])
    return batch + inside[..., None] * weight * (partner - batch)


def corrupt(cfg: UNetConfig, batch: jax.Array, key: jax.Array) -> jax.Array:
    """The denoising input of ``batch``: ``cfg.patches`` foreign patches, then coarse noise.

    As ``cfg.noise`` says; in ``reconstruction`` mode ``batch`` itself.
    """
    if cfg.mode != "denoising":
        return batch
    if cfg.noise in ("patch", "both"):
        for i in range(cfg.patches):
            batch = foreign_patch(
                jax.random.fold_in(key, 2 + i), batch, cfg.patch_side, cfg.patch_alpha
            )
    if cfg.noise in ("coarse", "both"):
        noise = coarse_noise(key, batch.shape, cfg.noise_resolution, cfg.noise_std, cfg.noise_roll)
        batch = batch + noise
    return batch


def build(cfg: UNetConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs) -> UNet:
    """The U-Net of ``cfg`` (fully convolutional: ``image_size`` is not needed)."""
    del image_size
    return UNet(
        cfg.widths,
        cfg.groups,
        uncertainty=cfg.uncertainty,
        dropped_skips=cfg.dropped_skips,
        fast=fast,
        dtype=dtype,
        rngs=rngs,
    )


def optimizers(cfg: UNetConfig, model: nnx.Module, make_transform: MakeTransform) -> Optimizers:
    """One optimiser, ``model``."""
    return single_optimizer(model, make_transform(cfg.learning_rate))


def train_step(
    cfg: UNetConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Denoising (or plain reconstruction) step; the clean image is the target.

    The loss is the MSE, or with uncertainty the Gaussian NLL.
    """
    inputs = corrupt(cfg, batch, key)
    return loss_step(
        model,
        optimizers["model"],
        lambda m: reconstruction_loss(cast(UNet, m), inputs, batch, cfg.uncertainty),
    )


def eval_losses(cfg: UNetConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: the training loss (MSE or NLL) with the corruption drawn from ``key``."""
    inputs = corrupt(cfg, batch, key)
    return {
        "loss": reconstruction_loss(cast(UNet, eval_view(model)), inputs, batch, cfg.uncertainty)
    }


def anomaly_map(
    cfg: UNetConfig, model: nnx.Module, batch: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The residual ``|x - x_hat|`` of the clean input's reconstruction.

    With uncertainty: ``(x - mu)^2 / exp(logvar)``.
    """
    return reconstruction_map(cast(UNet, model), batch, cfg.uncertainty)


FAMILY = Family(
    build, optimizers, train_step, eval_losses, anomaly_map, cpu_compiler_options=LOW_MEMORY_CPU
)
