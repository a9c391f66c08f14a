"""``train.precision: bf16``: bfloat16 compute, float32 parameters, optimiser state and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax.cli import overrides_from_args, train_parser
from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.families import create_model, get_objective
from imgae_dx_jax.models import compute_dtype
from imgae_dx_jax.run_dir import check_compatible, identity_settings
from imgae_dx_jax.training.step import build_trainer

SIZE = 32
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
    "ra": ["model.ra.widths=[8,16]", "model.ra.zdim=8"],
}
# One level: the train steps compile faster (still every layer kind but U-Net's up path).
SHALLOW = {
    "unet": ["model.unet.widths=[8]", "model.unet.groups=4"],
    "ae": ["model.ae.widths=[8]", "model.ae.latent_dim=8"],
    "ra": ["model.ra.widths=[8]", "model.ra.zdim=8"],
}
BATCH = 5  # differs from every kernel dimension, to tell activations from kernels in a jaxpr


def tiny_config(name: str, precision: str = "float32", fast_path: str = "auto", sizes=SMALL):
    return load_config(
        overrides=[
            f"model.name={name}",
            f"data.image_size={SIZE}",
            "train.batch_size=4",
            f"train.precision={precision}",
            f"model.fast_path={fast_path}",
            *sizes[name],
        ]
    )


def floating_dtypes(tree) -> set:
    return {
        leaf.dtype
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def one_step(name: str, precision: str):
    trainer = build_trainer(
        tiny_config(name, precision, sizes=SHALLOW), distributed.make_mesh(), total_steps=1
    )
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    trainer.state, metrics = trainer.train_step(trainer.state, images, np.uint32(0))
    return trainer, jax.block_until_ready(metrics)


# unet and ae: a float32 and a bf16 step each. The RA step compiles much longer, so RA runs
# the bf16 step only and compares its deterministic validation loss instead.
@pytest.mark.parametrize("name", ["unet", "ae"])
def test_bf16_step_float32_state_and_close_loss(name):
    trainer, metrics = one_step(name, "bf16")
    assert trainer.precision == "bf16"
    assert floating_dtypes(trainer.state) == {jnp.dtype(jnp.float32)}
    assert all(v.dtype == jnp.float32 for v in metrics.values())
    loss = float(metrics["loss"])
    assert np.isfinite(loss)
    float32, reference = one_step(name, "float32")
    assert float32.precision == "float32"
    np.testing.assert_allclose(loss, float(reference["loss"]), rtol=5e-2)


def test_ra_bf16_step_float32_state_and_close_eval_loss():
    trainer, metrics = one_step("ra", "bf16")
    model, optimizers = trainer.model_and_optimizers()
    assert floating_dtypes(nnx.state(model)) == {jnp.dtype(jnp.float32)}
    assert floating_dtypes(nnx.state(optimizers)) == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(float(v)) and v.dtype == jnp.float32 for v in metrics.values())
    # Same parameters, float32 vs bfloat16 compute: close validation losses.
    cfg = tiny_config("ra", sizes=SHALLOW)
    reference = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    nnx.update(reference, nnx.state(model))
    batch = jnp.asarray(np.random.default_rng(1).uniform(size=(4, SIZE, SIZE, 1)), jnp.float32)
    key = jax.random.key(0)
    eval_losses = get_objective(cfg.model, cfg.train, 1).eval_losses
    bf16 = eval_losses(model, batch, key)
    f32 = eval_losses(reference, batch, key)
    for k in f32:
        assert bf16[k].dtype == jnp.float32
        np.testing.assert_allclose(float(bf16[k]), float(f32[k]), rtol=5e-2, atol=1e-3)


def conv_output_dtypes(model: nnx.Module, x: jax.Array) -> tuple[set, set, object]:
    """Output dtypes of the convolutions and matrix multiplies in the forward pass's jaxpr."""
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    convs, dots = set(), set()
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            convs.add(eqn.outvars[0].aval.dtype)
        out = eqn.outvars[0].aval
        if eqn.primitive.name == "dot_general" and BATCH in out.shape:
            dots.add(out.dtype)  # activations; not the fast path's sums of kernel taps
    return convs, dots, jaxpr.out_avals[0].dtype


@pytest.mark.parametrize("fast_path", ["always", "never"])
@pytest.mark.parametrize("name", ["unet", "ae", "ra"])
def test_bf16_model_computes_in_bf16_and_returns_float32(name, fast_path):
    cfg = tiny_config(name, fast_path=fast_path)
    x = jnp.full((BATCH, SIZE, SIZE, 1), 0.5, jnp.float32)
    model = create_model(cfg.model, SIZE, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert floating_dtypes(nnx.state(model)) == {jnp.dtype(jnp.float32)}
    convs, dots, out = conv_output_dtypes(model, x)
    assert convs == {jnp.dtype(jnp.bfloat16)}
    assert dots <= {jnp.dtype(jnp.bfloat16)}
    assert convs | dots  # there is bf16 work to check
    assert out == jnp.float32
    default = create_model(cfg.model, SIZE, rngs=nnx.Rngs(0))
    convs, dots, out = conv_output_dtypes(default, x)
    assert convs == {jnp.dtype(jnp.float32)} and dots <= {jnp.dtype(jnp.float32)}
    assert out == jnp.float32


def test_ra_encoder_outputs_are_float32():
    cfg = tiny_config("ra")
    model = create_model(cfg.model, SIZE, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model.encoder)
    x = jax.ShapeDtypeStruct((2, SIZE, SIZE, 1), jnp.float32)
    mu, logvar, embeddings = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert {a.dtype for a in (mu, logvar, *embeddings)} == {jnp.dtype(jnp.float32)}


def test_precision_setting_and_flag():
    assert load_config().train.precision == "auto"  # resolved in test_runtime.py
    assert compute_dtype("float32") == jnp.float32
    assert compute_dtype("bf16") == jnp.bfloat16
    with pytest.raises(ConfigError, match=r"train\.precision.*'fp16'.*auto, float32, bf16"):
        load_config(overrides=["train.precision=fp16"])
    args = train_parser().parse_args(["--precision", "bf16"])
    assert "train.precision=bf16" in overrides_from_args(args)
    assert load_config(overrides=overrides_from_args(args)).train.precision == "bf16"
    assert "train.precision" not in overrides_from_args(train_parser().parse_args([]))
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--precision", "fp16"])
    assert load_config("colab_gpu").train.precision == "auto"  # a T4 gets float32
    assert load_config("colab_tpu").train.precision == "bf16"


def test_precision_may_change_on_resume():
    saved, new = tiny_config("unet"), tiny_config("unet", "bf16")
    assert identity_settings(saved) == identity_settings(new)
    check_compatible(saved, new, trains=True)  # no RunDirError
