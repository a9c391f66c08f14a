"""U-Net autoencoder, trained as a denoising autoencoder (coarse noise, Kascenas et al., 2022).

Skip connections let a plain reconstruction U-Net copy its input, anomalies included, so the
default training mode corrupts the input (low-frequency Gaussian noise, by default after a
foreign patch) and asks for the clean image back (see :mod:`imgae_dx_jax.families.unet`).
The architecture matches the classic PyTorch U-Net: with widths ``(32, 64, 128, 256)`` it has
1,927,841 parameters. With ``uncertainty`` the output convolution has a second channel, a
per-pixel log-variance (no activation), for a Gaussian likelihood (as the AE's head, Mao et
al., MICCAI 2020). With ``dropped_skips`` the finest levels decode without their skip
connection, so what the model passes at those resolutions must go through the coarser levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.models.layers import (
    Conv,
    ConvNormAct,
    UpConv2x2,
    at_least_float32,
    group_norm,
    max_pool2,
    to_compute_dtype,
)


class DoubleConv(nnx.Module):
    """Two (conv3x3 -> GroupNorm -> SiLU) layers."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.first = ConvNormAct(
            in_channels,
            out_channels,
            group_norm(out_channels, groups, rngs=rngs),
            jax.nn.silu,
            fast=fast,
            dtype=dtype,
            rngs=rngs,
        )
        self.second = ConvNormAct(
            out_channels,
            out_channels,
            group_norm(out_channels, groups, rngs=rngs),
            jax.nn.silu,
            fast=fast,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply both layers."""
        return self.second(self.first(x))


class UNet(nnx.Module):
    """U-Net with ``len(widths) - 1`` max-pool downsamplings and a sigmoid output.

    Encoder level ``i`` is a :class:`DoubleConv` to ``widths[i]`` channels; the last width is
    the bottleneck. Each decoder level upsamples with a 2x2 stride-2 transposed convolution,
    concatenates the encoder skip of the same resolution and applies a :class:`DoubleConv`.
    A 1x1 convolution and a sigmoid give the one-channel reconstruction in [0, 1].
    ``fast`` selects the CPU fast path of :mod:`imgae_dx_jax.models.layers` (same function,
    same parameters); ``dtype`` is the computation dtype of the convolutions (parameters and
    the returned reconstruction stay float32). ``uncertainty`` adds the log-variance output
    channel of :meth:`mean_and_logvar`; calling the model returns the mean image either way.
    ``dropped_skips`` leaves out the skips of the finest that many levels (their decoder
    :class:`DoubleConv` then takes the upsampled features alone).
    """

    def __init__(
        self,
        widths: Sequence[int],
        groups: int,
        *,
        uncertainty: bool = False,
        dropped_skips: int = 0,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        widths = tuple(widths)
        if not 0 <= dropped_skips < len(widths):
            raise ValueError(f"dropped_skips must be in 0..{len(widths) - 1}, not {dropped_skips}")
        self.fast = fast
        self.dtype = dtype
        self.down = nnx.List(
            [
                DoubleConv(c_in, c_out, groups, fast=fast, dtype=dtype, rngs=rngs)
                for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True)
            ]
        )
        skips = widths[-2::-1]
        self.uses_skip = tuple(i < len(skips) - dropped_skips for i in range(len(skips)))
        """Per decoder level (coarsest first): whether it concatenates its encoder skip."""
        self.up = nnx.List(
            [
                UpConv2x2(c_in, c_out, fast=fast, dtype=dtype, rngs=rngs)
                for c_in, c_out in zip(widths[:0:-1], skips, strict=True)
            ]
        )
        self.up_conv = nnx.List(
            [
                DoubleConv((1 + kept) * c, c, groups, fast=fast, dtype=dtype, rngs=rngs)
                for c, kept in zip(skips, self.uses_skip, strict=True)
            ]
        )
        self.uncertainty = uncertainty
        outputs = 2 if uncertainty else 1
        self.head = Conv(widths[0], outputs, (1, 1), fast=fast, dtype=dtype, rngs=rngs)

    def _outputs(self, x: jax.Array) -> jax.Array:
        x = to_compute_dtype(x, self.dtype)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = max_pool2(x, self.fast)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, conv, kept in zip(self.up, self.up_conv, self.uses_skip, strict=True):
            x, skip = up(x), skips.pop()
            x = conv(jnp.concatenate([x, skip], axis=-1) if kept else x)
        return at_least_float32(self.head(x))

    def mean_and_logvar(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The mean image in [0, 1] and per-pixel log-variance of ``x``: both [B, H, W, 1].

        Raises:
            ValueError: when the model was built without ``uncertainty``.
        """
        if not self.uncertainty:
            raise ValueError("mean_and_logvar needs a UNet built with uncertainty=True")
        out = self._outputs(x)
        return jax.nn.sigmoid(out[..., :1]), out[..., 1:]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Reconstruct ``x`` ([B, H, W, 1] in [0, 1]); returns [B, H, W, 1] in [0, 1]."""
        return jax.nn.sigmoid(self._outputs(x)[..., :1])
