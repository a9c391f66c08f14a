"""Building blocks shared by the model families (NHWC tensors throughout).

Normalisation layers use PyTorch's defaults (epsilon 1e-5; BatchNorm running averages with
PyTorch momentum 0.1, i.e. Flax ``momentum=0.9``) so that the models match their PyTorch
references.

The fast path (``model.fast_path``; the ``fast`` argument of the layers here) computes the same
functions with the same parameters in a form that XLA's CPU backend runs faster: a 2x2
stride-2 transposed convolution as one matrix multiply and a reshape (instead of an
input-dilated convolution), a nearest x2 upsampling followed by a convolution as four
sub-pixel convolutions on the low-resolution input (4/9 of the multiply-adds for 3x3), 1x1
convolutions and those of 2x2 feature maps as matrix multiplies (of the input, or of its
patches) and 2x2 pooling as a reshape and a reduction. Outputs match
the plain path up to float rounding (and, for max pooling, the split of the gradient between
tied maxima); parameter trees are identical, so checkpoints are interchangeable.

Mixed precision (``train.precision: bf16``; the ``dtype`` argument of the layers here): the
convolutions, transposed convolutions and linear layers compute in ``dtype`` (e.g.
``jnp.bfloat16``) from float32 parameters (``param_dtype`` stays float32, so gradients and
optimiser state are float32). Normalisation layers are left at ``dtype=None``: their float32
parameters promote the bfloat16 input, so means, variances and the normalised output are float32
(bfloat16 keeps 8 mantissa bits, too few for batch statistics and their running averages); the
next convolution casts back to ``dtype``. The models cast their outputs to float32, so losses,
anomaly maps and scores are float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

Activation = Callable[[jax.Array], jax.Array]

NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU with negative slope 0.2 (the Soft-IntroVAE / RA activation)."""
    return jax.nn.leaky_relu(x, negative_slope=0.2)


class BatchNorm(nnx.BatchNorm):
    """BatchNorm over the channel axis with PyTorch's epsilon and momentum, and sub-batches.

    The parameters, the running statistics and the evaluation mode (``use_running_average``,
    set by ``model.train()`` / ``nnx.view``) are ``nnx.BatchNorm``'s, so checkpoints are
    interchangeable. In training mode, ``groups`` splits the batch into that many equal,
    concatenated sub-batches: each is normalised with its own statistics, which are folded
    into the running averages one after another, so one call computes the same as calling
    the layer on each sub-batch in turn (lets a model take several passes in one call).

    The running averages are assigned whole (``.value``): Flax's ``stat[...] = x`` compares
    ``x.sharding`` with the stored value's, and under ``jit`` a tracer builds the message of
    the ``AttributeError`` it raises by searching the whole computation traced so far, so
    tracing a step grew quadratically with its BatchNorm layers (flax 0.12.8, jax 0.10.2: 21
    of the RA train step's 26 s of tracing).
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        super().__init__(channels, momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, rngs=rngs)

    def __call__(  # type: ignore[override]  # groups instead of nnx.BatchNorm's mask
        self, x: jax.Array, groups: int = 1
    ) -> jax.Array:
        """Normalise ``x`` [B, ..., C] (``groups``: the number of sub-batches in B)."""
        if self.use_running_average:
            return super().__call__(x)
        assert self.scale is not None and self.bias is not None  # use_scale/use_bias on
        xs = x.reshape(groups, -1, *x.shape[1:]).astype(jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(1, xs.ndim - 1))
        mean = jnp.mean(xs, axes, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(jnp.square(xs), axes, keepdims=True) - jnp.square(mean))
        y = (xs - mean) * (lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]
        running_mean, running_var = self.mean[...], self.var[...]
        for group_mean, group_var in zip(
            mean.reshape(groups, -1), var.reshape(groups, -1), strict=True
        ):
            running_mean = self.momentum * running_mean + (1 - self.momentum) * group_mean
            running_var = self.momentum * running_var + (1 - self.momentum) * group_var
        self.mean.value = lax.stop_gradient(running_mean)
        self.var.value = lax.stop_gradient(running_var)
        return y.reshape(x.shape)


def group_norm(channels: int, groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """Return a GroupNorm with ``groups`` groups and PyTorch's epsilon."""
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=NORM_EPSILON, rngs=rngs)


def _blocks2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, 2, W/2, 2, C] (the 2x2 blocks of a pooling)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


def max_pool2(x: jax.Array, fast: bool = False) -> jax.Array:
    """Halve the spatial size with 2x2 max pooling (``fast``: reshape + max)."""
    if fast:
        return jnp.max(_blocks2(x), axis=(2, 4))
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def avg_pool2(x: jax.Array, fast: bool = False) -> jax.Array:
    """Halve the spatial size with 2x2 average pooling (``fast``: reshape + mean)."""
    if fast:
        return jnp.mean(_blocks2(x), axis=(2, 4))
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def at_least_float32(x: jax.Array) -> jax.Array:
    """Cast a model output computed in bfloat16 back to float32 (float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def to_compute_dtype(x: jax.Array, dtype: Any) -> jax.Array:
    """Cast a model input to the computation dtype (``None``: leave it as it is)."""
    return x if dtype is None else x.astype(dtype)


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """Double the spatial size by nearest-neighbour repetition."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _phase_taps(kernel_size: int, phase: int) -> tuple[int, np.ndarray]:
    """Sub-pixel decomposition of one axis of "nearest x2 upsampling, then a SAME conv".

    Output pixel ``2 i + phase`` reads upsampled pixels ``2 i + phase + d`` (``|d| <= p``,
    ``p = kernel_size // 2``), i.e. low-resolution pixels ``i + (phase + d) // 2``.

    Returns:
        The smallest low-resolution offset and a 0/1 matrix [offsets, kernel_size] that sums
        the kernel taps landing on each low-resolution offset.
    """
    p = kernel_size // 2
    offsets = [(phase + d) // 2 for d in range(-p, p + 1)]
    lo = min(offsets)
    taps = np.zeros((max(offsets) - lo + 1, kernel_size), np.float32)
    for tap, offset in enumerate(offsets):
        taps[offset - lo, tap] = 1.0
    return lo, taps


def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``conv(upsample_nearest2(x))`` (stride 1, SAME, odd square kernel) without upsampling.

    Each of the four output phases (even/odd row and column) is a small convolution of the
    low-resolution input with taps of ``kernel`` summed (2x2 per phase for a 3x3 kernel, 3x3
    for 5x5); the phases are interleaved at the end. The taps are summed in the kernel's dtype
    and the convolutions run in ``x``'s dtype.
    """
    k = kernel.shape[0]
    rows = []
    for a in (0, 1):
        lo_a, taps_a = _phase_taps(k, a)
        cols = []
        for b in (0, 1):
            lo_b, taps_b = _phase_taps(k, b)
            phase_kernel = jnp.einsum("ok,pl,klcd->opcd", taps_a, taps_b, kernel).astype(x.dtype)
            pads = (
                (-lo_a, lo_a + taps_a.shape[0] - 1),
                (-lo_b, lo_b + taps_b.shape[0] - 1),
            )
            cols.append(
                jax.lax.conv_general_dilated(
                    x, phase_kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (column phase), C]
    y = jnp.stack(rows, axis=2)  # [B, H, 2 (row phase), W, 2, C]
    b_, h, _, w, _, c = y.shape
    y = y.reshape(b_, 2 * h, 2 * w, c)
    return y if bias is None else y + bias


SMALL_MAP_PIXELS = 4
"""Feature maps of at most this many pixels (2x2) are convolved as patches times a matrix on
the fast path (:func:`patch_conv`): XLA:CPU's convolution took 26 ms for the forward pass and
gradients of a 3x3, 256 -> 256 convolution of a 16x2x2 batch, one matrix multiply 2 ms. With
4x4 maps included the RA's step was slower (64 px: 2.00-2.20 s against 1.86-2.10 s; 128 px:
11.3 s against 10.1 s)."""


def patch_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 SAME convolution (odd kernel) as patch extraction and one matrix multiply.

    The ``k x k`` shifted copies of the zero-padded ``x`` [B, H, W, C] are concatenated
    along the channels ([B, H, W, k*k*C], tap-major like the flattened HWIO kernel) and
    multiplied by the kernel reshaped to [k*k*C, O]. The patches are k*k times the input, so
    this pays only for small feature maps (:data:`SMALL_MAP_PIXELS`).
    """
    kh, kw, channels, out = kernel.shape
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    taps = [padded[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1) @ kernel.reshape(kh * kw * channels, out)


class Conv(nnx.Conv):
    """``nnx.Conv`` (same parameters) with the fast path and a fused nearest x2 upsampling.

    Args:
        fast: compute 1x1 convolutions and those of small feature maps (at most
            :data:`SMALL_MAP_PIXELS`, :func:`patch_conv`) as matrix multiplies, and
            ``upsample=True`` calls as sub-pixel convolutions (:func:`upsample_conv`).
        *args: as for ``nnx.Conv``.
        **kwargs: as for ``nnx.Conv`` (``dtype``: the computation dtype, also on the fast
            path).
    """

    def __init__(self, *args: Any, fast: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fast = fast

    def _plain(self) -> bool:
        strides = self.strides if isinstance(self.strides, Sequence) else (self.strides,)
        return (
            not self.fast
            or any(s != 1 for s in strides)
            or self.padding != "SAME"
            or any(k % 2 == 0 for k in self.kernel_size)
            or self.feature_group_count != 1
        )

    def __call__(self, x: jax.Array, upsample: bool = False) -> jax.Array:
        """Convolve ``x`` [B, H, W, C]; ``upsample``: convolve its nearest x2 upsampling."""
        if self._plain():
            return super().__call__(upsample_nearest2(x) if upsample else x)
        kernel = self.kernel[...]
        bias = None if self.bias is None else self.bias[...]
        if upsample:
            x, bias = self.promote_dtype((x, bias), dtype=self.dtype)
            return upsample_conv(x, kernel, bias)
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        if kernel.shape[:2] == (1, 1):
            y = x @ kernel[0, 0]
        elif x.shape[1] * x.shape[2] <= SMALL_MAP_PIXELS:
            y = patch_conv(x, kernel)
        else:
            return super().__call__(x)
        return y if bias is None else y + bias


class UpConv2x2(nnx.ConvTranspose):
    """``nnx.ConvTranspose`` with a 2x2 kernel and stride 2 (same parameters), doubling H and W.

    With ``fast`` each input pixel is multiplied by the kernel in one matrix multiply and
    the four results are laid out as a 2x2 block (the kernel is applied flipped, as XLA's
    transposed convolution does). ``dtype`` is the computation dtype (parameters stay float32).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_channels, out_channels, (2, 2), strides=(2, 2), dtype=dtype, rngs=rngs)
        self.fast = fast

    def __call__(self, x: jax.Array) -> jax.Array:
        """Upsample ``x`` [B, H, W, C_in] to [B, 2H, 2W, C_out]."""
        if not self.fast:
            return super().__call__(x)
        assert self.bias is not None  # nnx.ConvTranspose's use_bias is on here
        x, kernel, bias = self.promote_dtype(
            (x, self.kernel[...][::-1, ::-1], self.bias[...]), dtype=self.dtype
        )
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,ijcd->bhiwjd", x, kernel).reshape(b, 2 * h, 2 * w, -1)
        return y + bias


class ConvNormAct(nnx.Module):
    """A 3x3 convolution (optionally strided), a normalisation layer and an activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: nnx.Module,
        activation: Activation,
        *,
        stride: int = 1,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv(
            in_channels,
            out_channels,
            (3, 3),
            strides=stride,
            fast=fast,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = norm
        self.activation = activation

    def __call__(self, x: jax.Array, upsample: bool = False) -> jax.Array:
        """Apply conv -> norm -> activation (``upsample``: to the nearest x2 upsampled ``x``)."""
        return self.activation(self.norm(self.conv(x, upsample)))


class ResidualBlock(nnx.Module):
    """Soft-IntroVAE residual block: conv3x3-BN-LeakyReLU-conv3x3-BN, plus skip, LeakyReLU.

    The skip path is the identity, or a bias-free 1x1 convolution when the channel count
    changes (as in the Soft-IntroVAE code, which RA builds on). Convolutions carry no bias
    because each is followed by BatchNorm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        fast: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        def conv(c_in: int, c_out: int, size: int) -> Conv:
            return Conv(
                c_in, c_out, (size, size), use_bias=False, fast=fast, dtype=dtype, rngs=rngs
            )

        self.fast = fast
        self.conv1 = conv(in_channels, out_channels, 3)
        self.bn1 = BatchNorm(out_channels, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.bn2 = BatchNorm(out_channels, rngs=rngs)
        self.expand = conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def __call__(self, x: jax.Array, upsample: bool = False, groups: int = 1) -> jax.Array:
        """Apply the block (``upsample``: to the nearest x2 upsampling of ``x``).

        ``groups``: ``x`` holds that many sub-batches, normalised separately (:class:`BatchNorm`).
        """
        identity = x if self.expand is None else self.expand(x)  # a 1x1 conv commutes with it
        if upsample:
            identity = upsample_nearest2(identity)
        y = leaky_relu(self.bn1(self.conv1(x, upsample), groups))
        y = self.bn2(self.conv2(y), groups)
        return leaky_relu(y + identity)
