"""Training: stages -> epochs -> steps, with logging, validation and exact resume.

``python -m imgae_dx_jax.train`` (= ``imgae-train`` = ``hatch run train``) trains one model
family on the normal images of the training patients, stage after stage, checkpoints
everything with Orbax, then exports the model and evaluates it on the held-out test patients
(:func:`imgae_dx_jax.evaluate.evaluate_run`). The model math lives in
:mod:`imgae_dx_jax.objectives`; this module only wires and loops.

Resuming is exact: the data order, the random keys and every state are functions of the
config and the step, and a checkpoint holds the model, the optimiser(s), the grain
iterator and the progress. A run killed at any point and resumed ends with bit-identical
parameters (on the same device kind).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx
from tqdm.auto import tqdm

from imgae_dx_jax import __version__, distributed
from imgae_dx_jax.checkpoints import Checkpoints
from imgae_dx_jax.config import Config, ConfigError, dump_yaml, from_dict, to_dict
from imgae_dx_jax.data import Store, load_splits
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset, train_dataset
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.models import compute_dtype, create_model
from imgae_dx_jax.objectives import get_objective
from imgae_dx_jax.scoring import anomaly_maps
from imgae_dx_jax.tracking import Tracker, resource_metrics

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")
_SAFE_MODEL_KEYS = ("learning_rate",)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (non-empty, or a different run)."""


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum
        """The signal that stopped training (the CLI exits with 128 + it)."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def to_unit_float(images: jax.Array) -> jax.Array:
    """Convert uint8 images to float32 in [0, 1] (done on the device)."""
    return images.astype(jnp.float32) / 255.0


def config_hash(config: Config) -> str:
    """Return a short stable hash of the resolved configuration."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_run_dir(config: Config) -> Path:
    """``<run.root>/<model>``: re-running the same command continues the same run."""
    return Path(config.run.root) / config.model.name


def identity_settings(config: Config) -> dict[str, Any]:
    """Settings a resumed run must share with its checkpoints (shapes, data order, split)."""
    family = to_dict(getattr(config.model, config.model.name))
    out = {
        f"model.{config.model.name}.{k}": v for k, v in family.items() if k not in _SAFE_MODEL_KEYS
    }
    out.update(
        {
            "model.name": config.model.name,
            "data.image_size": config.data.image_size,
            "data.split": list(config.data.split),
            "data.split_seed": config.data.split_seed,
            "data.official_split": config.data.official_split,
            "train.batch_size": config.train.batch_size,
            "train.seed": config.train.seed,
        }
    )
    return out


def check_compatible(saved: Config, new: Config) -> None:
    """Refuse to resume with different shape-defining settings; log the safe changes.

    Raises:
        RunDirError: naming every setting that differs.
    """
    old_id, new_id = identity_settings(saved), identity_settings(new)
    diffs = [
        f"{k}: {old_id.get(k)!r} -> {new_id.get(k)!r}"
        for k in sorted(set(old_id) | set(new_id))
        if old_id.get(k) != new_id.get(k)
    ]
    if diffs:
        raise RunDirError(
            "this run directory holds a run with different settings, which cannot be resumed "
            "with this config:\n  "
            + "\n  ".join(diffs)
            + "\nUse another --run-dir, or --resume never --overwrite to start it afresh."
        )
    flat_old, flat_new = _flatten(to_dict(saved)), _flatten(to_dict(new))
    for key in sorted(flat_new):
        if key != "data.stages" and flat_old.get(key) != flat_new[key]:
            log.info(
                "resuming with a changed setting %s: %r -> %r",
                key,
                flat_old.get(key),
                flat_new[key],
            )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def stage_seed(config: Config, stage: str) -> int:
    """Shuffle seed of one stage: the same whichever stages an invocation trains."""
    return config.train.seed * 1000 + int(stage.rsplit("_", 1)[1])


@dataclass
class Trainer:
    """The compiled step functions of one model family and their functional state.

    ``train_step(state, images, step)`` and ``eval_step(state, images, index)`` take global
    uint8 batches (:func:`distributed.global_batch`); their random keys are derived inside
    the steps from ``train.seed`` and the integer, so no key array crosses hosts.
    """

    graphdef: nnx.GraphDef[Any]
    state: Any
    sharding: Any
    train_step: Callable[[Any, jax.Array, np.uint32], tuple[Any, dict[str, jax.Array]]]
    eval_step: Callable[[Any, jax.Array, np.uint32], dict[str, jax.Array]]
    sample_step: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
    """(state, images) -> (inputs, reconstructions, anomaly maps), replicated."""

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


def build_trainer(config: Config, mesh: jax.sharding.Mesh) -> Trainer:
    """Create the model and optimisers and jit their train and validation steps.

    The steps are pure functions of (state, batch, step): the state is donated and replicated
    (or FSDP-sharded with ``train.shard_params``), the batch is sharded along ``data``.
    With ``train.precision: bf16`` the model computes in bfloat16 (it casts its input batch on
    entry) while parameters, optimiser state, outputs and losses stay float32.
    """
    model = create_model(
        config.model,
        config.data.image_size,
        dtype=compute_dtype(config.train.precision),
        rngs=nnx.Rngs(config.train.seed),
    )
    objective = get_objective(config.model)
    optimizers = objective.create_optimizers(model)
    graphdef, state = nnx.split((model, optimizers))
    sharding = distributed.state_shardings(state, mesh, config.train.shard_params)
    state = jax.device_put(state, sharding)
    data = distributed.batch_sharding(mesh)
    repl = distributed.replicated(mesh)
    train_key, val_key = jax.random.split(jax.random.key(config.train.seed))

    @partial(
        jax.jit,
        donate_argnums=0,
        in_shardings=(sharding, data, None),
        out_shardings=(sharding, repl),
    )
    def train_step(state: Any, images: jax.Array, step: jax.Array) -> tuple[Any, Any]:
        model, optimizers = nnx.merge(graphdef, state)
        key = jax.random.fold_in(train_key, step)
        metrics = objective.train_step(model, optimizers, to_unit_float(images), key)
        return nnx.state((model, optimizers)), metrics

    @partial(jax.jit, in_shardings=(sharding, data, None), out_shardings=repl)
    def eval_step(state: Any, images: jax.Array, index: jax.Array) -> Any:
        model, _ = nnx.merge(graphdef, state)
        key = jax.random.fold_in(val_key, index)
        return objective.eval_losses(model, to_unit_float(images), key)

    @partial(jax.jit, in_shardings=(sharding, data), out_shardings=repl)
    def sample_step(state: Any, images: jax.Array) -> Any:
        model, _ = nnx.merge(graphdef, state)
        inputs = to_unit_float(images)
        reconstructions, maps = anomaly_maps(model, inputs, config.model)
        return inputs, reconstructions, maps

    return Trainer(graphdef, state, sharding, train_step, eval_step, sample_step)


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl``."""

    def __init__(self, path: Path, *, enabled: bool = True, tracker: Tracker | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.tracker = tracker

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (only where enabled: process 0 of a multi-host run).

        The numeric values also go to the W&B tracker, at the record's ``step``.
        """
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            numbers = {
                k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"
            }
            self.tracker.log(numbers, step=record["step"])


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
    n_batches = len(source) // count // local_batch  # the same number on every process
    if not n_batches:
        raise ConfigError(
            f"train.batch_size: the validation split has fewer than {config.train.batch_size} "
            "images"
        )
    totals: dict[str, float] = {}
    batches = eval_dataset(source, local_batch, config.data.num_threads, shard=(index, count))
    for number, batch in zip(range(n_batches), batches, strict=False):
        images = distributed.global_batch(batch["image"], mesh)
        losses = trainer.eval_step(trainer.state, images, np.uint32(step * 1024 + number))
        for name, value in jax.device_get(losses).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {f"val_{k}": v / n_batches for k, v in totals.items()}


def log_split_counts(splits: Splits) -> None:
    """Log images per split and class."""
    for name, counts in splits.counts().items():
        log.info("%-5s %4d normal, %4d abnormal", name, counts["normal"], counts["abnormal"])


def write_split_manifest(run_dir: Path, splits: Splits) -> None:
    """Record which images each split holds, so evaluation can check it sees the same split."""
    manifest = {name: sorted(r.key for r in splits[name]) for name in ("train", "val", "test")}
    (run_dir / "splits.json").write_text(json.dumps(manifest))


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


def prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> Config | None:
    """Check the run directory for ``resume``; return the saved config when resuming.

    Raises:
        RunDirError: when it cannot be used as asked.
    """
    saved = run_dir / "config.yaml"
    has_checkpoints = (run_dir / "checkpoints").is_dir() and any(
        p.name.isdigit() for p in (run_dir / "checkpoints").iterdir()
    )
    if resume == "auto":
        if has_checkpoints and saved.is_file():
            return from_dict(yaml.safe_load(saved.read_text()), str(saved))
        return None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{run_dir} is not empty; --resume never refuses to overwrite it "
                "(add --overwrite to delete it and start afresh, or use --resume auto)"
            )
        if not saved.is_file():
            raise RunDirError(
                f"{run_dir} does not look like a run directory (no config.yaml); "
                "refusing to delete it"
            )
        shutil.rmtree(run_dir)
    return None


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves: the run's config and the trained model."""

    config: Config
    """As saved in ``run_dir/config.yaml``: ``data.stages`` lists every stage trained so far,
    in order; evaluation uses it."""
    model: nnx.Module
    """The trained model (arrays on the mesh's devices)."""


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
    carry over from one stage to the next. ``tracker`` (started by the caller) receives the
    logged metrics and, every ``tracking.images_every`` steps, sample reconstructions; it is
    started here, once the run directory is known to be usable.

    Returns:
        The run's config and the trained model.

    Raises:
        RunDirError: when the run directory holds an incompatible run.
        Interrupted: after a signal, once the checkpoint is saved.
    """
    if resume not in RESUME_MODES:
        raise ConfigError(f"--resume: {resume!r}; choose {' or '.join(RESUME_MODES)}")
    saved_config = prepare_run_dir(run_dir, resume, overwrite)
    if saved_config is not None:
        check_compatible(saved_config, config)
    mesh = distributed.make_mesh()
    if config.train.batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is not divisible by "
            f"the {mesh.size} devices"
        )
    main = distributed.is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tracker is not None:
            tracker.start(config, run_dir)
    trainer = build_trainer(config, mesh)
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.train.keep_checkpoints)
    finished = False
    try:
        progress, restored_step = _restore(checkpoints, trainer)
        history = list(progress.completed_stages) + ([progress.stage] if progress.stage else [])
        todo = [s for s in config.data.stages if s not in progress.completed_stages]
        stages = history + [s for s in todo if s not in history]
        run_config = _with_stages(config, stages)
        if main:
            dump_yaml(run_config, run_dir / "config.yaml")
        store, catalog, splits = load_splits(run_config.data)
        log.info(
            "data: %s, stages %s, %d images",
            store.description,
            ",".join(stages),
            len(catalog.records),
        )
        log_split_counts(splits)
        if main:
            write_split_manifest(run_dir, splits)
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
            log.info("stages %s are already trained in %s", ",".join(config.data.stages), run_dir)
        loop = _Loop(
            config, run_config, run_dir, mesh, trainer, checkpoints, store, splits, progress
        )
        loop.metrics.tracker = tracker
        try:
            for stage in todo:
                if not loop.train_stage(stage, restored_step if stage == progress.stage else None):
                    break
        finally:
            loop.log_skips()
        checkpoints.wait()  # the last checkpoint is on disk before the export is written
        model_state, _ = trainer.parts()
        export_model(run_dir, run_config, model_state)
        finished = True
    finally:
        checkpoints.close(raise_errors=finished)
    return TrainResult(run_config, trainer.model_and_optimizers()[0])


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
        "resuming from checkpoint %d (stage %s, epoch %d, step %d of the epoch)",
        step,
        progress.stage or "-",
        progress.epoch,
        progress.step_in_epoch,
    )
    return progress, step


class _Loop:
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
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=distributed.is_main_process())
        self.last_save = time.monotonic()
        self.pending: list[Any] = []
        """Per-step loss terms (device arrays) not yet checked for NaN/inf."""
        self.pending_first_step = 0
        self.skips: dict[tuple[str, str], SkipLog] = {}
        """(split, stage) -> images skipped, for the summary at the end of the run."""
        self.meta_base = {
            "config": to_dict(run_config),
            "config_hash": config_hash(config),
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
        trained = set(p.completed_stages) | {stage}
        train_skips = self.skips.setdefault(("train", stage), SkipLog())
        val_skips = self.skips.setdefault(("validation", stage), SkipLog())
        train_source = self._source([r for r in self.splits.train if r.stage == stage], train_skips)
        val_source = self._source([r for r in self.splits.val if r.stage in trained], val_skips)
        shard = distributed.process_shard()
        local_batch = cfg.train.batch_size // shard[1]
        data_iter = iter(
            train_dataset(
                train_source, local_batch, stage_seed(cfg, stage), cfg.data.num_threads, shard=shard
            )
        )
        if resume_step is not None:
            self.checkpoints.restore_iterator(resume_step, data_iter)
        # Every process takes the same number of steps (shards differ by at most one image).
        steps_per_epoch = max(1, len(train_source) // shard[1] // local_batch)
        log.info(
            "stage %s: %d training images, %d steps per epoch, %d epochs",
            stage,
            len(train_source),
            steps_per_epoch,
            cfg.train.epochs,
        )
        with stop_on_signals() as stop:
            while p.epoch < cfg.train.epochs:
                self._epoch(data_iter, steps_per_epoch, stop)
                cut = p.step_in_epoch < steps_per_epoch  # train.max_steps reached mid-epoch
                val = validation_loss(self.trainer, val_source, self.config, self.mesh, p.step)
                self._check_finite([val], p.step, what="validation loss")
                if not cut:
                    p.epoch, p.step_in_epoch = p.epoch + 1, 0
                if p.best_val_loss is None or val["val_loss"] < p.best_val_loss:
                    p.best_val_loss, p.best_step = val["val_loss"], p.step
                self.metrics.write(
                    {"step": p.step, "stage": stage, "epoch": p.epoch + int(cut), **val}
                )
                log.info(
                    "stage %s epoch %d/%d: step %d, validation loss %.5f",
                    stage,
                    p.epoch + int(cut),
                    cfg.train.epochs,
                    p.step,
                    val["val_loss"],
                )
                self._save(data_iter, val["val_loss"])
                if cut:
                    log.info("train.max_steps=%d reached", cfg.train.max_steps)
                    return False
        p.completed_stages.append(stage)
        p.stage, p.epoch = "", 0
        self._save(data_iter, None)
        return True

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

    def _epoch(self, data_iter: Any, steps_per_epoch: int, stop: StopFlag) -> None:
        cfg, p = self.config.train, self.progress
        steps = steps_per_epoch - p.step_in_epoch
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps - p.step)
        bar = tqdm(
            total=steps_per_epoch,
            initial=p.step_in_epoch,
            unit="step",
            file=sys.stderr,
            desc=f"{p.stage} epoch {p.epoch + 1}/{cfg.epochs}",
            dynamic_ncols=True,
        )
        window_start, window_images, self.pending = time.perf_counter(), 0, []
        for _ in range(steps):
            batch = next(data_iter)
            images = distributed.global_batch(batch["image"], self.mesh)
            self.trainer.state, metrics = self.trainer.train_step(
                self.trainer.state, images, np.uint32(p.step)
            )
            if not self.pending:
                self.pending_first_step = p.step + 1
            p.step += 1
            p.step_in_epoch += 1
            window_images += images.shape[0]
            self.pending.append(metrics)
            bar.update(1)
            if p.step % cfg.log_every == 0:
                host = jax.device_get(self.pending)
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
                    lr=getattr(self.config.model, self.config.model.name).learning_rate,
                    **resource_metrics(),
                )
                self.metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                window_start, window_images, self.pending = time.perf_counter(), 0, []
            images_every = self.config.tracking.images_every
            if self.metrics.tracker is not None and images_every and p.step % images_every == 0:
                self._log_samples(images)
            if self._save_due():
                self._save(data_iter, None)
            if stop.signal is not None:
                bar.close()
                self._save(data_iter, None)
                raise Interrupted(
                    f"stopped by {signal.Signals(stop.signal).name} at step {p.step}", stop.signal
                )
        bar.close()

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
            lr = getattr(self.config.model, family).learning_rate
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

    def _save_due(self) -> bool:
        cfg = self.config.train
        by_steps = (
            cfg.checkpoint_every_steps and self.progress.step % cfg.checkpoint_every_steps == 0
        )
        minutes = (time.monotonic() - self.last_save) / 60
        by_time = cfg.checkpoint_every_minutes > 0 and minutes >= cfg.checkpoint_every_minutes
        return bool(by_steps or by_time)

    def _save(self, data_iter: Any, val_loss: float | None) -> None:
        if self.pending:  # never checkpoint a model whose last steps went NaN
            self._check_finite(jax.device_get(self.pending), self.pending_first_step)
        model_state, opt_state = self.trainer.parts()
        meta = {**self.meta_base, "progress": vars(self.progress).copy()}
        self.checkpoints.save(self.progress.step, model_state, opt_state, data_iter, meta, val_loss)
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
    export = run_dir / "export"
    staging = run_dir / "export.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with distributed.local_checkpointer() as checkpointer:
        checkpointer.save(staging.absolute() / "model", host_state)
        checkpointer.wait_until_finished()
    dump_yaml(config, staging / "config.yaml")
    shutil.rmtree(export, ignore_errors=True)
    staging.rename(export)


def train_and_evaluate(
    config: Config, run_dir: Path, *, resume: str = "auto", overwrite: bool = False
) -> dict[str, Any] | None:
    """Train (or continue) the run, export the final model and evaluate it on the test split.

    In a multi-host run only process 0 evaluates (from the export); the others wait for it.

    Returns:
        The test metrics written to ``run_dir/eval/metrics.json`` (``None`` on processes
        other than 0).
    """
    from jax.experimental import multihost_utils

    from imgae_dx_jax.evaluate import evaluate_run

    main = distributed.is_main_process()
    tracker = Tracker.from_config(
        config.tracking, job_type="train", mode=None if main else "disabled"
    )
    with tracker:
        train(config, run_dir, resume=resume, overwrite=overwrite, tracker=tracker)
        metrics = evaluate_run(run_dir, tracker=tracker) if main else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("imgae_dx_jax evaluated")
    return metrics


if __name__ == "__main__":
    from imgae_dx_jax.cli import train_main

    sys.exit(train_main())
