"""Checkpoints: full-state saves and their cadence, and the params-only inference export.

One Orbax ``CheckpointManager`` saves and restores a run's whole state at once.

Each checkpoint holds, as one composite save: ``model`` (parameters and normalisation
statistics), ``opt`` (every optimiser's state), ``data_iter`` (the grain iterator state, so a
resumed run sees the same next batch) and ``meta`` (JSON: progress, best validation loss,
the resolved config, its hash and the package version). Orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint
that reads as good; a checkpoint that is complete but unreadable (a truncated file) is moved
aside with a warning and the previous one is used.

The last ``keep`` checkpoints are kept, plus the one with the lowest validation loss.

A save that fails (disk full, an I/O error) raises :class:`CheckpointError` naming the step,
the cause and the newest complete checkpoint, which is left untouched; the half-written
temporary directory is removed when the run directory is next opened.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.errors import CheckpointError, RunError
from imgae_dx_jax.families import create_model
from imgae_dx_jax.schema import Config, TrainConfig

log = logging.getLogger(__name__)
_policies = ocp.checkpoint_managers


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
            preservation_policy=policy,
            create=True,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # the leftovers of a failed or killed save
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:
            raise CheckpointError(
                f"cannot use the checkpoint directory {self.directory}: {err}"
            ) from None
        self._pending: int | None = None

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
        self.wait()  # a failure of the previous (asynchronous) save surfaces here
        try:
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
        except Exception as err:
            raise self._write_error(step, err) from None
        self._pending = step

    def wait(self) -> None:
        """Wait until the pending save is on disk.

        Raises:
            CheckpointError: when it failed (the previous checkpoint is intact).
        """
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._write_error(step, err) from None

    def _write_error(self, step: int | None, err: BaseException) -> CheckpointError:
        text = str(err)
        os_error = re.search(r"([^:\n]+?)\s*\[os_error_code='(\d+)'", text)
        if os_error:  # tensorstore: '...: Failed to write N bytes to file: File too large [...]'
            cause = f"{os_error.group(1).strip()} (errno {os_error.group(2)})"
        elif isinstance(err, OSError) and err.strerror:
            cause = f"{err.strerror} (errno {err.errno})"
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            cause = (lines[0] if lines else type(err).__name__)[:300]
        good = [s for s in self._manager.all_steps() if s != step]
        kept = (
            f"the previous checkpoint (step {max(good)}) is intact: fix the problem (free disk "
            "space, check the drive) and rerun the same command to resume from it"
            if good
            else "no earlier checkpoint exists"
        )
        what = "a checkpoint" if step is None else f"checkpoint {step}"
        return CheckpointError(f"could not write {what} in {self.directory}: {cause}; {kept}")

    def steps(self) -> list[int]:
        """Return the steps with a complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

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

    def latest_meta(self) -> dict[str, Any] | None:
        """The metadata of the newest checkpoint whose metadata reads, or None without one.

        Cheap (no arrays are read): it tells training where it stands before the model and
        optimisers exist; :meth:`restore_latest` remains the authority on what is restored.
        """
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )
            except Exception:
                continue
            return dict(restored["meta"])
        return None

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

    def close(self, *, raise_errors: bool = True) -> None:
        """Finish pending saves and release the manager.

        Args:
            raise_errors: raise :class:`CheckpointError` when the pending save failed (pass
                ``False`` while another exception is already on its way out).
        """
        try:
            self.wait()
        except CheckpointError as err:
            if raise_errors:
                raise
            log.error("%s", err)
        finally:
            try:
                self._manager.close()
            except Exception as err:  # the failed save is reported above
                log.debug("closing the checkpoint manager: %s", err)


class SaveCadence:
    """When to save besides the ends of epochs and stages: every N steps and/or M minutes."""

    def __init__(self, train: TrainConfig) -> None:
        self.every_steps = train.checkpoint_every_steps
        self.every_minutes = train.checkpoint_every_minutes
        self.last_save = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether a save is due after optimiser step ``step``."""
        by_steps = self.every_steps and step % self.every_steps == 0
        minutes = (time.monotonic() - self.last_save) / 60
        by_time = self.every_minutes > 0 and minutes >= self.every_minutes
        return bool(by_steps or by_time)

    def saved(self) -> None:
        """Restart the time count after a save."""
        self.last_save = time.monotonic()


def export_model(run_dir: Path, config: Config, model_state: Any) -> None:
    """Write the inference export ``<run>/export/``: model state and config, no optimiser.

    The arrays are gathered to host memory (every process takes part) and process 0 writes
    them alone, so the export loads anywhere, on any number of devices. Evaluation adds the
    validation-calibrated threshold (``threshold.json``); prediction needs nothing else.
    """
    host_state = distributed.to_host(model_state)
    if not distributed.is_main_process():
        return
    export = rundir.export_dir(run_dir)
    staging = rundir.export_staging_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with distributed.local_checkpointer() as checkpointer:
        checkpointer.save(staging.absolute() / rundir.EXPORT_MODEL, host_state)
        checkpointer.wait_until_finished()
    rundir.write_config(config, staging)
    shutil.rmtree(export, ignore_errors=True)
    staging.rename(export)


def restore_model(run_dir: Path, config: Config) -> nnx.Module:
    """Load the run's inference export (``<run>/export/model``) without any training state.

    Raises:
        RunError: when the run has no export yet.
    """
    path = (rundir.export_dir(run_dir) / rundir.EXPORT_MODEL).absolute()
    if not path.is_dir():
        raise RunError(f"{run_dir} has no exported model yet (train it first)")
    abstract = nnx.eval_shape(
        lambda: create_model(config.model, config.data.image_size, rngs=nnx.Rngs(0))
    )
    graphdef, target = nnx.split(abstract)
    with distributed.local_checkpointer() as checkpointer:
        state = checkpointer.restore(path, target)
    return nnx.merge(graphdef, state)
