"""The optimiser every family steps with: Adam, AdamW or AMSGrad, weight decay, LR schedule.

One place for ``train.optimizer``, ``train.weight_decay`` and ``train.lr_schedule``; each
family only supplies its own ``learning_rate`` (see :func:`transform`). Kascenas et al. train
their denoising U-Net with Adam(amsgrad=True, weight_decay=1e-5) under a cosine schedule.
"""

from __future__ import annotations

import optax

from imgae_dx_jax.schema import TrainConfig


def schedule(train: TrainConfig, learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
    """``learning_rate`` as ``train.lr_schedule`` varies it over ``total_steps`` steps.

    ``constant`` returns the float itself; ``cosine`` decays it to 0 at ``total_steps`` (the
    run's step budget, at least 1) and keeps it there.
    """
    if train.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    return learning_rate


def learning_rate_at(
    train: TrainConfig, learning_rate: float, total_steps: int, step: int
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) under :func:`schedule`."""
    lr = schedule(train, learning_rate, total_steps)
    return float(lr(step)) if callable(lr) else float(lr)


def transform(
    train: TrainConfig, total_steps: int, learning_rate: float
) -> optax.GradientTransformation:
    """The optax transformation of ``train.optimizer`` at ``learning_rate``.

    ``adam`` and ``amsgrad`` add ``train.weight_decay * params`` to the gradient (L2, as
    PyTorch's ``Adam(weight_decay=...)``); ``adamw`` decays the weights decoupled from the
    gradient. With weight decay 0 and a constant schedule, ``adam`` is plain ``optax.adam``.
    """
    lr = schedule(train, learning_rate, total_steps)
    if train.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=train.weight_decay)
    tx = optax.amsgrad(lr) if train.optimizer == "amsgrad" else optax.adam(lr)
    if train.weight_decay:
        return optax.chain(optax.add_decayed_weights(train.weight_decay), tx)
    return tx
