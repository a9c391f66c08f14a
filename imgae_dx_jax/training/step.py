"""The compiled step functions of one model family: jit with explicit shardings.

:func:`build_trainer` wraps the family's pure steps (:mod:`imgae_dx_jax.families`) once in
``jax.jit`` over the split ``(model, optimizers)`` state: the state is donated and replicated
(or FSDP-sharded), the batch is sharded along the mesh's ``data`` axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import numpy as np
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax.data.intensity import model_input
from imgae_dx_jax.families import (
    anomaly_maps,
    compiler_options,
    create_model,
    get_objective,
    optim,
)
from imgae_dx_jax.models import compute_dtype
from imgae_dx_jax.runtime import training_precision
from imgae_dx_jax.schema import Config


@dataclass
class Trainer:
    """The compiled step functions of one model family and their functional state.

    ``train_step(state, images, step)`` and ``eval_step(state, images, index)`` take global
    uint8 batches (:func:`distributed.global_batch`), turned into the model's float input on
    the device (:func:`~imgae_dx_jax.data.intensity.model_input`); their random keys are
    derived inside the steps from ``train.seed`` and the integer, so no key array crosses
    hosts.
    """

    graphdef: nnx.GraphDef[Any]
    state: Any
    sharding: Any
    train_step: Callable[[Any, jax.Array, np.uint32], tuple[Any, dict[str, jax.Array]]]
    eval_step: Callable[[Any, jax.Array, np.uint32], dict[str, jax.Array]]
    sample_step: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    """(state, images) -> (inputs, reconstructions, anomaly maps), replicated."""
    learning_rate: Callable[[int], float]
    """step -> the learning rate of that optimiser step (for logging)."""
    precision: str
    """``train.precision`` resolved on the mesh's devices: ``bf16`` or ``float32``."""

    def model_and_optimizers(self) -> tuple[nnx.Module, dict[str, nnx.Optimizer]]:
        """Rebuild the nnx objects from the current state."""
        model, optimizers = nnx.merge(self.graphdef, self.state)
        return model, optimizers

    def parts(self) -> tuple[Any, Any]:
        """The (model state, optimiser state) pair that checkpoints save."""
        model, optimizers = self.model_and_optimizers()
        return nnx.state(model), nnx.state(optimizers)

    def load(self, model_state: Any, opt_state: Any) -> None:
        """Replace the state with restored arrays (placed with the trainer's shardings)."""
        model, optimizers = self.model_and_optimizers()
        nnx.update(model, model_state)
        nnx.update(optimizers, opt_state)
        self.state = jax.device_put(nnx.state((model, optimizers)), self.sharding)


def build_trainer(config: Config, mesh: jax.sharding.Mesh, total_steps: int) -> Trainer:
    """Create the model and optimisers and jit their train and validation steps.

    The steps are pure functions of (state, batch, step): the state is donated and replicated
    (or FSDP-sharded with ``train.shard_params``), the batch is sharded along ``data``.
    ``total_steps`` is the run's step budget (see
    :func:`~imgae_dx_jax.training.loop.step_budget`), the length of a cosine LR schedule.
    With ``train.precision: bf16`` (or ``auto`` on devices with fast bfloat16) the model
    computes in bfloat16 (it casts its input batch on entry) while parameters, optimiser
    state, outputs and losses stay float32.
    """
    precision = training_precision(config.train.precision, list(mesh.devices.flat))
    dtype = compute_dtype(precision)
    objective = get_objective(config.model, config.train, total_steps)

    def create() -> tuple[nnx.Module, dict[str, nnx.Optimizer]]:
        model = create_model(
            config.model, config.data.image_size, dtype=dtype, rngs=nnx.Rngs(config.train.seed)
        )
        return model, objective.create_optimizers(model)

    # The state is created by one compiled computation, directly with its shardings: created
    # eagerly, every initialiser operation would be compiled on its own, and JAX keeps each
    # of those executables (about 70 MB of host memory for the AE, more for the RA). The
    # values are the same bits.
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    sharding = distributed.state_shardings(abstract, mesh, config.train.shard_params)
    state = jax.jit(lambda: nnx.state(create()), out_shardings=sharding)()
    data = distributed.batch_sharding(mesh)
    repl = distributed.replicated(mesh)
    train_key, val_key = jax.random.split(jax.random.key(config.train.seed))
    intensity = config.data.intensity
    # The family's XLA options for its steps on this platform (on the CPU: how much host
    # memory their compilation takes); the state's creation above compiles with the defaults.
    jit = partial(
        jax.jit, compiler_options=compiler_options(config.model, mesh.devices.flat[0].platform)
    )

    @partial(
        jit,
        donate_argnums=0,
        in_shardings=(sharding, data, None),
        out_shardings=(sharding, repl),
    )
    def train_step(state: Any, images: jax.Array, step: jax.Array) -> tuple[Any, Any]:
        model, optimizers = nnx.merge(graphdef, state)
        key = jax.random.fold_in(train_key, step)
        metrics = objective.train_step(model, optimizers, model_input(images, intensity), key)
        return nnx.state((model, optimizers)), metrics

    @partial(jit, in_shardings=(sharding, data, None), out_shardings=repl)
    def eval_step(state: Any, images: jax.Array, index: jax.Array) -> Any:
        model, _ = nnx.merge(graphdef, state)
        key = jax.random.fold_in(val_key, index)
        return objective.eval_losses(model, model_input(images, intensity), key)

    @partial(jit, in_shardings=(sharding, data), out_shardings=repl)
    def sample_step(state: Any, images: jax.Array) -> Any:
        model, _ = nnx.merge(graphdef, state)
        inputs = model_input(images, intensity)
        reconstructions, maps = anomaly_maps(model, inputs, config.model)
        return inputs, reconstructions, maps

    base_lr = config.model.family.learning_rate
    return Trainer(
        graphdef,
        state,
        sharding,
        train_step,
        eval_step,
        sample_step,
        partial(optim.learning_rate_at, config.train, base_lr, total_steps),
        precision,
    )
