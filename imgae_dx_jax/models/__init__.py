"""Model families and the registry that builds one from the configuration."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.config import ModelConfig
from imgae_dx_jax.models.autoencoder import Autoencoder
from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder
from imgae_dx_jax.models.unet import UNet

__all__ = [
    "Autoencoder",
    "ReversedAutoencoder",
    "UNet",
    "compute_dtype",
    "create_model",
    "use_fast_path",
]

_COMPUTE_DTYPES = {"float32": jnp.float32, "bf16": jnp.bfloat16}


def compute_dtype(precision: str) -> Any:
    """Map ``train.precision`` (``float32`` or ``bf16``) to the layers' computation dtype.

    Raises:
        ValueError: for another value.
    """
    if precision not in _COMPUTE_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of float32, bf16")
    return _COMPUTE_DTYPES[precision]


def use_fast_path(setting: str) -> bool:
    """Resolve ``model.fast_path``: ``always``, ``never``, or ``auto`` (on the CPU backend)."""
    if setting == "auto":
        return jax.default_backend() == "cpu"
    return setting == "always"


def create_model(
    cfg: ModelConfig, image_size: int, *, dtype: Any = None, rngs: nnx.Rngs
) -> nnx.Module:
    """Build the model family ``cfg.name`` (``unet``, ``ra`` or ``ae``) for square images.

    Args:
        cfg: the model configuration; only the section of the selected family is used.
        image_size: side of the square one-channel input images in pixels.
        dtype: computation dtype of the convolutions and linear layers (``jnp.bfloat16`` for
            mixed precision, see :func:`compute_dtype`); ``None`` (the default) computes in the
            parameters' dtype, float32. Parameters are float32 whatever it is, and so are the
            model's outputs.
        rngs: parameter initialisation keys.

    Returns:
        The freshly initialised model, in training mode.

    Raises:
        ValueError: for an unknown family name.
    """
    fast = use_fast_path(cfg.fast_path)
    if cfg.name == "unet":
        return UNet(cfg.unet.widths, cfg.unet.groups, fast=fast, dtype=dtype, rngs=rngs)
    if cfg.name == "ra":
        return ReversedAutoencoder(
            cfg.ra.widths, cfg.ra.zdim, image_size, fast=fast, dtype=dtype, rngs=rngs
        )
    if cfg.name == "ae":
        return Autoencoder(
            cfg.ae.widths, cfg.ae.latent_dim, image_size, fast=fast, dtype=dtype, rngs=rngs
        )
    raise ValueError(f"unknown model {cfg.name!r}; choose one of unet, ra, ae")
