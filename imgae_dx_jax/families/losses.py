"""Loss and map pieces shared by the model families (small pure functions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from imgae_dx_jax.families.base import Metrics, Optimizers


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over all elements."""
    return jnp.mean(jnp.square(x - y))


def eval_view(model: nnx.Module) -> nnx.Module:
    """Return a view of ``model`` in eval mode (BatchNorm running averages), sharing its state.

    Unlike ``model.eval()`` this leaves the caller's module in whatever mode it was.
    """
    return nnx.view(model, use_running_average=True, raise_if_not_found=False)


def single_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> Optimizers:
    """One optimiser over all parameters, named ``model``."""
    return {"model": nnx.Optimizer(model, tx, wrt=nnx.Param)}


def gaussian_nll(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Mean Gaussian negative log-likelihood ``0.5 * ((x - mean)^2 / exp(logvar) + logvar)``.

    The constant ``0.5 * log(2 pi)`` is left out.
    """
    return jnp.mean(0.5 * (jnp.exp(-logvar) * jnp.square(x - mean) + logvar))


def error_over_variance(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """The uncertainty head's map ``(x - mean)^2 / exp(logvar)``: [B, H, W, 1] -> [B, H, W]."""
    return (jnp.square(x - mean) * jnp.exp(-logvar))[..., 0]


class Reconstructor(Protocol):
    """A model that reconstructs an image (the AE and the U-Net).

    Built with an uncertainty head, it also predicts a per-pixel log-variance.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        """The reconstruction (mean image) of ``x``."""
        ...

    def mean_and_logvar(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The mean image and per-pixel log-variance of ``x``."""
        ...


def reconstruction_loss(
    model: Reconstructor, inputs: jax.Array, target: jax.Array, uncertainty: bool
) -> jax.Array:
    """MSE of ``model(inputs)`` against ``target``, or with ``uncertainty`` a Gaussian NLL.

    The NLL is that of ``target`` under ``model.mean_and_logvar(inputs)``.
    """
    if uncertainty:
        return gaussian_nll(target, *model.mean_and_logvar(inputs))
    return mse(model(inputs), target)


def reconstruction_map(
    model: Reconstructor, batch: jax.Array, uncertainty: bool
) -> tuple[jax.Array, jax.Array]:
    """``(x_hat, map)`` of the clean input: [B, H, W, 1], [B, H, W].

    The map is the residual ``|x - x_hat|``, or with ``uncertainty``
    ``(x - mu)^2 / exp(logvar)`` (and ``x_hat = mu``).
    """
    if uncertainty:
        mean, logvar = model.mean_and_logvar(batch)
        return mean, error_over_variance(batch, mean, logvar)
    return residual_map(model, batch)


def loss_step(
    model: nnx.Module, optimizer: nnx.Optimizer, loss_fn: Callable[[nnx.Module], jax.Array]
) -> Metrics:
    """One optimiser step on ``loss_fn(model)``, in train mode; returns ``{"loss": ...}``."""
    model.train()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss}


def residual_map(
    model: Callable[[jax.Array], jax.Array], batch: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(x_hat, |x - x_hat|)`` of the clean input's reconstruction: [B, H, W, 1], [B, H, W]."""
    x_hat = model(batch)
    return x_hat, jnp.abs(batch - x_hat)[..., 0]


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cosine similarity`` over the last (channel) axis; [B, h, w, C] -> [B, h, w].

    As in PyTorch, each norm is clamped to at least ``eps``.
    """
    dot = jnp.sum(a * b, axis=-1)
    norm_a = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    norm_b = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return 1.0 - dot / (norm_a * norm_b)


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
