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
temporary directory is removed when the run directory is next opened (see
:func:`remove_unfinished_saves`: even by the same process, while the failed save's last writes
are still landing).

With a staging directory (``train.local_checkpoint_dir``, for a run directory on Google Drive
or another lazily synced mount), Orbax writes to local disk and a background thread copies
each finished checkpoint into ``<run>/checkpoints``: the files go to ``tmp-mirror-<step>``,
are flushed (fsync), and the directory is renamed to ``<step>`` in one step; old ones leave
the same way, renamed away before they are deleted. Whenever the process dies, the run
directory holds only complete checkpoints, and it is the reference: opening it deletes the
``tmp-mirror-*`` leftovers and makes the staging directory a copy of it, so a new machine (an
empty staging directory) resumes from the run directory alone. :meth:`Checkpoints.wait` and
:meth:`Checkpoints.close` return once the copy is done.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Collection
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
    """Checkpoints of one run directory (``<run>/checkpoints/<step>/``).

    Args:
        directory: ``<run>/checkpoints``.
        keep: how many of the newest checkpoints are kept (plus the best one).
        staging: a local directory that Orbax writes to; each finished checkpoint is then
            copied to ``directory`` (see the module's description). None: Orbax writes to
            ``directory``.
    """

    def __init__(self, directory: Path, *, keep: int = 3, staging: Path | None = None) -> None:
        self.directory = Path(directory).absolute()
        self._mirror = None if staging is None else Mirror(Path(staging).absolute(), self.directory)
        self._mirroring: threading.Thread | None = None
        self._mirror_error: CheckpointError | None = None
        if self._mirror is not None:
            try:
                self._mirror.pull()
            except OSError as err:
                raise CheckpointError(
                    f"cannot copy the checkpoints of {self.directory} to {staging}: {err}"
                ) from None
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
            cleanup_tmp_directories=False,  # remove_unfinished_saves, below
        )
        written = self.directory if self._mirror is None else self._mirror.local
        try:
            if distributed.is_main_process():
                remove_unfinished_saves(written)
            self._manager = ocp.CheckpointManager(written, options=options)
        except OSError as err:
            raise CheckpointError(f"cannot use the checkpoint directory {written}: {err}") from None
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
        skipped. :meth:`close` waits for pending writes. With a staging directory, a thread
        copies the checkpoint to the run directory once it is written.
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
        if self._mirror is not None:
            self._mirroring = threading.Thread(
                target=self._copy_when_written, args=(step,), name=f"mirror checkpoint {step}"
            )
            self._mirroring.start()

    def wait(self) -> None:
        """Wait until the pending save is on disk (and copied to the run directory).

        Raises:
            CheckpointError: when it failed (the previous checkpoint is intact).
        """
        step, self._pending = self._pending, None
        if self._mirroring is not None:
            self._mirroring.join()
            self._mirroring = None
        error, self._mirror_error = self._mirror_error, None
        if error is not None:
            raise error
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._write_error(step, err) from None

    def _copy_when_written(self, step: int) -> None:
        """The mirroring thread: wait for Orbax to finish ``step``, then copy it."""
        assert self._mirror is not None
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            self._mirror_error = self._write_error(step, err)
            return
        try:
            self._mirror.push(step, keep=self._manager.all_steps())
        except Exception as err:  # any failure must reach wait(), not die with the thread
            self._mirror_error = CheckpointError(
                f"checkpoint {step} is written in {self._mirror.local} but could not be copied "
                f"to {self.directory}: {err}; the checkpoints already there are intact"
            )

    def _write_error(self, step: int | None, err: BaseException) -> CheckpointError:
        cause = write_error_cause(err)
        good = [s for s in self._manager.all_steps() if s != step]
        kept = (
            f"the previous checkpoint (step {max(good)}) is intact: fix the problem (free disk "
            "space, check the drive) and rerun the same command to resume from it"
            if good
            else "no earlier checkpoint exists"
        )
        what = "a checkpoint" if step is None else f"checkpoint {step}"
        where = self._manager.directory
        return CheckpointError(f"could not write {what} in {where}: {cause}; {kept}")

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
        shutil.move(str(self._manager.directory / str(step)), self._manager.directory / target.name)
        if self._mirror is not None:
            self._mirror.set_aside(step, target)
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


def remove_unfinished_saves(directory: Path, *, patience_s: float = 30.0) -> None:
    """Delete the temporary directories of the saves in ``directory`` that never finished.

    A save that failed in this process (a notebook cell rerun after a full disk) may still
    have writes in flight: Orbax stops waiting for a save at its first failed write, and the
    others finish in tensorstore's threads, adding files to the directory being deleted. Such
    a directory is deleted again, for up to ``patience_s`` seconds.

    Raises:
        OSError: when a directory still cannot be deleted after ``patience_s`` seconds.
    """
    if not directory.is_dir():
        return
    deadline = time.monotonic() + patience_s
    for name in ocp.path.step.tmp_checkpoints(directory):  # Orbax's test, in 0.11 as today
        path = directory / name
        while path.exists():
            try:
                shutil.rmtree(path)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


MIRROR_TMP_PREFIX = "tmp-mirror-"
"""Names of directories being copied in or out of a checkpoint directory; never restored."""


class Mirror:
    """Complete checkpoints copied between a local directory and the run directory.

    Every step directory appears under its final name by one rename, after its files are
    flushed, and leaves by a rename before it is deleted, so a process killed at any point
    leaves only complete checkpoints under step names (and ``tmp-mirror-*`` leftovers).
    """

    def __init__(self, local: Path, remote: Path) -> None:
        self.local = local
        """The staging directory Orbax writes to."""
        self.remote = remote
        """``<run>/checkpoints``: the reference, and what a new machine restores from."""

    def pull(self) -> None:
        """Make the local directory a copy of the remote one, removing leftovers of both.

        A local checkpoint missing from the run directory, or different from its copy there,
        is deleted (it belongs to an older run, or it was written but not yet copied when the
        process died); a remote one missing locally (a new machine) is copied in.
        """
        for directory in (self.local, self.remote):
            directory.mkdir(parents=True, exist_ok=True)
            for leftover in directory.glob(f"{MIRROR_TMP_PREFIX}*"):
                shutil.rmtree(leftover)
        remote = _step_dirs(self.remote)
        for step, path in _step_dirs(self.local).items():
            if step not in remote or _file_sizes(path) != _file_sizes(remote[step]):
                _remove(path)
        local = _step_dirs(self.local)
        for step, path in remote.items():
            if step not in local:
                _copy_step(path, self.local)

    def push(self, step: int, keep: Collection[int]) -> None:
        """Copy the finished local checkpoint ``step`` to the run directory.

        Then delete the remote checkpoints not in ``keep`` (those Orbax keeps locally).
        """
        if not (self.remote / str(step)).is_dir():
            _copy_step(self.local / str(step), self.remote)
        for old, path in _step_dirs(self.remote).items():
            if old not in keep:
                _remove(path)

    def set_aside(self, step: int, target: Path) -> None:
        """Move the run directory's copy of ``step`` to ``target`` there (it is unreadable)."""
        remote = self.remote / str(step)
        if remote.is_dir():
            remote.rename(self.remote / target.name)


def _step_dirs(directory: Path) -> dict[int, Path]:
    return {int(p.name): p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()}


def _file_sizes(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()
    }


def _copy_step(source: Path, destination: Path) -> None:
    """Copy the step directory ``source`` into ``destination``, whole or not at all."""
    partial = destination / f"{MIRROR_TMP_PREFIX}{source.name}"
    shutil.copytree(source, partial, copy_function=_copy_file)
    for directory in sorted({partial, *(p for p in partial.rglob("*") if p.is_dir())}):
        _fsync_dir(directory)
    partial.rename(destination / source.name)
    _fsync_dir(destination)


def _copy_file(source: str, destination: str) -> None:
    """Copy one file and flush it to the storage (``shutil.copytree``'s copy function)."""
    shutil.copyfile(source, destination)
    with open(destination, "rb+") as copy:
        os.fsync(copy.fileno())


def _remove(step_dir: Path) -> None:
    """Delete a step directory: renamed out of the step names first, then deleted."""
    doomed = step_dir.with_name(f"{MIRROR_TMP_PREFIX}{step_dir.name}")
    step_dir.rename(doomed)
    _fsync_dir(step_dir.parent)
    shutil.rmtree(doomed)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (new names, renames) to the storage."""
    if os.name != "posix":  # Windows cannot open a directory to flush it
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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


_TS_ANNOTATIONS = re.compile(r"(?:\s*\[[a-z_]+='(?:[^'\\]|\\.)*'\])+\s*$")
"""The ``[name='value']`` annotations that end a tensorstore error message (values escaped)."""


def write_error_cause(err: BaseException) -> str:
    """The cause of a failed write in one line: the OS error where there is one.

    A tensorstore error reads ``...: Failed to write N bytes to file 4: File too large``
    followed by annotations, ``[os_error_code='27']`` and, when the write failed while a
    driver was being opened, ``[tensorstore_spec='{...}']`` before it: the cause is the text
    after the last colon before the annotations.
    """
    text = str(err)
    code = re.search(r"\[os_error_code='(\d+)'\]", text)
    annotations = _TS_ANNOTATIONS.search(text)
    if code and annotations:
        reason = text[: annotations.start()].rsplit(": ", 1)[-1].strip()
        return f"{reason} (errno {code.group(1)})"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror} (errno {err.errno})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def export_model(run_dir: Path, config: Config, host_state: Any) -> None:
    """Write the inference export ``<run>/export/``: model state and config, no optimiser.

    ``host_state`` is the model state gathered to host memory
    (:func:`imgae_dx_jax.distributed.to_host`, which every process takes part in); process 0
    writes it alone (the others return), so the export loads anywhere, on any number of
    devices. Evaluation adds the validation-calibrated threshold (``threshold.json``);
    prediction needs nothing else. The export is written beside the previous one and renamed
    over it once complete.

    Raises:
        CheckpointError: when it cannot be written (the previous export is intact).
    """
    if not distributed.is_main_process():
        return
    export = rundir.export_dir(run_dir)
    staging = rundir.export_staging_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        with distributed.local_checkpointer() as checkpointer:
            checkpointer.save(staging.absolute() / rundir.EXPORT_MODEL, host_state)
            checkpointer.wait_until_finished()
        rundir.write_config(config, staging)
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        kept = "the previous export is intact" if export.is_dir() else "there is no export yet"
        raise CheckpointError(
            f"could not write the model export in {export}: {write_error_cause(err)}; {kept}: "
            "fix the problem (free disk space, check the drive) and rerun the same command to "
            "resume from the last checkpoint"
        ) from None
    shutil.rmtree(export, ignore_errors=True)
    staging.rename(export)


def update_export_config(run_dir: Path, config: Config) -> None:
    """Give the run's export this invocation's settings where they changed; the model stays.

    A rerun may change only settings that leave the exported model as it is (``eval.*``,
    tracking, ...; :func:`imgae_dx_jax.run_dir.check_compatible`), and evaluation and
    prediction read the export's config: without this they would keep the former settings.
    Process 0 writes it alone.
    """
    if not distributed.is_main_process() or rundir.load_export_config(run_dir) == config:
        return
    rundir.write_config(config, rundir.export_dir(run_dir))
    log.info("export: its config takes this invocation's settings (the model is unchanged)")


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
