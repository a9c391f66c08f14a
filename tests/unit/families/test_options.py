"""The optimiser options, the U-Net's rolled and patch corruptions, RA as its authors compute
it, and the uncertainty head of the AE and the U-Net."""

import dataclasses
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.families import anomaly_maps, create_model, get_objective, optim
from imgae_dx_jax.families.losses import eval_view, gaussian_nll
from imgae_dx_jax.families.ra import (
    embedding_loss,
    encoder_loss,
    exp_elbo,
    kl_divergence,
    reconstruction_error,
    reparameterize,
)
from imgae_dx_jax.families.unet import coarse_noise, corrupt, foreign_patch
from imgae_dx_jax.training.loop import step_budget

SIZE = 16
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4", "model.unet.noise_resolution=4"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}


def config(name: str, *extra: str):
    return load_config(
        overrides=[f"model.name={name}", f"data.image_size={SIZE}", *SMALL[name], *extra]
    )


def batch_of(seed: int, size: int = 4) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (size, SIZE, SIZE, 1))


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("name", ["adam", "adamw", "amsgrad"])
def test_every_optimizer_builds_and_steps(name):
    options = [f"train.optimizer={name}", "train.weight_decay=1e-5", "train.lr_schedule=cosine"]
    cfg = config("ae", *options)
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    objective = get_objective(cfg.model, cfg.train, total_steps=5)
    optimizers = objective.create_optimizers(model)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    metrics = objective.train_step(model, optimizers, batch_of(0), jax.random.key(0))
    assert math.isfinite(float(metrics["loss"]))
    after = nnx.state(model, nnx.Param)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


def test_default_optimizer_is_adam_with_cosine_decay():
    train = load_config().train
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.1, -0.3])}
    ours = optim.transform(train, 10, 1e-3)
    reference = optax.adam(optax.cosine_decay_schedule(1e-3, 10))
    state_a, state_b = ours.init(params), reference.init(params)
    for _ in range(3):
        update_a, state_a = ours.update(grads, state_a, params)
        update_b, state_b = reference.update(grads, state_b, params)
        np.testing.assert_array_equal(update_a["w"], update_b["w"])


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw"])
def test_weight_decay_shrinks_weights_without_gradient(name):
    params = jnp.array([1.0, -2.0])
    for decay, moves in ((0.0, False), (0.1, True)):
        train = dataclasses.replace(load_config().train, optimizer=name, weight_decay=decay)
        tx = optim.transform(train, 10, 0.1)
        update, _ = tx.update(jnp.zeros(2), tx.init(params), params)
        new = optax.apply_updates(params, update)
        assert bool(jnp.all(jnp.abs(new) < jnp.abs(params))) == moves


def test_cosine_schedule_reaches_zero_at_the_step_budget():
    train = dataclasses.replace(load_config().train, lr_schedule="cosine")
    lr, total = 0.1, 20
    assert optim.learning_rate_at(train, lr, total, 0) == pytest.approx(lr)
    assert optim.learning_rate_at(train, lr, total, total // 2) == pytest.approx(lr / 2)
    assert optim.learning_rate_at(train, lr, total, total) == pytest.approx(0.0, abs=1e-9)
    # The transformation itself: after `total` steps the update is (about) zero.
    tx = optim.transform(train, total, lr)
    params, grads = jnp.ones(3), jnp.ones(3)
    state = tx.init(params)
    sizes = []
    for _ in range(total + 1):
        update, state = tx.update(grads, state, params)
        sizes.append(float(jnp.max(jnp.abs(update))))
    assert sizes[0] == pytest.approx(lr, rel=1e-3)
    assert sizes[-1] < 1e-9 < sizes[-2]
    constant = dataclasses.replace(train, lr_schedule="constant")
    assert optim.learning_rate_at(constant, lr, total, total) == lr


def test_step_budget_is_max_steps_or_epochs_times_steps_per_epoch():
    cfg = config("ae", "train.batch_size=4", "train.epochs=3")
    records = [SimpleNamespace(stage="images_001")] * 10 + [SimpleNamespace(stage="images_002")] * 9
    splits = SimpleNamespace(train=records)
    # 10 // 4 = 2 and 9 // 4 = 2 steps per epoch, 3 epochs each.
    assert step_budget(cfg, splits, ["images_001", "images_002"]) == 12
    assert step_budget(cfg, splits, ["images_001"]) == 6
    limited = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=7))
    assert step_budget(limited, splits, ["images_001", "images_002"]) == 7


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.optimizer", "sgd"),
        ("train.lr_schedule", "linear"),
        ("train.weight_decay", "-1"),
        ("model.unet.noise", "salt"),
        ("model.unet.patches", "0"),
        ("model.unet.patch_side", "[0.5,0.2]"),
        ("model.unet.patch_side", "[0,0.4]"),
        ("model.unet.patch_alpha", "[0,1.5]"),
    ],
)
def test_invalid_options_are_rejected_by_name(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[f"{key}={value}"])


# --------------------------------------------------------------------------- U-Net corruptions


def test_rolled_noise_is_a_shifted_copy_with_the_same_distribution():
    shape, res, std = (8, 32, 32, 1), 8, 0.2
    plain = np.asarray(coarse_noise(jax.random.key(0), shape, res, std))
    rolled = np.asarray(coarse_noise(jax.random.key(0), shape, res, std, roll=True))
    assert not np.array_equal(plain, rolled)
    # The same values (a cyclic shift of the whole batch's noise), so the same distribution.
    np.testing.assert_allclose(np.sort(plain, axis=None), np.sort(rolled, axis=None))
    shifts = [
        (dy, dx)
        for dy in range(shape[1])
        for dx in range(shape[2])
        if np.array_equal(np.roll(plain, (dy, dx), axis=(1, 2)), rolled)
    ]
    assert len(shifts) == 1
    # Different keys give different offsets.
    offsets = set()
    for seed in range(6):
        key = jax.random.key(seed)
        a = np.asarray(coarse_noise(key, shape, res, std))
        b = np.asarray(coarse_noise(key, shape, res, std, roll=True))
        offsets |= {
            (dy, dx)
            for dy in range(shape[1])
            for dx in range(shape[2])
            if np.array_equal(np.roll(a, (dy, dx), axis=(1, 2)), b)
        }
    assert len(offsets) > 1


def blend_weights(batch: np.ndarray, out: np.ndarray, i: int, window: tuple) -> list[float]:
    """The factors ``a`` with ``out[i] = (1 - a) * batch[i] + a * batch[j]`` in ``window``,
    one for each other image ``j`` of the batch for which such an ``a`` exists."""
    own, inside = batch[i][window], out[i][window]
    weights = []
    for j in set(range(len(batch))) - {i}:
        other = batch[j][window]
        weight = np.mean((inside - own) / (other - own))
        if np.allclose(own + weight * (other - own), inside, atol=1e-5):
            weights.append(float(weight))
    return weights


def test_foreign_patch_blends_one_rectangle_of_another_image():
    batch = np.asarray(batch_of(1, 6))
    out = np.asarray(foreign_patch(jax.random.key(3), jnp.asarray(batch), (0.1, 0.4), (0.0, 1.0)))
    for i in range(len(batch)):
        changed = np.abs(out[i, ..., 0] - batch[i, ..., 0]) > 1e-7
        rows, cols = np.nonzero(changed)
        assert rows.size, "every image gets a patch"
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        # The changed pixels fill exactly one rectangle of sides 10-40% of the image.
        assert changed[top:bottom, left:right].all()
        assert changed.sum() == (bottom - top) * (right - left)
        for side in (bottom - top, right - left):
            assert round(0.1 * SIZE) <= side <= round(0.4 * SIZE)
        # Inside: (1 - a) * x_i + a * x_j for one other image j and one factor a.
        matches = blend_weights(batch, out, i, np.s_[top:bottom, left:right, 0])
        assert len(matches) == 1 and 0 < matches[0] < 1


def test_foreign_patch_side_and_weight_follow_their_ranges():
    batch = np.asarray(batch_of(1, 6))
    out = np.asarray(
        foreign_patch(jax.random.key(5), jnp.asarray(batch), side=(0.5, 0.5), alpha=(0.6, 0.9))
    )
    half = SIZE // 2
    for i in range(len(batch)):
        rows, cols = np.nonzero(np.abs(out[i, ..., 0] - batch[i, ..., 0]) > 1e-7)
        assert rows.max() + 1 - rows.min() == cols.max() + 1 - cols.min() == half
        window = np.s_[rows.min() : rows.min() + half, cols.min() : cols.min() + half, 0]
        weights = blend_weights(batch, out, i, window)
        assert len(weights) == 1 and 0.6 - 1e-5 <= weights[0] <= 0.9 + 1e-5


def test_unet_blends_as_many_patches_as_configured():
    batch = batch_of(2, 8)
    changed = {}
    for patches in (1, 3):
        cfg = config("unet", "model.unet.noise=patch", f"model.unet.patches={patches}")
        inputs = corrupt(cfg.model.unet, batch, jax.random.key(0))
        changed[patches] = int(np.sum(np.abs(np.asarray(inputs - batch)) > 1e-7))
    # The first patch is the same; the next two add pixels to it.
    assert changed[3] > changed[1] > 0


@pytest.mark.parametrize("noise", ["patch", "both"])
def test_unet_patch_noise_trains_and_depends_on_the_key(noise):
    cfg = config("unet", f"model.unet.noise={noise}")
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    objective = get_objective(cfg.model, cfg.train, total_steps=1)
    batch = batch_of(2)
    a = objective.eval_losses(model, batch, jax.random.key(0))["loss"]
    b = objective.eval_losses(model, batch, jax.random.key(1))["loss"]
    assert math.isfinite(float(a)) and a != b
    optimizers = objective.create_optimizers(model)
    metrics = objective.train_step(model, optimizers, batch, jax.random.key(0))
    assert math.isfinite(float(metrics["loss"]))


# --------------------------------------------------------------------------- RA


def test_embedding_loss_takes_the_cosine_of_each_flattened_embedding():
    rng = np.random.default_rng(0)
    emb_a = [rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 2, 2, 7))]
    emb_b = [a + rng.normal(size=a.shape) for a in emb_a]

    def reference(pairs):  # ci-ber/RA's EmbeddingLoss, in NumPy
        total = 0.0
        for a, b in pairs:
            fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
            cos = np.sum(fa * fb, 1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
            total += 0.5 * np.mean((a - b) ** 2) + np.mean(1 - cos)
        return total

    pairs = list(zip(emb_a, emb_b, strict=True))
    value = embedding_loss([jnp.asarray(a) for a in emb_a], [jnp.asarray(b) for b in emb_b])
    np.testing.assert_allclose(value, reference(pairs), rtol=1e-5)
    # Not the per-pixel cosine over channels, averaged.
    per_pixel = sum(
        0.5 * np.mean((a - b) ** 2)
        + np.mean(1 - np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
        for a, b in pairs
    )
    assert abs(float(value) - per_pixel) > 1e-3


def test_ra_encoder_loss_keeps_the_gradient_of_the_exp_elbo_target():
    """The re-reconstruction's target ``x_rec`` is attached, as in ci-ber/RA's trainer."""
    cfg = config("ra").model
    # A small beta_neg keeps expELBO(rec) away from exp(-large) = 0, so its gradient shows.
    ra_cfg = dataclasses.replace(cfg.ra, beta_neg=0.01, embedding_weight=0.0)
    model = eval_view(create_model(cfg, SIZE, rngs=nnx.Rngs(0)))
    batch, z_prior = batch_of(4), jax.random.normal(jax.random.key(5), (4, ra_cfg.zdim))
    key = jax.random.key(6)

    def authors(enc, dec, detach_target):
        scale = 1.0 / (SIZE * SIZE)
        k_z, k_rec, k_fake = jax.random.split(key, 3)
        mu, logvar, _ = enc(batch)
        rec = dec(reparameterize(k_z, mu, logvar))
        fake = jax.lax.stop_gradient(dec(z_prior))
        mu_r, logvar_r, _ = enc(jax.lax.stop_gradient(rec))
        mu_f, logvar_f, _ = enc(fake)
        target = jax.lax.stop_gradient(rec) if detach_target else rec
        rec_rec = reconstruction_error(target, dec(reparameterize(k_rec, mu_r, logvar_r)))
        rec_fake = reconstruction_error(fake, dec(reparameterize(k_fake, mu_f, logvar_f)))
        real = jnp.mean(reconstruction_error(batch, rec)), jnp.mean(kl_divergence(mu, logvar))
        return scale * (ra_cfg.beta_rec * real[0] + ra_cfg.beta_kl * real[1]) + 0.25 * (
            exp_elbo(rec_rec, kl_divergence(mu_r, logvar_r), scale, 0.5, ra_cfg.beta_neg)
            + exp_elbo(rec_fake, kl_divergence(mu_f, logvar_f), scale, 0.5, ra_cfg.beta_neg)
        )

    def grads(fn):
        return jax.tree.leaves(nnx.jit(nnx.grad(fn))(model.encoder, model.decoder))

    ours = grads(lambda e, d: encoder_loss(ra_cfg, e, d, batch, z_prior, key)[0])
    attached = grads(lambda e, d: authors(e, d, detach_target=False))
    detached = grads(lambda e, d: authors(e, d, detach_target=True))
    for a, b in zip(ours, attached, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    assert any(
        not np.allclose(a, b, rtol=1e-3, atol=1e-9) for a, b in zip(ours, detached, strict=True)
    )


# --------------------------------------------------------------------------- uncertainty head


def test_gaussian_nll_matches_the_formula():
    x, mu, logvar = jnp.array([0.2, 0.9]), jnp.array([0.5, 0.4]), jnp.array([0.0, math.log(0.5)])
    expected = np.mean(0.5 * (np.array([0.09, 0.25 / 0.5]) + np.array([0.0, math.log(0.5)])))
    np.testing.assert_allclose(gaussian_nll(x, mu, logvar), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["ae", "unet"])
def test_uncertainty_head_trains_on_the_nll_and_maps_error_over_variance(name):
    cfg = config(name, f"model.{name}.uncertainty=true")
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    objective = get_objective(cfg.model, cfg.train, total_steps=1)
    optimizers = objective.create_optimizers(model)
    batch = batch_of(7)
    step = nnx.jit(objective.train_step)
    losses = [float(step(model, optimizers, batch, jax.random.key(0))["loss"]) for _ in range(15)]
    assert losses[-1] < losses[0], losses
    x_hat, amap = anomaly_maps(model, batch, cfg.model)
    assert x_hat.shape == batch.shape and amap.shape == batch.shape[:3]
    assert bool(jnp.all(amap >= 0)) and bool(jnp.all(jnp.isfinite(amap)))
    mean, logvar = eval_view(model).mean_and_logvar(batch)
    np.testing.assert_allclose(x_hat, mean, rtol=1e-6)
    np.testing.assert_allclose(
        amap, ((batch - mean) ** 2 / jnp.exp(logvar))[..., 0], rtol=1e-5, atol=1e-7
    )
    # Without the option the model has one output channel and no variance.
    plain_cfg = config(name, f"model.{name}.uncertainty=false")
    plain = create_model(plain_cfg.model, SIZE, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="uncertainty"):
        plain.mean_and_logvar(batch)
    # ... and its map is the absolute residual.
    x_plain, plain_map = anomaly_maps(plain, batch, plain_cfg.model)
    np.testing.assert_allclose(plain_map, jnp.abs(batch - x_plain)[..., 0], rtol=1e-6)
