"""Building blocks shared by the model families (NHWC tensors throughout).

Normalisation layers use PyTorch's defaults (epsilon 1e-5; BatchNorm running averages with
PyTorch momentum 0.1, i.e. Flax ``momentum=0.9``) so that the models match their PyTorch
references.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Activation = Callable[[jax.Array], jax.Array]

NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU with negative slope 0.2 (the Soft-IntroVAE / RA activation)."""
    return jax.nn.leaky_relu(x, negative_slope=0.2)


def batch_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """Return a BatchNorm over the channel axis with PyTorch's epsilon and momentum."""
    return nnx.BatchNorm(channels, momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, rngs=rngs)


def group_norm(channels: int, groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """Return a GroupNorm with ``groups`` groups and PyTorch's epsilon."""
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=NORM_EPSILON, rngs=rngs)


def max_pool2(x: jax.Array) -> jax.Array:
    """Halve the spatial size with 2x2 max pooling."""
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def avg_pool2(x: jax.Array) -> jax.Array:
    """Halve the spatial size with 2x2 average pooling."""
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """Double the spatial size by nearest-neighbour repetition."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


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
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(in_channels, out_channels, (3, 3), strides=stride, rngs=rngs)
        self.norm = norm
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply conv -> norm -> activation."""
        return self.activation(self.norm(self.conv(x)))


class ResidualBlock(nnx.Module):
    """Soft-IntroVAE residual block: conv3x3-BN-LeakyReLU-conv3x3-BN, plus skip, LeakyReLU.

    The skip path is the identity, or a bias-free 1x1 convolution when the channel count
    changes (as in the Soft-IntroVAE code, which RA builds on). Convolutions carry no bias
    because each is followed by BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = batch_norm(out_channels, rngs=rngs)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(out_channels, rngs=rngs)
        self.expand = (
            nnx.Conv(in_channels, out_channels, (1, 1), use_bias=False, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block."""
        identity = x if self.expand is None else self.expand(x)
        y = leaky_relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return leaky_relu(y + identity)
