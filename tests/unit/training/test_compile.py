"""The jitted train step compiles once, and the state is created in one compilation."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax import monitoring

from imgae_dx_jax import distributed
from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import compiler_options, create_model, get_objective
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
    mesh = distributed.make_mesh()
    # A build of other layer shapes first compiles the small eager operations that every
    # build shares (the step keys), once per process; what the second build compiles is its
    # own (an eager initialiser of its shapes would be compiled here).
    other = load_config(
        overrides=[
            f"model.name={name}",
            f"data.image_size={SIZE}",
            *SMALL[name],
            f"model.{name}.widths=[4,12]",
        ]
    )
    build_trainer(other, mesh, total_steps=10)
    before = compile_count()
    trainer = build_trainer(config, mesh, total_steps=10)
    assert compile_count() - before <= 2  # the state, and at most a device placement

    model = create_model(config.model, SIZE, dtype=None, rngs=nnx.Rngs(config.train.seed))
    optimizers = get_objective(config.model, config.train, 10).create_optimizers(model)
    eager = jax.tree.leaves(nnx.state((model, optimizers)))
    built = jax.tree.leaves(trainer.state)
    assert len(built) == len(eager)
    for a, b in zip(built, eager, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("model", ["ra", "ae"])
def test_tracer_error_messages_do_not_grow_with_the_batch_norm_layers(model, monkeypatch):
    """Tracing a step asks tracers for their ``sharding`` a fixed number of times.

    Asking makes the tracer build an error message by searching the whole computation traced
    so far (``_origin_msg``). Flax's ``stat[...] = x`` asks for every BatchNorm running
    average, which made tracing quadratic in the step's size (26 s for the RA step at 64 px);
    what is left (the optimisers' step counters) does not depend on the depth.
    """
    from jax._src.interpreters import partial_eval

    original = partial_eval.DynamicJaxprTracer._origin_msg

    def messages(widths: str) -> int:
        config = load_config(
            overrides=[
                f"model.name={model}",
                "data.image_size=16",
                "train.batch_size=2",
                f"model.{model}.widths={widths}",
                "model.ra.zdim=4",
                "model.ae.latent_dim=4",
            ]
        )
        trainer = build_trainer(config, distributed.make_mesh(), total_steps=1)
        calls = []

        def counted(self):
            calls.append(1)
            return original(self)

        with monkeypatch.context() as patch:
            patch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", counted)
            trainer.train_step.trace(trainer.state, np.zeros((2, 16, 16, 1), np.uint8), 0)
        return len(calls)

    assert messages("[4,8]") == messages("[4,8,8,8]")


COMPILE_PEAK = """
import sys
import jax, numpy as np
from imgae_dx_jax import distributed
from imgae_dx_jax.config import load_config
from imgae_dx_jax.memory import peak_rss_mb, release_memory, rss_mb
from imgae_dx_jax.training.step import build_trainer

mesh = distributed.make_mesh()
trainer = build_trainer(load_config(overrides=sys.argv[1:]), mesh, total_steps=100)
images = jax.device_put(np.zeros((16, 64, 64, 1), np.uint8), distributed.batch_sharding(mesh))
lowered = trainer.train_step.trace(trainer.state, images, np.uint32(0)).lower()
release_memory()
before = rss_mb()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) restarts from the current RSS
lowered.compile()
print(int(peak_rss_mb() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.skipif(
    compiler_options(load_config(overrides=["model.name=ae"]).model, "cpu") is None,
    reason="this jaxlib has no older loop emitters (jax 0.12 dropped them): XLA's defaults",
)
def test_the_ae_step_compiles_in_little_host_memory():
    """The README's model compiles its train step in ~65 MB instead of ~350 MB on the CPU.

    The compilation is the peak of a CPU run's host memory; the AE family compiles its steps
    with XLA's older loop emitters (``families.base.LOW_MEMORY_CPU``). A fresh process, so
    that no earlier compilation or persistent cache hides the peak.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_PEAK, "model.name=ae", "data.image_size=64"],
        capture_output=True,
        text=True,
        env={**env, "JAX_PLATFORMS": "cpu"},
        check=True,
    )
    assert int(result.stdout.split()[-1]) < 150
