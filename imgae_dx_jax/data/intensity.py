"""Per-image intensity normalisation of the model input (``data.intensity``), in JAX.

Batches stay uint8 until they reach the device; :func:`model_input` turns them into the
float input of every model, in the jitted training, validation and sample steps
(:mod:`imgae_dx_jax.training.step`) and in scoring (:class:`imgae_dx_jax.inference.Scorer`,
which evaluation and prediction share), so all of them see the same normalisation.

=========  ========================================================================================
``none``   ``x``: the image as decoded, in [0, 1]
``minmax`` ``(x - q01) / (q99 - q01)`` clipped to [0, 1], with the image's 1st and 99th
           percentiles: removes the image's exposure (offset) and contrast (scale)
``p99``    ``x / q99`` clipped to [0, 1], with the image's 99th percentile (Kascenas et al.,
           MIDL 2022): removes the scale only
=========  ========================================================================================

A constant image (its percentiles coincide) becomes zeros under ``minmax``; under ``p99`` it
becomes ones, or zeros if it is black.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from imgae_dx_jax.schema import INTENSITIES

_LOW, _HIGH = 0.01, 0.99
_EPS = 1e-6
"""Smallest percentile range (or 99th percentile) divided by."""


def normalise_intensity(images: jax.Array, mode: str) -> jax.Array:
    """Normalise each image of a float batch by its own intensity percentiles.

    Args:
        images: float images ``[B, H, W, C]`` (percentiles are taken per image, over all of
            its pixels and channels).
        mode: ``none``, ``minmax`` or ``p99`` (``data.intensity``).

    Returns:
        The normalised batch, same shape and dtype; in [0, 1] for ``minmax`` and ``p99`` (and
        for ``none`` when the input is).

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in INTENSITIES:
        raise ValueError(f"unknown intensity normalisation {mode!r}; choose {INTENSITIES}")
    if mode == "none":
        return images
    flat = images.reshape(images.shape[0], -1)
    low, high = jnp.quantile(flat, jnp.array([_LOW, _HIGH], dtype=images.dtype), axis=1)
    shape = (-1,) + (1,) * (images.ndim - 1)
    low, high = low.reshape(shape), high.reshape(shape)
    if mode == "minmax":
        out = (images - low) / jnp.maximum(high - low, _EPS)
    else:
        out = images / jnp.maximum(high, _EPS)
    return jnp.clip(out, 0.0, 1.0).astype(images.dtype)


def model_input(images: jax.Array, mode: str) -> jax.Array:
    """uint8 images ``[B, H, W, C]`` -> the model's float32 input: ``/ 255``, then normalised.

    Args:
        images: the decoded uint8 batch (on the device).
        mode: ``data.intensity``.

    Returns:
        float32 images of the same shape (:func:`normalise_intensity`).
    """
    return normalise_intensity(images.astype(jnp.float32) / 255.0, mode)
