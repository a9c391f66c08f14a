"""The CPU fast path (``model.fast_path``) computes the same function as the plain path."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.families import create_model
from imgae_dx_jax.models import use_fast_path
from imgae_dx_jax.models.layers import (
    Conv,
    UpConv2x2,
    avg_pool2,
    max_pool2,
    patch_conv,
    upsample_conv,
    upsample_nearest2,
)

SIZE = 16
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}


def model_config(name: str, fast_path: str):
    cfg = load_config(overrides=[f"model.name={name}", f"data.image_size={SIZE}", *SMALL[name]])
    return dataclasses.replace(cfg.model, fast_path=fast_path)


def to_f64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, tree)


def random_model(name: str, fast_path: str, seed: int = 0):
    """A model with NumPy-random parameters: no per-shape XLA compiles of the initialisers."""
    abstract = nnx.eval_shape(
        lambda: create_model(model_config(name, fast_path), SIZE, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@functools.cache
def plain_and_fast(name: str):
    """The same parameters in a plain-path and a fast-path model (the trees must match)."""
    return random_model(name, "never"), random_model(name, "always")


def loss_and_grads(model, x: jax.Array):
    def loss(m):
        return jnp.mean(jnp.square(m(x) - x))

    value, grads = nnx.jit(nnx.value_and_grad(loss))(to_f64(model))
    return value, jax.tree_util.tree_flatten_with_path(grads)[0]


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_fast_path_equals_plain_path(name):
    # In float64 the two paths agree to rounding; in float32 the BatchNorm of tiny feature
    # maps amplifies rounding differences, which would hide a real mismatch.
    plain_model, fast_model = plain_and_fast(name)
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 1), dtype=jnp.float64)
        plain_loss, plain = loss_and_grads(plain_model, x)
        fast_loss, fast = loss_and_grads(fast_model, x)
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-12)
    assert [p for p, _ in fast] == [p for p, _ in plain]
    scale = max(float(jnp.max(jnp.abs(g))) for _, g in plain)
    for (path, a), (_, b) in zip(plain, fast, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-10 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", ["unet", "ae"])
def test_fast_path_float32_outputs(name):
    x = jax.random.uniform(jax.random.key(2), (2, SIZE, SIZE, 1))
    plain, fast = plain_and_fast(name)
    forward = nnx.jit(lambda m, x: m(x))
    np.testing.assert_allclose(forward(fast, x), forward(plain, x), atol=1e-5)


def test_fast_path_has_the_plain_parameter_tree():
    # Same paths and shapes: checkpoints and exports work with either setting.
    def abstract(cfg):
        return nnx.eval_shape(lambda: create_model(cfg, 64, rngs=nnx.Rngs(0)))

    for name in ("unet", "ra", "ae"):
        trees = [abstract(model_config(name, p)) for p in ("never", "always")]
        plain, fast = (jax.tree_util.tree_flatten_with_path(nnx.state(t))[0] for t in trees)
        assert [(k, v.shape) for k, v in plain] == [(k, v.shape) for k, v in fast]


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_upsample_conv_matches_conv_of_upsampled(kernel_size):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3), dtype=jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, 3, 4), jnp.float64)
        bias = jnp.arange(4, dtype=jnp.float64)
        expected = (
            jax.lax.conv_general_dilated(
                upsample_nearest2(x),
                kernel,
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            + bias
        )
        np.testing.assert_allclose(upsample_conv(x, kernel, bias), expected, atol=1e-12)


@pytest.mark.parametrize(("kernel_size", "height", "width"), [(3, 2, 2), (3, 1, 3), (5, 4, 3)])
def test_patch_conv_matches_conv(kernel_size, height, width):
    # Maps smaller than the kernel included: most taps then fall on the zero padding.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, height, width, 3), dtype=jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, 3, 4), jnp.float64)
        expected = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        np.testing.assert_allclose(patch_conv(x, kernel), expected, atol=1e-12)


def test_layers_fast_and_plain():
    x = jax.random.normal(jax.random.key(0), (2, 6, 8, 4))
    up_plain = UpConv2x2(4, 5, rngs=nnx.Rngs(0))
    up_fast = UpConv2x2(4, 5, fast=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(up_fast(x), up_plain(x), atol=1e-5)
    assert up_fast(x).shape == (2, 12, 16, 5)
    for size in (1, 3):
        plain = Conv(4, 3, (size, size), rngs=nnx.Rngs(0))
        fast = Conv(4, 3, (size, size), fast=True, rngs=nnx.Rngs(0))
        np.testing.assert_allclose(fast(x), plain(x), atol=1e-5)
        np.testing.assert_allclose(fast(x, upsample=True), plain(x, upsample=True), atol=1e-5)
        small = x[:, :2, :2]  # 4 pixels: the patch path
        np.testing.assert_allclose(fast(small), plain(small), atol=1e-5)
    np.testing.assert_array_equal(max_pool2(x, True), max_pool2(x))
    np.testing.assert_allclose(avg_pool2(x, True), avg_pool2(x), atol=1e-6)


def test_fast_path_setting():
    assert use_fast_path("always") and not use_fast_path("never")
    assert use_fast_path("auto") == (jax.default_backend() == "cpu")
    assert load_config().model.fast_path == "auto"
    with pytest.raises(ConfigError, match=r"model\.fast_path"):
        load_config(overrides=["model.fast_path=sometimes"])
