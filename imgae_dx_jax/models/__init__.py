"""Model families and the registry that builds one from the configuration."""

from __future__ import annotations

import jax
from flax import nnx

from imgae_dx_jax.config import ModelConfig
from imgae_dx_jax.models.autoencoder import Autoencoder
from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder
from imgae_dx_jax.models.unet import UNet

__all__ = ["Autoencoder", "ReversedAutoencoder", "UNet", "create_model", "use_fast_path"]


def use_fast_path(setting: str) -> bool:
    """Resolve ``model.fast_path``: ``always``, ``never``, or ``auto`` (on the CPU backend)."""
    if setting == "auto":
        return jax.default_backend() == "cpu"
    return setting == "always"


def create_model(cfg: ModelConfig, image_size: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """Build the model family ``cfg.name`` (``unet``, ``ra`` or ``ae``) for square images.

    Args:
        cfg: the model configuration; only the section of the selected family is used.
        image_size: side of the square one-channel input images in pixels.
        rngs: parameter initialisation keys.

    Returns:
        The freshly initialised model, in training mode.

    Raises:
        ValueError: for an unknown family name.
    """
    fast = use_fast_path(cfg.fast_path)
    if cfg.name == "unet":
        return UNet(cfg.unet.widths, cfg.unet.groups, fast=fast, rngs=rngs)
    if cfg.name == "ra":
        return ReversedAutoencoder(cfg.ra.widths, cfg.ra.zdim, image_size, fast=fast, rngs=rngs)
    if cfg.name == "ae":
        return Autoencoder(cfg.ae.widths, cfg.ae.latent_dim, image_size, fast=fast, rngs=rngs)
    raise ValueError(f"unknown model {cfg.name!r}; choose one of unet, ra, ae")
