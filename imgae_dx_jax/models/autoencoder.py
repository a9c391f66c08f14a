"""Baseline convolutional autoencoder with a dense bottleneck.

Encoder: per width a stride-2 conv3x3 -> BatchNorm -> ReLU (``len(widths)`` downsamplings),
flatten, a linear layer to ``latent_dim``. Decoder: a linear layer back to
``widths[-1] * s * s`` (``s = image_size / 2**len(widths)``) and ReLU, then per level a nearest
x2 upsampling followed by conv3x3 -> BatchNorm -> ReLU, mirroring the encoder widths, and a
conv3x3 to one channel with a sigmoid. A small bottleneck helps anomaly detection on chest
X-rays (AE4AD, MICCAI 2024). With ``uncertainty`` the last conv has a second output channel,
a per-pixel log-variance (no activation), for a Gaussian likelihood (Mao et al., MICCAI 2020).
:class:`AutoencoderEnsemble` holds several independently initialised autoencoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from imgae_dx_jax.models.layers import (
    BatchNorm,
    Conv,
    ConvNormAct,
    at_least_float32,
    to_compute_dtype,
)


class Autoencoder(nnx.Module):
    """Conv encoder, dense bottleneck of size ``latent_dim``, mirrored conv decoder.

    ``fast`` selects the CPU fast path of :mod:`imgae_dx_jax.models.layers` (same function,
    same parameters); ``dtype`` is the computation dtype of the convolutions and linear layers
    (parameters, the latent code and the reconstruction stay float32). ``uncertainty`` adds
    the log-variance output channel of :meth:`mean_and_logvar`; calling the model returns the
    mean image either way.
    """

    def __init__(
        self,
        widths: Sequence[int],
        latent_dim: int,
        image_size: int,
        *,
        uncertainty: bool = False,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        widths = tuple(widths)
        self.dtype = dtype
        self.side = image_size // 2 ** len(widths)
        self.down = nnx.List(
            [
                ConvNormAct(
                    c_in,
                    c_out,
                    BatchNorm(c_out, rngs=rngs),
                    jax.nn.relu,
                    stride=2,
                    fast=fast,
                    dtype=dtype,
                    rngs=rngs,
                )
                for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True)
            ]
        )
        flat = widths[-1] * self.side * self.side
        self.to_latent = nnx.Linear(flat, latent_dim, dtype=dtype, rngs=rngs)
        self.from_latent = nnx.Linear(latent_dim, flat, dtype=dtype, rngs=rngs)
        up_widths = (*widths[-2::-1], widths[0])
        self.up = nnx.List(
            [
                ConvNormAct(
                    c_in,
                    c_out,
                    BatchNorm(c_out, rngs=rngs),
                    jax.nn.relu,
                    fast=fast,
                    dtype=dtype,
                    rngs=rngs,
                )
                for c_in, c_out in zip(widths[::-1], up_widths, strict=True)
            ]
        )
        self.uncertainty = uncertainty
        outputs = 2 if uncertainty else 1
        self.head = Conv(widths[0], outputs, (3, 3), fast=fast, dtype=dtype, rngs=rngs)

    def encode(self, x: jax.Array) -> jax.Array:
        """Encode ``x`` [B, H, W, 1] to the latent code [B, latent_dim] (float32)."""
        x = to_compute_dtype(x, self.dtype)
        for layer in self.down:
            x = layer(x)
        return at_least_float32(self.to_latent(x.reshape(x.shape[0], -1)))

    def _head(self, z: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.from_latent(z)).reshape(z.shape[0], self.side, self.side, -1)
        for layer in self.up:
            h = layer(h, upsample=True)
        return at_least_float32(self.head(h))

    def decode(self, z: jax.Array) -> jax.Array:
        """Decode a latent code [B, latent_dim] to an image [B, H, W, 1] in [0, 1]."""
        return jax.nn.sigmoid(self._head(z)[..., :1])

    def mean_and_logvar(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The mean image in [0, 1] and per-pixel log-variance of ``x``: both [B, H, W, 1].

        Raises:
            ValueError: when the model was built without ``uncertainty``.
        """
        if not self.uncertainty:
            raise ValueError("mean_and_logvar needs an Autoencoder built with uncertainty=True")
        out = self._head(self.encode(x))
        return jax.nn.sigmoid(out[..., :1]), out[..., 1:]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Reconstruct ``x`` [B, H, W, 1] (the mean image)."""
        return self.decode(self.encode(x))


class AutoencoderEnsemble(nnx.Module):
    """A deep ensemble: independently initialised :class:`Autoencoder` s of one shape.

    The members share nothing, BatchNorm statistics included.
    :func:`imgae_dx_jax.families.ae.build` builds them one after the other from the same
    ``rngs``, so each draws its own initial parameters (the first is the :class:`Autoencoder`
    those ``rngs`` would build alone).
    """

    def __init__(self, members: Sequence[Autoencoder]):
        self.members = nnx.List(list(members))
