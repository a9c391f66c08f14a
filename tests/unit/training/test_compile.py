"""The jitted train step compiles once, and the state is created in one compilation."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax import monitoring

from imgae_dx_jax import distributed
from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import create_model, get_objective
from imgae_dx_jax.training.step import build_trainer

SIZE = 32
SMALL = {
    "unet": ["model.unet.widths=[8,16]", "model.unet.groups=4"],
    "ae": ["model.ae.widths=[8,16]", "model.ae.latent_dim=8"],
}
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compile_count():
    """Number of XLA backend compilations since the fixture started."""
    events = []
    active = [True]

    def listener(event, duration, **kwargs):
        if active[0] and event == BACKEND_COMPILE:
            events.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    yield lambda: len(events)
    active[0] = False


# The RA step compiles for ~15 s even when tiny; its step has the same structure (state,
# uint8 batch, uint32 step), so unet and ae cover the recompilation risk.
@pytest.mark.parametrize(
    ("name", "fast_path"), [("unet", "always"), ("unet", "never"), ("ae", "always")]
)
def test_no_recompilation_after_first_step(name, fast_path, compile_count):
    config = load_config(
        overrides=[
            f"model.name={name}",
            f"data.image_size={SIZE}",
            "train.batch_size=4",
            f"model.fast_path={fast_path}",
            *SMALL[name],
        ]
    )
    mesh = distributed.make_mesh()
    trainer = build_trainer(config, mesh, total_steps=1)
    rng = np.random.default_rng(0)

    def step(i):
        images = rng.integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
        trainer.state, metrics = trainer.train_step(trainer.state, images, np.uint32(i))
        return jax.block_until_ready(metrics)

    step(0)
    after_first = compile_count()
    assert after_first >= 1
    for i in range(1, 4):
        metrics = step(i)
    assert compile_count() == after_first, "the train step recompiled after the first step"
    assert trainer.train_step._cache_size() == 1
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name", ["unet", "ae"])
def test_state_is_created_in_one_compilation_with_the_eager_values(name, compile_count):
    """Built in one compiled computation, the state has the bits eager creation gives."""
    config = load_config(overrides=[f"model.name={name}", f"data.image_size={SIZE}", *SMALL[name]])
    before = compile_count()
    trainer = build_trainer(config, distributed.make_mesh(), total_steps=10)
    assert compile_count() - before <= 2  # the state, and at most a device placement

    model = create_model(config.model, SIZE, dtype=None, rngs=nnx.Rngs(config.train.seed))
    optimizers = get_objective(config.model, config.train, 10).create_optimizers(model)
    eager = jax.tree.leaves(nnx.state((model, optimizers)))
    built = jax.tree.leaves(trainer.state)
    assert len(built) == len(eager)
    for a, b in zip(built, eager, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
