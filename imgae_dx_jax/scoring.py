"""Anomaly maps and image scores of each model family (deterministic, eval mode).

- ``unet`` and ``ae``: the residual ``|x - x_hat|`` of the clean input's reconstruction.
- ``ra``: the residual ``|x - x_hat|`` with ``x_hat = D(mu(x))``, multiplied by a saliency map.

Deviation from the RA paper (Bercea et al., MIDL 2023): there the map is
``|CLAHE(x_hat) - CLAHE(x)|`` times a Gaussian-smoothed LPIPS saliency. Pretrained LPIPS
weights cannot ship offline and no CLAHE is applied here; instead the saliency is the RA
encoder's own multi-scale discrepancy between ``x`` and ``x_hat``: per embedding scale
``1 - cosine similarity`` over channels, bilinearly upsampled to the image size, averaged over
the scales and smoothed with a Gaussian of ``cfg.ra.saliency_sigma`` pixels.

The image score is the mean of the map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.config import ModelConfig
from imgae_dx_jax.objectives import cosine_distance, eval_view

if TYPE_CHECKING:
    from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder


def anomaly_maps(
    model: nnx.Module, batch: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Reconstruct ``batch`` [B, H, W, 1] and return ``(x_hat [B, H, W, 1], map [B, H, W])``.

    The map is float32 and non-negative. The model is used through an eval-mode view, so its
    state and mode are left untouched.
    """
    view = eval_view(model)
    if cfg.name == "ra":
        ra = cast("ReversedAutoencoder", view)
        mu, _, emb_x = ra.encoder(batch)
        x_hat = ra.decoder(mu)
        _, _, emb_hat = ra.encoder(x_hat)
        size = (batch.shape[1], batch.shape[2])
        saliency = encoder_saliency(emb_x, emb_hat, size, cfg.ra.saliency_sigma)
        residual = jnp.abs(batch - x_hat)[..., 0] * saliency
    else:
        x_hat = view(batch)
        residual = jnp.abs(batch - x_hat)[..., 0]
    return x_hat, residual.astype(jnp.float32)


def image_scores(maps: jax.Array) -> jax.Array:
    """Per-image anomaly score: the mean of each map, [B, H, W] -> [B]."""
    return jnp.mean(maps, axis=(1, 2))


def encoder_saliency(
    emb_x: list[jax.Array], emb_hat: list[jax.Array], size: tuple[int, int], sigma: float
) -> jax.Array:
    """Multi-scale encoder discrepancy between an image and its reconstruction: [B, H, W].

    Per scale ``1 - cosine similarity`` over channels, bilinearly upsampled to ``size``,
    averaged over the scales, clipped at 0 and smoothed with a Gaussian of ``sigma`` pixels.
    """
    height, width = size
    maps = [
        jax.image.resize(cosine_distance(a, b), (a.shape[0], height, width), method="bilinear")
        for a, b in zip(emb_x, emb_hat, strict=True)
    ]
    return gaussian_blur(jnp.maximum(sum(maps) / len(maps), 0.0), sigma)


def gaussian_blur(maps: jax.Array, sigma: float) -> jax.Array:
    """Smooth [B, H, W] maps with a separable Gaussian (truncated at 4 sigma, as in SciPy).

    Borders are extended by reflection (SciPy's ``reflect`` mode). ``sigma <= 0`` returns the
    maps unchanged.
    """
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * jnp.square(offsets / sigma))
    kernel = kernel / jnp.sum(kernel)
    padded = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    x = padded[..., None]
    for shape in ((2 * radius + 1, 1, 1, 1), (1, 2 * radius + 1, 1, 1)):
        x = jax.lax.conv_general_dilated(
            x,
            kernel.reshape(shape),
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    return x[..., 0]
