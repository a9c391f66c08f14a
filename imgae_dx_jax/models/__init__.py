"""The models as pure ``flax.nnx`` modules, and the settings every family's layers share.

:mod:`imgae_dx_jax.families` builds the configured one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from imgae_dx_jax.models.autoencoder import Autoencoder, AutoencoderEnsemble
from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder
from imgae_dx_jax.models.unet import UNet

__all__ = [
    "Autoencoder",
    "AutoencoderEnsemble",
    "ReversedAutoencoder",
    "UNet",
    "compute_dtype",
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
