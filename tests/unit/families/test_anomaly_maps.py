import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import anomaly_maps, create_model
from imgae_dx_jax.families.losses import eval_view, gaussian_blur
from imgae_dx_jax.families.ra import encoder_saliency

SIZE = 16
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_anomaly_maps(name):
    cfg = load_config(overrides=[f"model.name={name}", f"data.image_size={SIZE}", *SMALL[name]])
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    state_before = jax.tree.leaves(nnx.state(model))
    score = nnx.jit(lambda m, x: anomaly_maps(m, x, cfg.model))
    batch = jax.random.uniform(jax.random.key(0), (4, SIZE, SIZE, 1))
    x_hat, maps = score(model, batch)
    assert x_hat.shape == (4, SIZE, SIZE, 1)
    assert maps.shape == (4, SIZE, SIZE)
    assert maps.dtype == jnp.float32
    assert bool(jnp.all(maps >= 0)) and bool(jnp.any(maps > 0))
    # Deterministic, and in eval mode: an image's map does not depend on the rest of the batch
    # (train-mode BatchNorm would make it depend on the batch statistics).
    x_hat_again, maps_again = score(model, batch)
    np.testing.assert_array_equal(maps, maps_again)
    np.testing.assert_array_equal(x_hat, x_hat_again)
    other = batch.at[1:].set(jax.random.uniform(jax.random.key(1), (3, SIZE, SIZE, 1)))
    np.testing.assert_allclose(score(model, other)[1][0], maps[0], rtol=1e-5, atol=1e-7)
    if name == "unet":  # the AE's default map (error / variance) is tested with its options
        np.testing.assert_allclose(maps, jnp.abs(batch - x_hat)[..., 0], rtol=1e-6)
    # Neither the state nor the train mode of the caller's model changed.
    state_after = jax.tree.leaves(nnx.state(model))
    assert all(np.array_equal(a, b) for a, b in zip(state_before, state_after, strict=True))
    if name == "ra":
        assert model.encoder.stem_bn.use_running_average is False


def test_saliency_is_zero_for_identical_embeddings():
    emb = [jax.random.normal(jax.random.key(0), (2, 4, 4, 3)), jnp.ones((2, 2, 2, 5))]
    np.testing.assert_allclose(encoder_saliency(emb, emb, (8, 8), 2.0), 0.0, atol=1e-6)
    flipped = [-e for e in emb]
    # Opposite directions: cosine distance 2 at every scale and pixel.
    np.testing.assert_allclose(encoder_saliency(emb, flipped, (8, 8), 2.0), 2.0, rtol=1e-5)


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    maps = jax.random.uniform(jax.random.key(0), (2, 20, 24))
    expected = ndimage.gaussian_filter(np.asarray(maps), sigma=(0, 2.0, 2.0), mode="reflect")
    np.testing.assert_allclose(gaussian_blur(maps, 2.0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gaussian_blur(maps, 0.0), maps)


def test_the_ra_map_is_the_residual_with_or_without_the_encoder_saliency():
    overrides = ["model.name=ra", f"data.image_size={SIZE}", *SMALL["ra"]]
    saliency_cfg = load_config(overrides=[*overrides, "model.ra.anomaly_map=saliency"])
    residual_cfg = load_config(overrides=[*overrides, "model.ra.anomaly_map=residual"])
    model = create_model(saliency_cfg.model, SIZE, rngs=nnx.Rngs(0))
    batch = jax.random.uniform(jax.random.key(0), (3, SIZE, SIZE, 1))
    x_hat, residual = anomaly_maps(model, batch, residual_cfg.model)
    np.testing.assert_allclose(residual, jnp.abs(batch - x_hat)[..., 0], rtol=1e-6)
    same_x_hat, weighted = anomaly_maps(model, batch, saliency_cfg.model)
    np.testing.assert_allclose(same_x_hat, x_hat, rtol=1e-6)
    view = eval_view(model)
    _, _, emb_x = view.encoder(batch)
    _, _, emb_hat = view.encoder(x_hat)
    saliency = encoder_saliency(emb_x, emb_hat, (SIZE, SIZE), saliency_cfg.model.ra.saliency_sigma)
    np.testing.assert_allclose(weighted, residual * saliency, rtol=1e-4, atol=1e-7)
    assert not np.allclose(weighted, residual)
