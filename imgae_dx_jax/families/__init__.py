"""The model families, in one table: name -> :class:`~imgae_dx_jax.families.base.Family`.

Every caller reaches a family's roles through this table (the model it builds, its
optimisers, train step, validation losses and anomaly map); nothing else switches on the
family name. A new family is one module defining its ``FAMILY`` plus one entry in
:data:`FAMILIES`, with its config section in :mod:`imgae_dx_jax.schema` (a dataclass, a field
of ``ModelConfig`` and its name in ``schema.MODELS``, which the config is validated against;
a unit test checks that ``MODELS`` and :data:`FAMILIES` agree) and its defaults in
``configs/default.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.families import ae, optim, ra, unet
from imgae_dx_jax.families.base import Family, Metrics, Optimizers
from imgae_dx_jax.families.losses import eval_view
from imgae_dx_jax.models import use_fast_path
from imgae_dx_jax.schema import ModelConfig, TrainConfig

FAMILIES: dict[str, Family] = {"unet": unet.FAMILY, "ra": ra.FAMILY, "ae": ae.FAMILY}
"""Every model family by its ``model.name``."""


def get_family(name: str) -> Family:
    """The table entry of ``name``.

    Raises:
        ValueError: for an unknown family name.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


@dataclass(frozen=True)
class Objective:
    """How the configured family is trained and validated, its hyper-parameters bound.

    Attributes:
        create_optimizers: model -> named optimisers (``{"model": ...}`` for unet and ae,
            ``{"encoder": ..., "decoder": ...}`` for ra).
        train_step: (model, optimizers, batch, key) -> scalar metrics including ``"loss"``;
            one optimisation step in train mode, mutating model and optimisers in place.
        eval_losses: (model, batch, key) -> scalar metrics including ``"loss"``, the
            validation loss used to pick the best checkpoint; eval mode, no mutation.
    """

    create_optimizers: Callable[[nnx.Module], Optimizers]
    train_step: Callable[[nnx.Module, Optimizers, jax.Array, jax.Array], Metrics]
    eval_losses: Callable[[nnx.Module, jax.Array, jax.Array], Metrics]


def get_objective(cfg: ModelConfig, train: TrainConfig, total_steps: int) -> Objective:
    """Return the :class:`Objective` of the family ``cfg.name`` with its section bound.

    Args:
        cfg: the model configuration.
        train: the training configuration (its optimiser, weight decay and LR schedule, see
            :mod:`~imgae_dx_jax.families.optim`).
        total_steps: the run's step budget, over which a cosine schedule decays to 0.

    Raises:
        ValueError: for an unknown family name.
    """
    family = get_family(cfg.name)
    section = cfg.family
    make_transform = partial(optim.transform, train, total_steps)

    def create_optimizers(model: nnx.Module) -> Optimizers:
        return family.optimizers(section, model, make_transform)

    return Objective(
        create_optimizers=create_optimizers,
        train_step=partial(family.train_step, section),
        eval_losses=partial(family.eval_losses, section),
    )


def create_model(
    cfg: ModelConfig, image_size: int, *, dtype: Any = None, rngs: nnx.Rngs
) -> nnx.Module:
    """Build the model family ``cfg.name`` for square images.

    Args:
        cfg: the model configuration; only the section of the selected family is used.
        image_size: side of the square one-channel input images in pixels.
        dtype: computation dtype of the convolutions and linear layers (``jnp.bfloat16`` for
            mixed precision, see :func:`~imgae_dx_jax.models.compute_dtype`); ``None`` (the
            default) computes in the parameters' dtype, float32. Parameters are float32
            whatever it is, and so are the model's outputs.
        rngs: parameter initialisation keys.

    Returns:
        The freshly initialised model, in training mode.

    Raises:
        ValueError: for an unknown family name.
    """
    family = get_family(cfg.name)
    return family.build(cfg.family, image_size, use_fast_path(cfg.fast_path), dtype, rngs)


def compiler_options(cfg: ModelConfig, platform: str) -> dict[str, Any] | None:
    """The XLA options with which the steps of the family ``cfg.name`` compile on ``platform``.

    Args:
        cfg: the model configuration.
        platform: the devices' platform (``jax.Device.platform``: ``cpu``, ``gpu``, ``tpu``).

    Returns:
        The family's :attr:`~imgae_dx_jax.families.base.Family.cpu_compiler_options` that the
        installed XLA knows, on the CPU, for ``jax.jit(..., compiler_options=...)``; None
        (XLA's defaults) elsewhere or when it knows none of them.
    """
    if platform != "cpu":
        return None
    options = get_family(cfg.name).cpu_compiler_options
    return {name: value for name, value in options.items() if _cpu_accepts(name, value)} or None


@cache
def _cpu_accepts(name: str, value: Any) -> bool:
    """Whether the installed XLA:CPU knows the compile option ``name``.

    Options come and go between jaxlib releases: jax 0.12 dropped
    ``xla_cpu_use_fusion_emitters``.
    """
    with jax.default_device(jax.devices("cpu")[0]):
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(0.0).compile()
        except jax.errors.JaxRuntimeError:
            return False
    return True


def anomaly_maps(
    model: nnx.Module, batch: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Reconstruct ``batch`` [B, H, W, 1] and return ``(x_hat [B, H, W, 1], map [B, H, W])``.

    The map is float32 and non-negative. The model is used through an eval-mode view, so its
    state and mode are left untouched.
    """
    x_hat, amap = get_family(cfg.name).anomaly_map(cfg.family, eval_view(model), batch)
    return x_hat, amap.astype(jnp.float32)
