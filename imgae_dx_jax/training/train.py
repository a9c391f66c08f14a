"""Training: stages -> epochs -> steps, with logging, validation and exact resume.

:func:`train` wires the run directory (:mod:`imgae_dx_jax.run_dir`), the data, the compiled
steps (:mod:`imgae_dx_jax.training.step`), the checkpoints and the loop
(:mod:`imgae_dx_jax.training.loop`), then writes the inference export. The model math lives
in :mod:`imgae_dx_jax.families`; this module holds none.

Resuming is exact: a run killed at any point and resumed ends with bit-identical parameters
(on the same device kind).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import jax
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import Checkpoints, export_model, update_export_config
from imgae_dx_jax.config import ConfigError, from_dict, to_dict
from imgae_dx_jax.data import load_splits
from imgae_dx_jax.data.sources import source_stages, with_absolute_path
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.memory import memory_phase, release_after_compilations
from imgae_dx_jax.runtime import setup_compilation_cache
from imgae_dx_jax.schema import Config
from imgae_dx_jax.tracking import Tracker
from imgae_dx_jax.training.loop import Progress, TrainingLoop, step_budget
from imgae_dx_jax.training.step import Trainer, build_trainer

log = logging.getLogger(__name__)


def log_split_counts(splits: Splits) -> None:
    """Log images per split and class."""
    for name, counts in splits.counts().items():
        log.info("%-5s %4d normal, %4d abnormal", name, counts["normal"], counts["abnormal"])


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves: the run's config, the trained model and its precision."""

    config: Config
    """As saved in ``run_dir/config.yaml``: ``data.stages`` lists every stage trained so far,
    in order; evaluation uses it. (An image folder, one stage, keeps ``data.stages`` as given:
    it ignores them.)"""
    model: nnx.Module
    """The trained model (arrays on the mesh's devices)."""
    precision: str
    """What it trained in: ``train.precision`` resolved on the devices (``bf16`` or
    ``float32``)."""


def train(
    config: Config,
    run_dir: Path,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Train the configured stages in ``run_dir``, resuming from its checkpoints.

    Stages already completed in the run directory are skipped; the model and optimiser
    carry over from one stage to the next. ``tracker`` (made and finished by the caller)
    receives the logged metrics and, every ``tracking.images_every`` steps, sample
    reconstructions; it is started here, once the run directory is known to be usable.

    Returns:
        The run's config, the trained model and the precision it trained in.

    Raises:
        RunDirError: when the run directory holds an incompatible run.
        FinishedRunError: when it holds a finished run, nothing would train, and settings
            that shape the model changed (:func:`imgae_dx_jax.run_dir.check_compatible`).
        Interrupted: after a signal, once the checkpoint is saved.
    """
    if resume not in rundir.RESUME_MODES:
        modes = " or ".join(rundir.RESUME_MODES)
        raise ConfigError(f"--resume: {resume!r}; choose {modes}")
    config = replace(config, data=with_absolute_path(config.data))  # the run reads it anywhere
    setup_compilation_cache(config)
    release_after_compilations()
    saved_config = rundir.prepare(run_dir, resume, overwrite)
    mesh = distributed.make_mesh()
    if config.train.batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is not divisible by "
            f"the {mesh.size} devices"
        )
    staging = rundir.local_checkpoints_dir(run_dir, config)
    if staging is not None and jax.process_count() > 1:
        raise ConfigError(
            "train.local_checkpoint_dir: every process writes its part of a checkpoint, so a "
            'run of several processes writes them in the run directory: set it to ""'
        )
    main = distributed.is_main_process()
    checkpoints = Checkpoints(
        rundir.checkpoints_dir(run_dir), keep=config.train.keep_checkpoints, staging=staging
    )
    finished = False
    try:
        wanted = source_stages(config.data)
        # Where the run stands decides whether a changed setting can take effect, and its
        # stages, whose data sizes decide the step budget that the optimisers' schedule is
        # built with; the arrays are restored after.
        meta = checkpoints.latest_meta()
        saved = Progress(**meta["progress"]) if meta is not None else Progress()
        if saved_config is not None:
            rundir.check_compatible(saved_config, config, trains=saved.trains(config, wanted))
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tracker is not None:
                tracker.start(config, run_dir)
        if wanted != config.data.stages:
            log.info(
                "source %s is one stage, %s: data.stages (--stage) is ignored",
                config.data.source,
                ",".join(wanted),
            )
        history = list(saved.completed_stages) + ([saved.stage] if saved.stage else [])
        stages = history + [s for s in wanted if s not in history]
        run_config = _with_stages(config, stages) if wanted == config.data.stages else config
        if main:
            rundir.write_config(run_config, run_dir)
        with memory_phase("data"):
            store, catalog, splits = load_splits(run_config.data)
        log.info(
            "data: %s, stages %s, %d images",
            store.description,
            ",".join(stages),
            len(catalog.records),
        )
        log_split_counts(splits)
        if main:
            rundir.write_split_manifest(run_dir, splits)
        with memory_phase("model"):
            trainer = build_trainer(config, mesh, step_budget(config, splits, stages))
            progress, restored_step = _restore(checkpoints, trainer)
        todo = [s for s in wanted if s not in progress.completed_stages]
        model, _ = trainer.model_and_optimizers()
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        log.info(
            "model %s: %.2fM parameters; %d device(s) in %d process(es); global batch %d "
            "= %d per device",
            config.model.name,
            n_params / 1e6,
            mesh.size,
            jax.process_count(),
            config.train.batch_size,
            config.train.batch_size // mesh.size,
        )
        if not todo:
            log.info("stages %s are already trained in %s", ",".join(wanted), run_dir)
        loop = TrainingLoop(
            config, run_config, run_dir, mesh, trainer, checkpoints, store, splits, progress
        )
        loop.metrics.tracker = tracker
        with memory_phase("training"):
            try:
                for stage in todo:
                    resume_step = restored_step if stage == progress.stage else None
                    if not loop.train_stage(stage, resume_step):
                        break
            finally:
                loop.log_skips()
            checkpoints.wait()  # the last checkpoint is in the run directory before the export
            # The loop exported an epoch chosen on validation AUROC, unless none was chosen
            # (or the run, resumed with `last`, has no stage left to train).
            if config.train.select_checkpoint == "last" or progress.best_auroc_step is None:
                model_state, _ = trainer.parts()
                export_model(run_dir, run_config, distributed.to_host(model_state))
            else:  # the loop exported the best epoch by validation AUROC
                log.info(
                    "export: the model of step %s (validation AUROC %.3f)",
                    progress.best_auroc_step,
                    progress.best_val_auroc or float("nan"),
                )
                update_export_config(run_dir, run_config)
        finished = True
    finally:
        checkpoints.close(raise_errors=finished)
    return TrainResult(run_config, trainer.model_and_optimizers()[0], trainer.precision)


def _with_stages(config: Config, stages: list[str]) -> Config:
    tree = to_dict(config)
    tree["data"]["stages"] = stages
    return from_dict(tree, "run")


def _restore(checkpoints: Checkpoints, trainer: Trainer) -> tuple[Progress, int | None]:
    if not checkpoints.steps():
        return Progress(), None
    model_state, opt_state = trainer.parts()
    # The data iterator of the stage in progress is restored once that stage's is built.
    step, restored = checkpoints.restore_latest(model_state, opt_state)
    trainer.load(restored["model"], restored["opt"])
    meta = restored["meta"]
    progress = Progress(**meta["progress"])
    log.info(
        "resuming from checkpoint %d (stage %s: %d full epoch(s) and %d step(s) trained)",
        step,
        progress.stage or "-",
        progress.epoch,
        progress.step_in_epoch,
    )
    return progress, step
