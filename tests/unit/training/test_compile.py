"""The jitted train step compiles once: no recompilation after the first step."""

import jax
import numpy as np
import pytest
from jax import monitoring

from imgae_dx_jax import distributed
from imgae_dx_jax.config import load_config
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
