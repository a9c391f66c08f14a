"""The AE deep ensemble (``model.ae.ensemble``): its members, its training step and its maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.families import anomaly_maps, create_model, get_objective
from imgae_dx_jax.families.ae import members
from imgae_dx_jax.families.losses import gaussian_nll, loss_step, mse
from imgae_dx_jax.models import Autoencoder, AutoencoderEnsemble

SIZE = 16


def config(*extra: str):
    return load_config(
        overrides=[
            "model.name=ae",
            f"data.image_size={SIZE}",
            "model.ae.widths=[8,16]",
            "model.ae.latent_dim=8",
            *extra,
        ]
    )


def batch_of(seed: int) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (4, SIZE, SIZE, 1))


def params(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_members_are_independently_initialised():
    model = create_model(config("model.ae.ensemble=3").model, SIZE, rngs=nnx.Rngs(0))
    assert isinstance(model, AutoencoderEnsemble)
    parts = [params(member) for member in members(model)]
    assert len(parts) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not same(parts[i], parts[j]), (i, j)
    # The first member is the single autoencoder that the same keys build.
    single = create_model(config().model, SIZE, rngs=nnx.Rngs(0))
    assert isinstance(single, Autoencoder)
    assert same(parts[0], params(single))


@pytest.mark.parametrize("uncertainty", [True, False])
def test_one_member_is_the_single_autoencoder_step_for_step(uncertainty):
    """``ensemble: 1`` trains exactly as the single AE's own loss step (bit for bit)."""
    cfg = config(f"model.ae.uncertainty={str(uncertainty).lower()}", "model.ae.ensemble=1")
    objective = get_objective(cfg.model, cfg.train, total_steps=5)
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    reference = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    assert isinstance(model, Autoencoder) and isinstance(reference, Autoencoder)
    optimizers = objective.create_optimizers(model)
    reference_optimizer = objective.create_optimizers(reference)["model"]

    def own_loss(m: Autoencoder, batch: jax.Array) -> jax.Array:
        if uncertainty:
            return gaussian_nll(batch, *m.mean_and_logvar(batch))
        return mse(m(batch), batch)

    for seed in range(3):
        batch = batch_of(seed)
        got = objective.train_step(model, optimizers, batch, jax.random.key(seed))
        want = loss_step(reference, reference_optimizer, lambda m, b=batch: own_loss(m, b))
        np.testing.assert_array_equal(got["loss"], want["loss"])
    assert same(params(model), params(reference))


def test_each_member_gets_its_own_gradient():
    """After a step of a 2-member ensemble, member 0 is the single AE after the same step."""
    cfg = config("model.ae.ensemble=2")
    single_cfg = config()
    ensemble = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    single = create_model(single_cfg.model, SIZE, rngs=nnx.Rngs(0))
    ens_objective = get_objective(cfg.model, cfg.train, total_steps=5)
    single_objective = get_objective(single_cfg.model, single_cfg.train, total_steps=5)
    ens_opt = ens_objective.create_optimizers(ensemble)
    single_opt = single_objective.create_optimizers(single)
    for seed in range(2):
        batch = batch_of(seed)
        ens_objective.train_step(ensemble, ens_opt, batch, jax.random.key(seed))
        single_objective.train_step(single, single_opt, batch, jax.random.key(seed))
    first, second = members(ensemble)
    for got, want in zip(params(first), params(single), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The reported loss is the members' mean.
    batch = batch_of(9)
    losses = [
        single_objective.eval_losses(member, batch, jax.random.key(0))["loss"]
        for member in (first, second)
    ]
    ensemble_loss = ens_objective.eval_losses(ensemble, batch, jax.random.key(0))["loss"]
    np.testing.assert_allclose(ensemble_loss, np.mean(losses), rtol=1e-6)


@pytest.mark.parametrize("uncertainty", [True, False])
def test_variance_map_is_zero_where_members_agree_and_positive_where_they_differ(uncertainty):
    cfg = config(f"model.ae.uncertainty={str(uncertainty).lower()}", "model.ae.ensemble=3")
    model = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    first, *others = members(model)
    for member in others:
        nnx.update(member, nnx.clone(nnx.state(first)))
    batch = batch_of(0)
    score = nnx.jit(lambda m, x: anomaly_maps(m, x, cfg.model))
    x_hat, maps = score(model, batch)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == jnp.float32
    np.testing.assert_allclose(maps, 0.0, atol=1e-12)
    # Identical members: the ensemble reconstructs as its first member.
    single_cfg = config(f"model.ae.uncertainty={str(uncertainty).lower()}")
    first_x_hat, first_map = anomaly_maps(first, batch, single_cfg.model)
    np.testing.assert_allclose(x_hat, first_x_hat, rtol=1e-6)
    # The ``mean`` map of identical members is the member's own map.
    mean_cfg = config(
        f"model.ae.uncertainty={str(uncertainty).lower()}",
        "model.ae.ensemble=3",
        "model.ae.ensemble_map=mean",
    )
    np.testing.assert_allclose(anomaly_maps(model, batch, mean_cfg.model)[1], first_map, rtol=1e-5)

    # Shift the last member's mean image (the bias of its output's first channel): every
    # pixel now differs, and the map is the members' variance there.
    last = others[-1]
    last.head.bias[...] = last.head.bias[...].at[0].add(1.0)
    x_hat, maps = score(model, batch)
    assert bool(jnp.all(maps > 0))
    recons = jnp.stack([anomaly_maps(m, batch, single_cfg.model)[0] for m in members(model)])
    np.testing.assert_allclose(maps, jnp.var(recons, axis=0)[..., 0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(x_hat, jnp.mean(recons, axis=0), rtol=1e-6)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.ae.ensemble=0", "model.ae.ensemble"),
        ("model.ae.ensemble=-2", "model.ae.ensemble"),
        ("model.ae.ensemble_map=std", "model.ae.ensemble_map"),
    ],
)
def test_config_rejects_a_bad_ensemble_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config(override)


def test_defaults_are_one_member_and_the_variance_map():
    ae = load_config().model.ae
    assert (ae.ensemble, ae.ensemble_map) == (1, "variance")
