"""The stage/epoch/step loop of one training invocation, with signals and validation.

Resuming is exact: the data order, the random keys and every state are functions of the
config and the step, and a checkpoint holds the model, the optimiser(s), the grain
iterator and the progress.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import numpy as np

from imgae_dx_jax import __version__, distributed
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import Checkpoints, SaveCadence, export_model
from imgae_dx_jax.config import ConfigError, to_dict
from imgae_dx_jax.data import Store
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset, train_dataset
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.errors import DataError, Interrupted, NonFiniteLossError
from imgae_dx_jax.memory import release_memory
from imgae_dx_jax.progress import progress_bar
from imgae_dx_jax.schema import STAGES, Config
from imgae_dx_jax.tracking import resource_metrics
from imgae_dx_jax.training.selection import ValidationAUROC, has_both_classes
from imgae_dx_jax.training.step import Trainer

log = logging.getLogger(__name__)


def stage_seed(config: Config, stage: str) -> int:
    """Shuffle seed of one stage: the same whichever stages an invocation trains.

    NIH stage ``images_NNN`` adds NNN to ``1000 * train.seed``; the single stage of an image
    folder adds 0.
    """
    return config.train.seed * 1000 + (int(stage.rsplit("_", 1)[1]) if stage in STAGES else 0)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``n_images`` training images (at least 1).

    Every process takes the same number of steps (shards differ by at most one image).
    """
    count = distributed.process_shard()[1]
    return max(1, n_images // count // (batch_size // count))


def step_budget(config: Config, splits: Splits, stages: Sequence[str]) -> int:
    """The run's length in optimiser steps (its step budget).

    ``train.max_steps`` when > 0, else ``train.epochs`` times the steps per epoch of each
    stage's training images, summed over ``stages``.
    """
    if config.train.max_steps:
        return config.train.max_steps
    batch = config.train.batch_size
    return sum(
        config.train.epochs * steps_per_epoch(sum(r.stage == s for r in splits.train), batch)
        for s in stages
    )


def validation_points(steps_per_epoch: int, per_epoch: int) -> list[int]:
    """The steps of an epoch after which the model is validated (``validations_per_epoch``).

    Evenly spaced, the last the epoch's end; never more than one per step.
    """
    return sorted({max(1, round(steps_per_epoch * k / per_epoch)) for k in range(1, per_epoch + 1)})


def validation_batches(n_images: int, batch_size: int, processes: int) -> int:
    """Full global batches of ``batch_size`` in a validation split of ``n_images`` images.

    The split is read by ``processes`` processes, each taking the same number of batches.

    Raises:
        DataError: when the split has no image (the data has too few patients).
        ConfigError: when it has fewer images than one batch.
    """
    if not n_images:
        raise DataError(
            "the validation split has no images: the data has too few patients for the split "
            "by patient (data.split sends a share of them to validation); add images of more "
            "patients"
        )
    n_batches = n_images // processes // (batch_size // processes)
    if not n_batches:
        raise ConfigError(
            f"train.batch_size: the validation split has {n_images} images, fewer than one "
            f"batch of {batch_size}; lower train.batch_size"
        )
    return n_batches


def validation_loss(
    trainer: Trainer, source: ImageSource, config: Config, mesh: jax.sharding.Mesh, step: int
) -> dict[str, float]:
    """Mean validation losses over the validation split's full global batches.

    Each process reads its own part of the split. Only full batches are used (fixed shapes:
    no recompilation, no padded duplicates); they are the same images every epoch, so the
    losses are comparable. ``step`` seeds the noise of the denoising objective.
    """
    index, count = distributed.process_shard()
    local_batch = config.train.batch_size // count
    n_batches = validation_batches(len(source), config.train.batch_size, count)
    totals: dict[str, float] = {}
    batches = eval_dataset(source, local_batch, config.data.num_threads, shard=(index, count))
    for number, batch in zip(range(n_batches), batches, strict=False):
        images = distributed.global_batch(batch["image"], mesh)
        losses = trainer.eval_step(trainer.state, images, np.uint32(step * 1024 + number))
        for name, value in jax.device_get(losses).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    release_memory()
    return {f"val_{k}": v / n_batches for k, v in totals.items()}


@dataclass
class Progress:
    """Where training stands; saved as checkpoint metadata."""

    completed_stages: list[str] = field(default_factory=list)
    stage: str = ""
    epoch: int = 0
    """Completed epochs of ``stage``."""
    step_in_epoch: int = 0
    step: int = 0
    """Optimiser steps in total."""
    best_val_loss: float | None = None
    best_step: int | None = None
    best_val_auroc: float | None = None
    """``train.select_checkpoint=val_auroc``: the best validation AUROC of the stage in
    progress (or of the last stage), whose model is the export."""
    best_auroc_step: int | None = None
    validated_step: int | None = None
    """The step of the last validation: a run resumed at a validation point that was not
    validated yet (stopped right after its last step) validates it first."""

    def trains(self, config: Config, stages: Sequence[str]) -> bool:
        """Whether training ``stages`` on from here takes any optimiser step.

        As :meth:`TrainingLoop.train_stage` decides: not once ``train.max_steps`` (when > 0)
        is reached, nor for a completed stage, nor for the stage in progress once it has
        ``train.epochs`` epochs.
        """
        if config.train.max_steps and self.step >= config.train.max_steps:
            return False
        return any(
            stage not in self.completed_stages
            and (stage != self.stage or self.epoch < config.train.epochs)
            for stage in stages
        )


class StopFlag:
    """Set by SIGTERM/SIGINT: the loop saves and stops at the next step boundary.

    A second SIGINT raises :class:`KeyboardInterrupt` at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the signal (a repeated SIGINT interrupts at once)."""
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s received: saving a checkpoint, then stopping (Ctrl-C again to quit now)",
            signal.Signals(signum).name,
        )


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Install :class:`StopFlag` for SIGTERM and SIGINT (main thread only) for the block."""
    flag = StopFlag()
    handlers = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, flag)
    except ValueError:  # not the main thread: leave signal handling alone
        pass
    try:
        yield flag
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


class TrainingLoop:
    """The stage/epoch/step loop of one invocation."""

    def __init__(
        self,
        config: Config,
        run_config: Config,
        run_dir: Path,
        mesh: jax.sharding.Mesh,
        trainer: Trainer,
        checkpoints: Checkpoints,
        store: Store,
        splits: Splits,
        progress: Progress,
    ) -> None:
        self.config, self.run_config, self.run_dir, self.mesh = config, run_config, run_dir, mesh
        self.trainer, self.checkpoints, self.store, self.splits = (
            trainer,
            checkpoints,
            store,
            splits,
        )
        self.progress = progress
        self.metrics = rundir.TrainingLog(run_dir, enabled=distributed.is_main_process())
        self.cadence = SaveCadence(config.train)
        self.pending: list[Any] = []
        """Per-step loss terms (device arrays) not yet checked for NaN/inf."""
        self.pending_first_step = 0
        self.first_step_s: float | None = None
        """Wall time of this invocation's first step: tracing, compiling (or loading from the
        compilation cache) and running it; logged once."""
        self.skips: dict[tuple[str, str], SkipLog] = {}
        """(split, stage) -> images skipped, for the summary at the end of the run."""
        self.meta_base = {
            "config": to_dict(run_config),
            "config_hash": rundir.config_hash(config),
            "version": __version__,
            "model": config.model.name,
        }

    def _source(self, records: Any, skips: SkipLog) -> ImageSource:
        return ImageSource(records, self.store, self.config.data.image_size, skips)

    def train_stage(self, stage: str, resume_step: int | None) -> bool:
        """Train one stage for ``train.epochs`` epochs, continuing a saved position.

        Args:
            stage: the stage to train.
            resume_step: the checkpoint whose data-iterator state continues this stage.

        Returns:
            Whether the stage is complete (False when ``train.max_steps`` stopped it).
        """
        cfg, p = self.config, self.progress
        if cfg.train.max_steps and p.step >= cfg.train.max_steps:
            return False
        if p.stage != stage:
            p.stage, p.epoch, p.step_in_epoch = stage, 0, 0
            p.best_val_auroc = p.best_auroc_step = None  # the export comes from the last stage
        trained = set(p.completed_stages) | {stage}
        train_skips = self.skips.setdefault(("train", stage), SkipLog())
        val_skips = self.skips.setdefault(("validation", stage), SkipLog())
        train_source = self._source([r for r in self.splits.train if r.stage == stage], train_skips)
        val_records = [r for r in self.splits.val if r.stage in trained]
        val_source = self._source(val_records, val_skips)
        shard = distributed.process_shard()
        validation_batches(len(val_source), cfg.train.batch_size, shard[1])  # before training
        selector = self._selector(val_records)
        if selector is None:  # the last model is the export, whatever an earlier run chose
            p.best_val_auroc = p.best_auroc_step = None
        local_batch = cfg.train.batch_size // shard[1]
        data_iter = iter(
            train_dataset(
                train_source, local_batch, stage_seed(cfg, stage), cfg.data.num_threads, shard=shard
            )
        )
        if resume_step is not None:
            self.checkpoints.restore_iterator(resume_step, data_iter)
        epoch_steps = steps_per_epoch(len(train_source), cfg.train.batch_size)
        log.info(
            "stage %s: %d training images, %d steps per epoch, %d epochs",
            stage,
            len(train_source),
            epoch_steps,
            cfg.train.epochs,
        )
        points = validation_points(epoch_steps, cfg.model.family.validations_per_epoch)
        with stop_on_signals() as stop:
            while p.epoch < cfg.train.epochs:
                # A run stopped right after a validation point's last step validates it first.
                first = p.step_in_epoch + int(p.validated_step == p.step)
                until = next(n for n in points if n >= first)
                self._steps(data_iter, epoch_steps, until, stop)
                cut = p.step_in_epoch < until  # train.max_steps reached before the point
                if p.validated_step != p.step:  # not when the budget ended at the last point
                    self._validate(val_source, selector, data_iter, epoch_steps)
                if cut:
                    log.info("train.max_steps=%d reached", cfg.train.max_steps)
                    return False
        p.completed_stages.append(stage)
        p.stage, p.epoch = "", 0
        self._save(data_iter, None)
        return True

    def _validate(
        self,
        val_source: ImageSource,
        selector: ValidationAUROC | None,
        data_iter: Any,
        epoch_steps: int,
    ) -> None:
        """Validate at this step (loss, AUROC and export with a selector), log it, checkpoint."""
        cfg, p = self.config, self.progress
        val = validation_loss(self.trainer, val_source, cfg, self.mesh, p.step)
        self._check_finite([val], p.step, what="validation loss")
        p.validated_step = p.step
        epoch = p.epoch + 1  # the epoch in progress, or just completed
        at = f" at step {p.step_in_epoch}/{epoch_steps}"
        if p.step_in_epoch == epoch_steps:  # the epoch's end
            at, p.epoch, p.step_in_epoch = "", epoch, 0
        if p.best_val_loss is None or val["val_loss"] < p.best_val_loss:
            p.best_val_loss, p.best_step = val["val_loss"], p.step
        auroc = {} if selector is None else self._select(selector)
        self.metrics.write({"step": p.step, "stage": p.stage, "epoch": epoch, **val, **auroc})
        log.info(
            "stage %s epoch %d/%d%s: step %d, validation loss %.5f%s",
            p.stage,
            epoch,
            cfg.train.epochs,
            at,
            p.step,
            val["val_loss"],
            "" if selector is None else self._describe_selection(auroc),
        )
        self._save(data_iter, val["val_loss"])

    def log_skips(self) -> None:
        """Log the images skipped in this invocation, by split, stage and reason."""
        lines = [
            f"{split} {stage}: {len(skips)} ("
            + ", ".join(f"{n} {reason}" for reason, n in sorted(skips.by_reason().items()))
            + ")"
            for (split, stage), skips in self.skips.items()
            if len(skips)
        ]
        if lines:
            log.warning("skipped images by reason: %s", "; ".join(lines))
        elif self.skips:
            log.info("no images were skipped")

    def _steps(self, data_iter: Any, steps_per_epoch: int, until: int, stop: StopFlag) -> None:
        """Train the epoch in progress up to its step ``until`` (or ``train.max_steps``)."""
        cfg, p = self.config.train, self.progress
        steps = until - p.step_in_epoch
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps - p.step)
        end = p.step + steps
        # JAX dispatches steps ahead of the device, so the bar moves only where the loop waits
        # for the device (every train.log_every steps, and before each validation): its count,
        # rate and ETA are those of finished steps, not of dispatched ones.
        bar = progress_bar(
            f"{p.stage} epoch {p.epoch + 1}/{cfg.epochs}",
            steps_per_epoch,
            "step",
            initial=p.step_in_epoch,
        )
        window_start, window_images, self.pending = time.perf_counter(), 0, []
        for _ in range(steps):
            batch = next(data_iter)
            images = distributed.global_batch(batch["image"], self.mesh)
            step_start = time.perf_counter()
            self.trainer.state, metrics = self.trainer.train_step(
                self.trainer.state, images, np.uint32(p.step)
            )
            if self.first_step_s is None:
                jax.block_until_ready(metrics)
                self.first_step_s = time.perf_counter() - step_start
                log.info(
                    "first step: %.1f s (tracing, compiling or loading it from the compilation "
                    "cache, and running it)",
                    self.first_step_s,
                )
            if not self.pending:
                self.pending_first_step = p.step + 1
            p.step += 1
            p.step_in_epoch += 1
            window_images += images.shape[0]
            self.pending.append(metrics)
            if p.step % cfg.log_every == 0:
                host = jax.device_get(self.pending)  # waits for the steps dispatched so far
                self._check_finite(host, self.pending_first_step)
                elapsed = time.perf_counter() - window_start
                record: dict[str, Any] = {
                    name: float(np.mean([m[name] for m in host])) for name in host[0]
                }
                record.update(
                    step=p.step,
                    stage=p.stage,
                    epoch=p.epoch + 1,
                    images_per_s=window_images / max(elapsed, 1e-9),
                    lr=self.trainer.learning_rate(p.step - 1),
                    **resource_metrics(),
                )
                self.metrics.write(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}",
                    img_s=f"{record['images_per_s']:.1f}",
                    refresh=False,
                )
                bar.update(p.step_in_epoch - bar.n)
                window_start, window_images, self.pending = time.perf_counter(), 0, []
            images_every = self.config.tracking.images_every
            if self.metrics.tracker is not None and images_every and p.step % images_every == 0:
                self._log_samples(images)
            # The last step is checkpointed after its validation, with the progress it makes.
            if self.cadence.due(p.step) and p.step < end:
                self._save(data_iter, None)
            if stop.signal is not None:
                bar.close()
                self._save(data_iter, None)
                raise Interrupted(
                    f"stopped by {signal.Signals(stop.signal).name} at step {p.step}", stop.signal
                )
        jax.block_until_ready(self.pending)  # validation comes next and would wait anyway
        bar.update(p.step_in_epoch - bar.n)
        bar.close()
        release_memory()  # what the step's compilation (first epoch) and its buffers freed

    def _log_samples(self, images: jax.Array) -> None:
        """Log input | reconstruction | anomaly map of up to 4 training images to W&B."""
        x, recon, maps = (
            np.asarray(a) for a in self.trainer.sample_step(self.trainer.state, images)
        )
        rows = []
        for i in range(min(4, len(x))):
            scaled = maps[i] / max(float(maps[i].max()), 1e-8)
            rows.append(np.concatenate([x[i, ..., 0], recon[i, ..., 0], scaled], axis=1))
        assert self.metrics.tracker is not None
        self.metrics.tracker.log_images(
            {"samples/input_reconstruction_map": np.concatenate(rows, axis=0)},
            step=self.progress.step,
        )

    def _check_finite(
        self, records: list[dict[str, Any]], first_step: int, what: str = "loss"
    ) -> None:
        """Stop at the first step whose loss terms are not all finite.

        Raises:
            NonFiniteLossError: naming the step, every loss term and how to resume.
        """
        for offset, record in enumerate(records):
            values = {k: float(np.asarray(v)) for k, v in record.items()}
            if all(np.isfinite(v) for v in values.values()):
                continue
            terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            family = self.config.model.name
            lr = self.config.model.family.learning_rate
            saved = self.checkpoints.steps()
            kept = (
                f"nothing was saved after step {max(saved)}, whose checkpoint is intact: rerun "
                "the same command to resume from it, e.g. with a lower learning rate "
                f"(--set model.{family}.learning_rate={lr / 10:g})"
                if saved
                else "no checkpoint was saved yet: lower the learning rate "
                f"(--set model.{family}.learning_rate={lr / 10:g}) and start again"
            )
            raise NonFiniteLossError(
                f"non-finite {what} at step {first_step + offset} ({terms}); training stopped "
                f"and {kept}"
            )

    def _selector(self, val_records: Sequence[Record]) -> ValidationAUROC | None:
        """The stage's epoch selection (``train.select_checkpoint``), None for the last model.

        ``auto`` selects on the validation AUROC when the validation split has normal and
        abnormal images, and exports the last model otherwise (a normal-only folder).
        """
        mode = self.config.train.select_checkpoint
        if mode == "auto":
            mode = "val_auroc" if has_both_classes(val_records) else "last"
            log.info(
                "train.select_checkpoint auto: %s",
                "the export is the model of best validation AUROC"
                if mode == "val_auroc"
                else "the validation split lacks normal or abnormal images; the export is "
                "the last model",
            )
        if mode == "last":
            return None
        model, _ = self.trainer.model_and_optimizers()
        return ValidationAUROC(self.config, self.store, val_records, model)

    def _select(self, selector: ValidationAUROC) -> dict[str, Any]:
        """Score the validation split; export the model when its AUROC is the stage's best.

        Every process takes part in gathering the weights and in the export; process 0
        scores, and its AUROC is the one every process compares.
        """
        p = self.progress
        model_state, _ = self.trainer.parts()
        host_state = distributed.to_host(model_state)
        result = selector.run(host_state) if distributed.is_main_process() else {}
        auroc = float(distributed.broadcast_from_main(np.array(result.get("val_auroc", 0.0))))
        if p.best_val_auroc is None or auroc > p.best_val_auroc:
            p.best_val_auroc, p.best_auroc_step = auroc, p.step
            export_model(self.run_dir, self.run_config, host_state)
        return {"val_auroc": auroc, **({"val_score": result["val_score"]} if result else {})}

    def _describe_selection(self, auroc: dict[str, Any]) -> str:
        p = self.progress
        exported = p.best_auroc_step == p.step
        return f", validation AUROC {auroc['val_auroc']:.3f}" + (
            " (best so far: exported)"
            if exported
            else f" (the export stays that of step {p.best_auroc_step}, {p.best_val_auroc:.3f})"
        )

    def _save(self, data_iter: Any, val_loss: float | None) -> None:
        if self.pending:  # never checkpoint a model whose last steps went NaN
            self._check_finite(jax.device_get(self.pending), self.pending_first_step)
        model_state, opt_state = self.trainer.parts()
        meta = {**self.meta_base, "progress": vars(self.progress).copy()}
        self.checkpoints.save(self.progress.step, model_state, opt_state, data_iter, meta, val_loss)
        self.cadence.saved()
