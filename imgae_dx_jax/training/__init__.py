"""Training: compiled steps, the stage/epoch/step loop, and the wiring of a run.

:mod:`~imgae_dx_jax.training.step` (jit and shardings), :mod:`~imgae_dx_jax.training.loop`
and :func:`train` (:mod:`~imgae_dx_jax.training.train`), which wires them.
"""

from __future__ import annotations

from imgae_dx_jax.training.train import TrainResult, train

__all__ = ["TrainResult", "train"]
