"""Per-image intensity normalisation: shapes, ranges, invariances, and one jitted path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgae_dx_jax.data.intensity import model_input, normalise_intensity


def _batch(seed: int = 0, shape: tuple[int, ...] = (4, 16, 16, 1)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 0.7, shape).astype(np.float32)


@pytest.mark.parametrize("mode", ["none", "minmax", "p99"])
def test_shape_dtype_and_range(mode):
    x = jnp.asarray(_batch())
    y = normalise_intensity(x, mode)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_none_is_the_identity():
    x = jnp.asarray(_batch())
    np.testing.assert_array_equal(normalise_intensity(x, "none"), x)


def test_minmax_uses_each_images_own_percentiles():
    x = _batch(shape=(3, 16, 16, 1))
    y = np.asarray(normalise_intensity(jnp.asarray(x), "minmax"))
    for image, out in zip(x, y, strict=True):
        low, high = np.quantile(image, [0.01, 0.99])
        expected = np.clip((image - low) / (high - low), 0, 1)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert out.min() == 0.0 and out.max() == 1.0  # the tails saturate


@pytest.mark.parametrize(("scale", "offset"), [(0.5, 0.2), (1.3, -0.1), (0.05, 0.9)])
def test_minmax_is_invariant_to_affine_intensity_changes(scale, offset):
    x = _batch(1)
    changed = scale * x + offset
    # A different change per image: each image is normalised by itself.
    per_image = x * np.array([1.0, 0.4, 2.0, 0.7], np.float32)[:, None, None, None] + 0.05
    reference = normalise_intensity(jnp.asarray(x), "minmax")
    np.testing.assert_allclose(
        normalise_intensity(jnp.asarray(changed), "minmax"), reference, atol=1e-5
    )
    np.testing.assert_allclose(
        normalise_intensity(jnp.asarray(per_image), "minmax"), reference, atol=1e-5
    )


def test_p99_divides_by_the_99th_percentile_and_ignores_scale_not_offset():
    x = _batch(2)
    y = normalise_intensity(jnp.asarray(x), "p99")
    q99 = np.quantile(x.reshape(len(x), -1), 0.99, axis=1)[:, None, None, None]
    np.testing.assert_allclose(y, np.clip(x / q99, 0, 1), atol=1e-5)
    np.testing.assert_allclose(normalise_intensity(jnp.asarray(3 * x), "p99"), y, atol=1e-5)
    assert not np.allclose(normalise_intensity(jnp.asarray(x + 0.2), "p99"), y, atol=1e-3)


@pytest.mark.parametrize("mode", ["minmax", "p99"])
def test_constant_images_give_zeros_or_ones_not_nans(mode):
    x = jnp.zeros((2, 8, 8, 1)).at[1].set(0.5)
    y = np.asarray(normalise_intensity(x, mode))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_array_equal(y[1], 0.0 if mode == "minmax" else 1.0)


def test_model_input_scales_uint8_and_runs_under_jit():
    images = (np.random.default_rng(3).integers(20, 200, (2, 8, 8, 1))).astype(np.uint8)
    jitted = jax.jit(model_input, static_argnums=1)
    np.testing.assert_allclose(jitted(images, "none"), images / 255.0, atol=1e-7)
    expected = normalise_intensity(jnp.asarray(images, jnp.float32) / 255.0, "minmax")
    np.testing.assert_allclose(jitted(images, "minmax"), expected, atol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown intensity"):
        normalise_intensity(jnp.zeros((1, 4, 4, 1)), "zscore")
