import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import create_model, get_objective
from imgae_dx_jax.families.losses import cosine_distance
from imgae_dx_jax.families.ra import embedding_loss, exp_elbo, kl_divergence, reconstruction_error
from imgae_dx_jax.families.unet import coarse_noise

SIZE = 16
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4", "model.unet.noise_resolution=4"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8", "model.ra.learning_rate=1e-3"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}
RA_TERMS = {
    "loss",
    "loss_enc",
    "loss_dec",
    "rec",
    "kl",
    "kl_rec",
    "kl_fake",
    "exp_elbo_rec",
    "exp_elbo_fake",
    "emb",
}


TRAIN = load_config().train


def small_config(name: str, *extra: str):
    overrides = [f"model.name={name}", f"data.image_size={SIZE}", *SMALL[name], *extra]
    return load_config(overrides=overrides).model


def objective_of(cfg):
    return get_objective(cfg, TRAIN, total_steps=10)


def images(key: jax.Array, batch: int = 4) -> jax.Array:
    """Smooth synthetic 'X-rays': a random blob on a gradient, in [0, 1]."""
    yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, SIZE), jnp.linspace(-1, 1, SIZE), indexing="ij")
    centre = jax.random.uniform(key, (batch, 2, 1, 1), minval=-0.5, maxval=0.5)
    blob = jnp.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) / 0.1)
    return (0.2 + 0.3 * (yy + 1) / 2 + 0.5 * blob)[..., None]


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture(scope="module", params=["unet", "ra", "ae"])
def runs(request):
    """Train one small model per family with exactly the caller's jit wrapper, twice."""
    name = request.param
    cfg = small_config(name)
    model = create_model(cfg, SIZE, rngs=nnx.Rngs(0))
    objective = objective_of(cfg)
    graphdef, initial = nnx.split((model, objective.create_optimizers(model)))

    @partial(jax.jit, donate_argnums=0)
    def step(state, batch, key):
        model, opts = nnx.merge(graphdef, state)
        metrics = objective.train_step(model, opts, batch, key)
        return nnx.state((model, opts)), metrics

    @jax.jit
    def evaluate(state, batch, key):
        model, opts = nnx.merge(graphdef, state)
        metrics = objective.eval_losses(model, batch, key)
        return metrics, nnx.state((model, opts))

    batch = images(jax.random.key(0))
    results = []
    for _ in range(2):
        state, history = copy(initial), []
        for i in range(5):
            state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(7), i))
            history.append(jax.device_get(metrics))
        results.append((history, state))
    _, other_key = step(copy(initial), batch, jax.random.key(99))
    return {
        "name": name,
        "batch": batch,
        "runs": results,
        "other_key": jax.device_get(other_key),
        "evaluate": evaluate,
    }


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_jitted_steps_lower_the_loss(runs):
    history, _ = runs["runs"][0]
    losses = [float(m["loss"]) for m in history]
    assert losses[-1] < losses[0], losses
    # Every term is finite, the RA ones included (the first step sees the untrained model).
    assert all(math.isfinite(float(v)) for metrics in history for v in metrics.values())
    assert set(history[0]) == (RA_TERMS if runs["name"] == "ra" else {"loss"})
    assert all(np.shape(v) == () for v in history[0].values())


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_training_is_deterministic_given_the_keys(runs):
    (history_a, state_a), (history_b, state_b) = runs["runs"]
    for a, b in zip(history_a, history_b, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    # The AE is deterministic; the others draw noise or latents from the key.
    uses_key = runs["name"] != "ae"
    assert (runs["other_key"]["loss"] != history_a[0]["loss"]) == uses_key


def test_eval_losses_do_not_mutate(runs):
    _, state = runs["runs"][0]
    metrics, after = runs["evaluate"](state, runs["batch"], jax.random.key(3))
    metrics_other, _ = runs["evaluate"](state, runs["batch"], jax.random.key(4))
    assert "loss" in metrics and np.shape(metrics["loss"]) == ()
    assert math.isfinite(float(metrics["loss"]))
    leaves_before, leaves_after = jax.tree.leaves(state), jax.tree.leaves(after)
    assert all(np.array_equal(x, y) for x, y in zip(leaves_before, leaves_after, strict=True))
    # Only the denoising U-Net's validation loss depends on the key (its noise).
    assert (metrics["loss"] != metrics_other["loss"]) == (runs["name"] == "unet")


def test_optimizer_names():
    for name, keys in (("unet", {"model"}), ("ae", {"model"}), ("ra", {"encoder", "decoder"})):
        cfg = small_config(name)
        model = nnx.eval_shape(lambda cfg=cfg: create_model(cfg, SIZE, rngs=nnx.Rngs(0)))
        assert set(objective_of(cfg).create_optimizers(model)) == keys


def test_unet_reconstruction_mode_ignores_the_key():
    cfg = small_config("unet", "model.unet.mode=reconstruction")
    model = create_model(cfg, SIZE, rngs=nnx.Rngs(0))
    objective = objective_of(cfg)
    batch = images(jax.random.key(0), 2)
    evaluate = nnx.jit(objective.eval_losses)
    a = evaluate(model, batch, jax.random.key(1))["loss"]
    b = evaluate(model, batch, jax.random.key(2))["loss"]
    assert a == b
    np.testing.assert_allclose(a, jnp.mean((model(batch) - batch) ** 2), rtol=1e-5)


def test_unknown_objective():
    cfg = dataclasses.replace(small_config("ae"), name="vae")
    with pytest.raises(ValueError, match="unknown model"):
        objective_of(cfg)


# --------------------------------------------------------------------------- RA loss pieces


def test_kl_divergence_matches_hand_computation():
    mu = jnp.array([[0.5, -1.0], [0.0, 0.0]])
    logvar = jnp.array([[0.0, math.log(2.0)], [0.0, 0.0]])
    # -0.5 * [(1 + 0 - 0.25 - 1) + (1 + ln 2 - 1 - 2)] and 0 for the standard normal.
    expected = np.array([-0.5 * (-0.25 + math.log(2.0) - 2.0), 0.0])
    np.testing.assert_allclose(kl_divergence(mu, logvar), expected, rtol=1e-6, atol=1e-7)


def test_reconstruction_error_is_per_image_sum():
    x = jnp.array([[[0.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])[..., None]
    x_hat = jnp.array([[[0.5, 1.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.25]]])[..., None]
    np.testing.assert_allclose(reconstruction_error(x, x_hat), [0.25 + 1.0, 0.0625], rtol=1e-6)


def test_exp_elbo_matches_hand_computation():
    rec, kl = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0])
    # exp(-2 * 0.25 * (0.5 * rec + 2 * kl)): exponents -0.75 and -1.5.
    expected = (math.exp(-0.75) + math.exp(-1.5)) / 2
    value = exp_elbo(rec, kl, scale=0.25, beta_rec=0.5, beta_neg=2.0)
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_embedding_loss_matches_hand_computation():
    # Scale 1: orthogonal unit vectors -> MSE 1, cosine distance 1 -> 0.5 * 1 + 1.
    a1 = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    b1 = jnp.array([0.0, 1.0]).reshape(1, 1, 1, 2)
    # Scale 2: parallel vectors -> MSE (1 + 4) / 2, cosine distance 0 -> 1.25.
    a2 = jnp.array([1.0, 2.0]).reshape(1, 1, 1, 2)
    b2 = jnp.array([2.0, 4.0]).reshape(1, 1, 1, 2)
    np.testing.assert_allclose(embedding_loss([a1, a2], [b1, b2]), 1.5 + 1.25, rtol=1e-6)
    np.testing.assert_allclose(embedding_loss([a1], [a1]), 0.0, atol=1e-6)
    np.testing.assert_allclose(cosine_distance(a2, -b2), [[[2.0]]], rtol=1e-6)


# --------------------------------------------------------------------------- coarse noise


def test_coarse_noise_is_smooth_with_the_configured_std():
    std, res, size = 0.2, 16, 64
    noise = coarse_noise(jax.random.key(0), (64, size, size, 1), res, std)
    assert noise.shape == (64, size, size, 1)
    # Neighbouring pixels are strongly correlated (white noise would give ~0).
    corr = np.corrcoef(np.ravel(noise[:, :, :-1]), np.ravel(noise[:, :, 1:]))[0, 1]
    assert corr > 0.9
    # The grid values have std `std`; bilinear upsampling is linear, so each pixel's variance
    # is std^2 times the sum of its squared interpolation weights.
    basis = jnp.eye(res * res).reshape(res * res, res, res, 1)
    weights = jax.image.resize(basis, (res * res, size, size, 1), method="bilinear")
    expected = std * math.sqrt(float(jnp.mean(jnp.sum(weights**2, axis=0))))
    assert 0.5 * std < expected < std
    np.testing.assert_allclose(float(jnp.std(noise)), expected, rtol=0.05)
    assert abs(float(jnp.mean(noise))) < 0.02
    # A different key gives different noise; the same key the same noise.
    other = coarse_noise(jax.random.key(1), (64, size, size, 1), res, std)
    assert not np.array_equal(noise, other)
    np.testing.assert_array_equal(noise, coarse_noise(jax.random.key(0), noise.shape, res, std))
