"""Reversed Autoencoder (RA; Bercea et al., MIDL 2023, github.com/ci-ber/RA).

RA is a Soft-IntroVAE with residual blocks whose encoder is also trained to map the
(detached) reconstruction to the same multi-scale embeddings as the input (the "reversed"
embedding loss, see :mod:`imgae_dx_jax.families.ra`). There are no skip connections between
encoder and decoder.

Encoder: conv5x5 1->widths[0], BatchNorm, LeakyReLU(0.2), AvgPool2; then one residual block per
remaining width, each followed by AvgPool2 (``len(widths)`` poolings in total); a last residual
block; flatten; a linear layer to ``2 * zdim`` (mu, logvar). The activations after each pooling
are returned as the multi-scale embeddings. The decoder mirrors it: linear zdim ->
``widths[-1] * s * s`` and ReLU (``s = image_size / 2**len(widths)``), one residual block per
reversed width each followed by nearest x2 upsampling, a residual block at ``widths[0]``,
conv5x5 to one channel and a sigmoid.

Deviation from the paper at test time: the paper's anomaly map is
``|CLAHE(x_hat) - CLAHE(x)|`` weighted by a smoothed LPIPS saliency map. Pretrained LPIPS
weights cannot ship offline, so :mod:`imgae_dx_jax.families.ra` weights the plain residual
``|x - x_hat|`` (no CLAHE) by a saliency built from this encoder's own multi-scale embedding
discrepancy between ``x`` and ``x_hat``; ``x_hat`` is decoded from ``mu``, not a sample.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.models.layers import (
    BatchNorm,
    Conv,
    ResidualBlock,
    at_least_float32,
    avg_pool2,
    leaky_relu,
    to_compute_dtype,
)


class RAEncoder(nnx.Module):
    """RA encoder: image -> (mu, logvar, multi-scale embeddings)."""

    def __init__(
        self,
        widths: Sequence[int],
        zdim: int,
        image_size: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        widths = tuple(widths)
        self.fast = fast
        self.dtype = dtype
        self.stem = Conv(1, widths[0], (5, 5), use_bias=False, fast=fast, dtype=dtype, rngs=rngs)
        self.stem_bn = BatchNorm(widths[0], rngs=rngs)
        self.blocks = nnx.List(
            [
                ResidualBlock(c_in, c_out, fast=fast, dtype=dtype, rngs=rngs)
                for c_in, c_out in itertools.pairwise(widths)
            ]
        )
        self.last = ResidualBlock(widths[-1], widths[-1], fast=fast, dtype=dtype, rngs=rngs)
        side = image_size // 2 ** len(widths)
        self.fc = nnx.Linear(widths[-1] * side * side, 2 * zdim, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, groups: int = 1
    ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """Encode ``x`` [B, H, W, 1] to ``mu``, ``logvar`` [B, zdim] and the embeddings.

        The embeddings are the activations after each of the ``len(widths)`` poolings,
        from the finest ([B, H/2, W/2, widths[0]]) to the coarsest scale. All are float32
        whatever the computation dtype. ``groups``: ``x`` holds that many sub-batches, each
        with its own BatchNorm statistics (the same as encoding each on its own).
        """
        x = to_compute_dtype(x, self.dtype)
        h = avg_pool2(leaky_relu(self.stem_bn(self.stem(x), groups)), self.fast)
        embeddings = [h]
        for block in self.blocks:
            h = avg_pool2(block(h, groups=groups), self.fast)
            embeddings.append(h)
        h = self.last(h, groups=groups)
        stats = at_least_float32(self.fc(h.reshape(h.shape[0], -1)))
        mu, logvar = jnp.split(stats, 2, axis=-1)
        return mu, logvar, [at_least_float32(e) for e in embeddings]


class RADecoder(nnx.Module):
    """RA decoder: latent [B, zdim] -> image [B, H, W, 1] in [0, 1]."""

    def __init__(
        self,
        widths: Sequence[int],
        zdim: int,
        image_size: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        widths = tuple(widths)
        self.side = image_size // 2 ** len(widths)
        self.fc = nnx.Linear(zdim, widths[-1] * self.side * self.side, dtype=dtype, rngs=rngs)
        reversed_widths = widths[::-1]
        self.blocks = nnx.List(
            [
                ResidualBlock(c_in, c_out, fast=fast, dtype=dtype, rngs=rngs)
                for c_in, c_out in zip(
                    (widths[-1], *reversed_widths[:-1]), reversed_widths, strict=True
                )
            ]
        )
        self.last = ResidualBlock(widths[0], widths[0], fast=fast, dtype=dtype, rngs=rngs)
        self.head = Conv(widths[0], 1, (5, 5), fast=fast, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array, groups: int = 1) -> jax.Array:
        """Decode ``z`` [B, zdim] to an image [B, H, W, 1].

        ``groups``: ``z`` holds that many sub-batches, each with its own BatchNorm statistics
        (the same as decoding each on its own).
        """
        h = jax.nn.relu(self.fc(z)).reshape(z.shape[0], self.side, self.side, -1)
        # Each block's output is upsampled (nearest x2) on its way into the next block,
        # which the fast path folds into that block's first convolution.
        for i, block in enumerate(self.blocks):
            h = block(h, upsample=i > 0, groups=groups)
        h = self.last(h, upsample=True, groups=groups)
        return jax.nn.sigmoid(at_least_float32(self.head(h)))


class ReversedAutoencoder(nnx.Module):
    """The RA model: an :class:`RAEncoder` and an :class:`RADecoder`, trained separately.

    ``fast`` selects the CPU fast path of :mod:`imgae_dx_jax.models.layers` (same function,
    same parameters); ``dtype`` is the computation dtype of the convolutions and linear layers
    (parameters, ``mu``/``logvar``, embeddings and reconstructions stay float32).
    """

    def __init__(
        self,
        widths: Sequence[int],
        zdim: int,
        image_size: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.zdim = zdim
        self.encoder = RAEncoder(widths, zdim, image_size, fast=fast, dtype=dtype, rngs=rngs)
        self.decoder = RADecoder(widths, zdim, image_size, fast=fast, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Deterministic reconstruction ``D(mu(x))`` of ``x`` [B, H, W, 1]."""
        mu, _, _ = self.encoder(x)
        return self.decoder(mu)
