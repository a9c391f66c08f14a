"""What a model family is: the roles the family table maps each family name to.

A family is one small module (:mod:`~imgae_dx_jax.families.unet`,
:mod:`~imgae_dx_jax.families.ra`, :mod:`~imgae_dx_jax.families.ae`) that defines one
:class:`Family` from pure functions of the family's own config section
(``config.model.<name>``). The step functions are pure-traceable (no Python side state, no
host synchronisation, no ``nnx.jit``), so a caller can wrap them in its own ``jax.jit`` over
``nnx.split((model, optimizers))``; they mutate the merged model and optimisers in place,
nnx style, and set train mode themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import optax
from flax import nnx

Metrics = dict[str, jax.Array]
"""Scalar losses and terms of one step, by name (always with ``"loss"``)."""
Optimizers = dict[str, nnx.Optimizer]
"""A family's optimisers, by name (``{"model": ...}`` or ``{"encoder": ..., "decoder": ...}``)."""
MakeTransform = Callable[[float], optax.GradientTransformation]
"""learning rate -> the configured optax transformation
(:func:`~imgae_dx_jax.families.optim.transform`)."""

LOW_MEMORY_CPU: Mapping[str, Any] = {"xla_cpu_use_fusion_emitters": False}
"""XLA:CPU options that compile a step with XLA's older loop emitters instead of its MLIR
fusion emitters: the same computation, compiled in ~250 MB less host memory for the AE and
~200 MB less for the U-Net at 64 px (the compilation is the peak of a CPU run's memory), at
a step time within 4% (the RA's step is 10% slower with them, so it keeps the default; see
docs/training.md, "Host memory")."""


@dataclass(frozen=True)
class Family:
    """The roles of one model family; each takes the family's config section first.

    Attributes:
        build: (cfg, image_size, fast, dtype, rngs) -> the freshly initialised model, in
            training mode (``fast``: :func:`imgae_dx_jax.models.use_fast_path`; ``dtype``: the
            computation dtype, see :func:`imgae_dx_jax.models.compute_dtype`).
        optimizers: (cfg, model, make_transform) -> the named optimisers, each built with
            ``make_transform(cfg.learning_rate)`` (:data:`MakeTransform`).
        train_step: (cfg, model, optimizers, batch, key) -> metrics including ``"loss"``;
            one optimisation step in train mode, mutating model and optimisers in place.
        eval_losses: (cfg, model, batch, key) -> metrics including ``"loss"``, the
            validation loss used to pick the best checkpoint; eval mode, no mutation.
        anomaly_map: (cfg, eval-mode model, batch [B, H, W, 1]) -> ``(x_hat [B, H, W, 1],
            map [B, H, W])``, deterministic.
        cpu_compiler_options: XLA options with which the family's steps are compiled on the
            CPU backend (e.g. :data:`LOW_MEMORY_CPU`); empty: XLA's defaults.
    """

    build: Callable[[Any, int, bool, Any, nnx.Rngs], nnx.Module]
    optimizers: Callable[[Any, nnx.Module, MakeTransform], Optimizers]
    train_step: Callable[[Any, nnx.Module, Optimizers, jax.Array, jax.Array], Metrics]
    eval_losses: Callable[[Any, nnx.Module, jax.Array, jax.Array], Metrics]
    anomaly_map: Callable[[Any, nnx.Module, jax.Array], tuple[jax.Array, jax.Array]]
    cpu_compiler_options: Mapping[str, Any] = field(default_factory=dict)
