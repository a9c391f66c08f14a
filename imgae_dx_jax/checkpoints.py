"""One Orbax ``CheckpointManager`` that saves and restores a run's whole state at once.

Each checkpoint holds, as one composite save: ``model`` (parameters and normalisation
statistics), ``opt`` (every optimiser's state), ``data_iter`` (the grain iterator state, so a
resumed run sees the same next batch) and ``meta`` (JSON: progress, best validation loss,
the resolved config, its hash and the package version). Orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint
that reads as good; a checkpoint that is complete but unreadable (a truncated file) is moved
aside with a warning and the previous one is used.

The last ``keep`` checkpoints are kept, plus the one with the lowest validation loss.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
_policies = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be read."""


class Checkpoints:
    """Checkpoints of one run directory (``<run>/checkpoints/<step>/``)."""

    def __init__(self, directory: Path, *, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        policy = _policies.AnyPreservationPolicy(
            [
                _policies.LatestN(n=keep),
                _policies.BestN(
                    get_metric_fn=lambda metrics: metrics["val_loss"],
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, create=True, enable_async_checkpointing=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(
        self,
        step: int,
        model: Any,
        opt: Any,
        data_iter: grain.DatasetIterator,
        meta: dict[str, Any],
        val_loss: float | None = None,
    ) -> None:
        """Start an asynchronous save of everything at ``step``.

        The arrays are copied to host memory before this returns, so training may go on (and
        donate its buffers) while the files are written. A second save at the same step is
        skipped. :meth:`close` waits for pending writes.
        """
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model),
                opt=ocp.args.StandardSave(opt),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=None if val_loss is None else {"val_loss": val_loss},
            force=True,
        )

    def steps(self) -> list[int]:
        """Return the steps with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def read_meta(self, step: int) -> dict[str, Any]:
        """Return the JSON metadata of one checkpoint."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(self, model: Any, opt: Any) -> tuple[int, dict[str, Any]]:
        """Restore the newest readable checkpoint shaped like the given targets.

        ``model`` and ``opt`` are nnx states giving the structure, shapes and shardings.
        Unreadable newer checkpoints are moved aside to ``<run>/checkpoints/corrupt-<step>``
        with a warning.

        Returns:
            The step and a dict with ``model``, ``opt`` and ``meta``.

        Raises:
            CheckpointError: when no checkpoint can be read.
        """
        for step in reversed(self.steps()):
            items = ocp.args.Composite(
                model=ocp.args.StandardRestore(model),
                opt=ocp.args.StandardRestore(opt),
                meta=ocp.args.JsonRestore(),
            )
            try:
                restored = self._manager.restore(step, args=items)
            except Exception as err:
                self._set_aside(step, err)
                continue
            return step, {name: restored[name] for name in ("model", "opt", "meta")}
        raise CheckpointError(f"no readable checkpoint in {self.directory}")

    def restore_iterator(self, step: int, data_iter: grain.DatasetIterator) -> None:
        """Restore the grain iterator state of checkpoint ``step`` into ``data_iter``."""
        self._manager.restore(
            step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(data_iter))
        )

    def _set_aside(self, step: int, err: Exception) -> None:
        target = self.directory / f"corrupt-{step}"
        log.warning(
            "checkpoint %d is unreadable (%s: %s); moved to %s, using the previous one",
            step,
            type(err).__name__,
            str(err).splitlines()[0][:200],
            target,
        )
        shutil.move(str(self.directory / str(step)), target)
        self._manager.reload()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
