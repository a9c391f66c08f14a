import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.families import create_model
from imgae_dx_jax.families.ra import in_pairs
from imgae_dx_jax.models import Autoencoder, ReversedAutoencoder, UNet
from imgae_dx_jax.models.layers import BatchNorm

SIZE = 16
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}
# Parameter counts at the default widths for 64x64 images. The U-Net count matches the
# PyTorch reference; RA and AE grow with the image size through their dense layers. The AE
# has its uncertainty head (two output channels).
DEFAULT_PARAMS = {"unet": 1_927_841, "ra": 6_967_937, "ae": 921_618}


def n_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def small_model(name: str, size: int = SIZE):
    cfg = load_config(overrides=[f"model.name={name}", f"data.image_size={size}", *SMALL[name]])
    return create_model(cfg.model, size, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("name", "cls"), [("unet", UNet), ("ra", ReversedAutoencoder), ("ae", Autoencoder)]
)
def test_output_shape_and_range(name, cls):
    model = small_model(name)
    assert isinstance(model, cls)
    x = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 1))
    y = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.shape == (2, SIZE, SIZE, 1)
    assert y.dtype == jnp.float32
    assert bool(jnp.all((y >= 0) & (y <= 1)))


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_default_parameter_counts(name):
    cfg = load_config(overrides=[f"model.name={name}", "data.image_size=64"])
    # Abstract initialisation: shapes only, no compute.
    model = nnx.eval_shape(lambda: create_model(cfg.model, 64, rngs=nnx.Rngs(0)))
    assert n_params(model) == DEFAULT_PARAMS[name]
    if name == "unet":
        assert 1_920_000 < n_params(model) < 1_940_000  # ~1.93M, as the PyTorch reference
    out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 64, 64, 1)))
    assert out.shape == (1, 64, 64, 1)


def test_ra_encoder_outputs_and_embeddings():
    model = small_model("ra")
    x = jnp.zeros((3, SIZE, SIZE, 1))
    mu, logvar, embeddings = nnx.eval_shape(lambda m, x: m.encoder(x), model, x)
    assert mu.shape == logvar.shape == (3, 8)
    # One embedding after each of the len(widths) poolings.
    assert [e.shape for e in embeddings] == [(3, 8, 8, 8), (3, 4, 4, 16)]
    assert nnx.eval_shape(lambda m, z: m.decoder(z), model, mu).shape == (3, SIZE, SIZE, 1)


def test_ra_has_no_encoder_decoder_skips():
    # The eval reconstruction depends on the input only through mu: D(mu(x)).
    model = small_model("ra")
    model.eval()
    x = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 1))

    @nnx.jit
    def both(model, x):
        mu, _, _ = model.encoder(x)
        return model(x), model.decoder(mu)

    y, y_mu = both(model, x)
    assert jnp.allclose(y, y_mu)


def test_ae_bottleneck():
    model = small_model("ae")
    z = nnx.eval_shape(lambda m, x: m.encode(x), model, jnp.zeros((2, SIZE, SIZE, 1)))
    assert z.shape == (2, 8)
    assert nnx.eval_shape(lambda m, z: m.decode(z), model, z).shape == (2, SIZE, SIZE, 1)


def test_unet_other_depth():
    cfg = load_config(overrides=["model.unet.widths=[8,16,16,32]", "model.unet.groups=2"])
    model = nnx.eval_shape(lambda: create_model(cfg.model, 32, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 32, 32, 1)))
    assert out.shape == (1, 32, 32, 1)


@pytest.mark.parametrize("dropped", [1, 2, 3])
def test_unet_dropped_skips_decode_the_finest_levels_without_their_skip(dropped):
    # widths (32, 64, 128, 256): decoder levels 128, 64, 32 (coarsest first). Without its skip,
    # a level's first 3x3 convolution reads c instead of 2c channels: 9 * c * c fewer weights.
    cfg = load_config(overrides=["model.name=unet", f"model.unet.dropped_skips={dropped}"])
    model = nnx.eval_shape(lambda: create_model(cfg.model, 64, rngs=nnx.Rngs(0)))
    fewer = sum(9 * c * c for c in (32, 64, 128)[:dropped])
    assert n_params(model) == DEFAULT_PARAMS["unet"] - fewer
    assert model.uses_skip == tuple(i < 3 - dropped for i in range(3))
    out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 64, 64, 1)))
    assert out.shape == (1, 64, 64, 1)


@pytest.mark.parametrize("dropped", [-1, 4])
def test_unet_dropped_skips_out_of_range_names_the_key(dropped):
    with pytest.raises(ConfigError, match=r"model\.unet\.dropped_skips"):
        load_config(overrides=[f"model.unet.dropped_skips={dropped}"])


def test_same_seed_same_parameters():
    a, b = small_model("ra"), small_model("ra")
    leaves_a = jax.tree.leaves(nnx.state(a, nnx.Param))
    leaves_b = jax.tree.leaves(nnx.state(b, nnx.Param))
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(leaves_a, leaves_b, strict=True))


def test_unknown_model_name():
    cfg = dataclasses.replace(load_config().model, name="vae")
    with pytest.raises(ValueError, match="unknown model"):
        create_model(cfg, 64, rngs=nnx.Rngs(0))


def test_batch_norm_is_flax_batch_norm_with_torch_settings():
    ours, flax_norm = (
        BatchNorm(3, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0)),
    )
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 3)) * 2.0 + 1.0
    ours.train()
    flax_norm.train()
    assert jnp.allclose(ours(x), flax_norm(x), atol=1e-5)
    for name in ("mean", "var"):
        assert jnp.allclose(getattr(ours, name)[...], getattr(flax_norm, name)[...], atol=1e-6)
    ours.eval()
    flax_norm.eval()
    assert jnp.allclose(ours(x), flax_norm(x), atol=1e-5)


def test_batch_norm_groups_equal_one_call_per_sub_batch():
    grouped, separate = BatchNorm(3, rngs=nnx.Rngs(0)), BatchNorm(3, rngs=nnx.Rngs(0))
    grouped.train()
    separate.train()
    a = jax.random.normal(jax.random.key(1), (4, 5, 5, 3))
    b = jax.random.normal(jax.random.key(2), (4, 5, 5, 3)) * 3.0 - 2.0
    together = grouped(jnp.concatenate([a, b]), groups=2)
    one_by_one = jnp.concatenate([separate(a), separate(b)])
    assert jnp.allclose(together, one_by_one, atol=1e-5)
    # The running averages saw a's statistics, then b's (the order matters with momentum).
    for name in ("mean", "var"):
        assert jnp.allclose(getattr(grouped, name)[...], getattr(separate, name)[...], atol=1e-6)
    assert not jnp.allclose(grouped(jnp.concatenate([a, b])), together, atol=1e-2)


def test_batch_norm_keeps_float32_running_averages_for_bfloat16_inputs():
    norm = BatchNorm(3, rngs=nnx.Rngs(0))
    norm.train()
    y = nnx.jit(lambda m, x: m(x))(norm, jnp.ones((2, 4, 4, 3), jnp.bfloat16))
    assert y.dtype == jnp.float32
    assert norm.mean[...].dtype == jnp.float32 and norm.var[...].dtype == jnp.float32


def test_ra_paired_passes_equal_separate_passes():
    paired, separate = small_model("ra"), small_model("ra")
    paired.train()
    separate.train()
    a = jax.random.uniform(jax.random.key(1), (3, SIZE, SIZE, 1))
    b = jax.random.uniform(jax.random.key(2), (3, SIZE, SIZE, 1))
    enc_a, enc_b = in_pairs(paired.encoder, a, b)
    for got, want in zip(
        jax.tree.leaves((enc_a, enc_b)),
        jax.tree.leaves((separate.encoder(a), separate.encoder(b))),
        strict=True,
    ):
        assert got.shape == want.shape
        assert jnp.allclose(got, want, atol=1e-5)
    assert all(
        jnp.allclose(p, q, atol=1e-6)
        for p, q in zip(
            jax.tree.leaves(nnx.state(paired, nnx.BatchStat)),
            jax.tree.leaves(nnx.state(separate, nnx.BatchStat)),
            strict=True,
        )
    )
