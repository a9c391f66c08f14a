"""The run directory: its layout and every file in it, read and written here only.

::

    <run>/config.yaml        the resolved config, data.stages = every stage trained so far
    <run>/checkpoints/<step> full training state (:mod:`imgae_dx_jax.checkpoints`), written
                             there or, with ``train.local_checkpoint_dir``, copied there
    <run>/splits.json        the images of each split (held-out checks of evaluation)
    <run>/metrics.jsonl      the training log
    <run>/export/model       the inference export (:func:`imgae_dx_jax.checkpoints.export_model`)
    <run>/export/config.yaml its config
    <run>/export/threshold.json  the validation-chosen image score, threshold, overlay scale
    <run>/eval/              the evaluation report (``eval-<source>/`` on other data)

:func:`read_config` is the one reader of a run's ``config.yaml`` (training's resume and the
export): keys added to the package since the run was made take their current defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgae_dx_jax import __version__
from imgae_dx_jax.config import from_dict, load_config, to_dict
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.split import SPLITS, Splits
from imgae_dx_jax.errors import ConfigError, FinishedRunError, RunDirError, RunError
from imgae_dx_jax.schema import MODELS, Config
from imgae_dx_jax.tracking import Tracker

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
SPLIT_MANIFEST = "splits.json"
TRAINING_LOG = "metrics.jsonl"
EXPORT = "export"
EXPORT_MODEL = "model"
THRESHOLD = "threshold.json"
RESUME_MODES = ("auto", "never")
_SAFE_MODEL_KEYS = (
    "learning_rate",
    "noise_roll",
    "noise",
    "patches",
    "patch_side",
    "patch_alpha",
    "validations_per_epoch",
)
_MODEL_NEUTRAL_SECTIONS = ("eval", "run", "tracking")
_MODEL_NEUTRAL_KEYS = (
    "data.source",
    "data.path",
    "data.stages",
    "data.cache",
    "data.cache_dir",
    "data.num_threads",
    "data.retries",
    "data.timeout",
    "model.fast_path",
    "train.log_every",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "train.shard_params",
    "train.compilation_cache",
    "train.local_checkpoint_dir",
)
"""Settings that leave the trained model as it is (with every section in
``_MODEL_NEUTRAL_SECTIONS`` and the settings of the other model families): where the data is
read from and cached, logging and checkpoint cadence, same-math layouts, evaluation and
tracking. Any other setting shapes the model (learning rate, epochs, step budget, precision,
...), new ones included."""
_BUDGET_KEYS = ("train.epochs", "train.max_steps")
"""Settings that shape the model by how long it trains: changing them is how a run trains on."""
_LEGACY_VALUES: dict[tuple[str, ...], Any] = {
    ("data", "intensity"): "none",
    ("train", "lr_schedule"): "constant",
    ("train", "select_checkpoint"): "last",
    ("eval", "border"): 0.0,
    ("model", "ae", "uncertainty"): False,
    ("model", "ra", "validations_per_epoch"): 1,
    ("model", "unet", "patches"): 1,
    ("model", "unet", "patch_side"): (0.1, 0.4),
    ("model", "unet", "patch_alpha"): (0.0, 1.0),
}
"""Settings whose behaviour before they existed differs from their default today: a run made
before them gets these values, not the defaults."""


def default_run_dir(config: Config) -> Path:
    """``<run.root>/<model>``: re-running the same command continues the same run."""
    return Path(config.run.root) / config.model.name


def checkpoints_dir(run_dir: Path) -> Path:
    """``<run>/checkpoints``."""
    return run_dir / CHECKPOINTS


def local_checkpoints_dir(run_dir: Path, config: Config) -> Path | None:
    """Where checkpoints are written before they are copied to :func:`checkpoints_dir`.

    ``<train.local_checkpoint_dir>/<run name>-<hash of the run directory's path>``, one per
    run directory; None when ``train.local_checkpoint_dir`` is ``""``.
    """
    if not config.train.local_checkpoint_dir:
        return None
    path_hash = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    root = Path(config.train.local_checkpoint_dir).expanduser()
    return root / f"{run_dir.resolve().name}-{path_hash}"


def export_dir(run_dir: Path) -> Path:
    """``<run>/export``: the inference export (model state, config, threshold)."""
    return run_dir / EXPORT


def export_staging_dir(run_dir: Path) -> Path:
    """``<run>/export.tmp``, renamed to :func:`export_dir` once complete."""
    return run_dir / f"{EXPORT}.tmp"


def eval_dir(run_dir: Path, source: str | None = None) -> Path:
    """``<run>/eval`` (``<run>/eval-<source>`` for an evaluation on other data)."""
    return run_dir / ("eval" if source is None else f"eval-{source}")


def make_out_dir(path: Path) -> None:
    """Create the output directory ``path`` of a command (and its parents) if missing.

    Called before any model work, so that an unusable ``--out`` fails at once.

    Raises:
        ConfigError: when it cannot be created: a file of that name, a path under a file,
            or no permission.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot write to {path}: {err}; give another directory with --out"
        ) from None


# ------------------------------------------------------------------------------------ config


def read_config(path: Path) -> Config:
    """Read a run's ``config.yaml``, migrated to this version of the package.

    Keys added to the package after the run was made (a new section such as ``tracking``, or
    a new setting) take their current default values, which are logged, except those that
    changed behaviour (``data.intensity``: ``none`` before it existed); every key the run has
    must still be valid.
    """
    tree = yaml.safe_load(path.read_text())
    legacy = []
    for path_keys, value in _LEGACY_VALUES.items():
        *sections, key = path_keys
        node = tree
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and key not in node:
            node[key] = value
            legacy.append(f"{'.'.join(path_keys)}={value}")
    if legacy:
        log.info("%s predates these settings; keeping its behaviour: %s", path, ", ".join(legacy))
    added = _fill_missing(tree, to_dict(load_config()))
    if added:
        log.info("%s predates these settings; using their defaults: %s", path, ", ".join(added))
    return from_dict(tree, str(path))


def _fill_missing(tree: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Add the keys of ``defaults`` that ``tree`` lacks, in place; return their dotted names."""
    added = []
    for key, value in defaults.items():
        if key not in tree:
            tree[key] = value
            added.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(tree[key], dict):
            added += _fill_missing(tree[key], value, f"{prefix}{key}.")
    return added


def write_config(config: Config, directory: Path) -> None:
    """Write ``<directory>/config.yaml`` (a run directory or its export).

    The resolved configuration as YAML, headed by the package version; written beside the
    file and renamed over it, so a crash leaves the previous file or the new one, whole.
    """
    header = f"# imgae-dx-jax {__version__}\n"
    path = directory / CONFIG
    staging = path.with_name(f".{CONFIG}.tmp")
    staging.write_text(header + yaml.safe_dump(to_dict(config), sort_keys=False))
    staging.replace(path)


def load_export_config(run_dir: Path) -> Config:
    """The configuration of a run's inference export (:func:`read_config`).

    Raises:
        RunError: when the run has no export (it was not trained to the end).
    """
    path = export_dir(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a run directory of a trained model (no export/config.yaml)"
        )
    return read_config(path)


def config_hash(config: Config) -> str:
    """Return a short stable hash of the resolved configuration."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ resume


def prepare(run_dir: Path, resume: str, overwrite: bool) -> Config | None:
    """Check the run directory for ``resume``; return the saved config when resuming.

    Raises:
        RunDirError: when it cannot be used as asked.
    """
    saved = run_dir / CONFIG
    checkpoints = checkpoints_dir(run_dir)
    has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if resume == "auto":
        if has_checkpoints and saved.is_file():
            return read_config(saved)
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


def identity_settings(config: Config) -> dict[str, Any]:
    """Settings a resumed run must share with its checkpoints (shapes, input, order, split)."""
    family = to_dict(config.model.family)
    out = {
        f"model.{config.model.name}.{k}": v for k, v in family.items() if k not in _SAFE_MODEL_KEYS
    }
    out.update(
        {
            "model.name": config.model.name,
            "data.image_size": config.data.image_size,
            "data.intensity": config.data.intensity,
            "data.patient_pattern": config.data.patient_pattern,
            "data.split": list(config.data.split),
            "data.split_seed": config.data.split_seed,
            "data.official_split": config.data.official_split,
            "train.batch_size": config.train.batch_size,
            "train.seed": config.train.seed,
            # they decide the optimiser state's structure
            "train.optimizer": config.train.optimizer,
            "train.weight_decay": config.train.weight_decay,
            "train.lr_schedule": config.train.lr_schedule,
        }
    )
    return out


def check_compatible(saved: Config, new: Config, *, trains: bool) -> None:
    """Refuse a resume whose changed settings cannot, or would not, take effect; log the rest.

    The settings of :func:`identity_settings` must never change. The other settings that shape
    the model (learning rate, epochs, step budget, precision, ...) may change while training
    continues: they apply to the steps still to train, which a warning says (the training
    length, ``train.epochs`` and ``train.max_steps``, is only logged). But when the rerun
    trains nothing (``trains`` is False: every stage is done, or the step budget spent), such a
    change would have no effect, and the old model would be evaluated as if trained with it,
    so it is refused. Settings that leave the model as it is (evaluation, tracking, where the
    data is, logging and checkpoint cadence) may always change.

    Args:
        saved: the run's configuration (its ``config.yaml``).
        new: the configuration of the rerun.
        trains: whether the rerun trains any step
            (:meth:`imgae_dx_jax.training.loop.Progress.trains`).

    Raises:
        RunDirError: naming every setting of :func:`identity_settings` that differs.
        FinishedRunError: when nothing trains, naming every changed setting that shapes the
            model.
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
    changed = {k: (flat_old.get(k), v) for k, v in sorted(flat_new.items()) if flat_old.get(k) != v}
    shaping = [k for k in changed if not _leaves_model(k, new.model.name)]
    if shaping and not trains:
        raise FinishedRunError(
            "this run directory holds a finished run (its stages are trained, or "
            "train.max_steps is reached): nothing would train, so these changed settings would "
            "not take effect, and its old model would be evaluated as if they had:\n  "
            + "\n  ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in shaping)
            + "\nTrain a new run with them: use another --run-dir, or --resume never "
            "--overwrite to replace this one. (To train this run further, raise --epochs or "
            "train.max_steps, or add stages.)"
        )
    for key, (old, value) in changed.items():
        if key in shaping and key not in _BUDGET_KEYS:
            log.warning(
                "continuing training with a changed setting %s: %r -> %r "
                "(the steps already trained used the old value)",
                key,
                old,
                value,
            )
        elif key != "data.stages":
            log.info("resuming with a changed setting %s: %r -> %r", key, old, value)


def _leaves_model(key: str, model: str) -> bool:
    """Whether the dotted setting ``key`` leaves a trained ``model`` as it is."""
    section, _, rest = key.partition(".")
    family = rest.partition(".")[0]
    return (
        section in _MODEL_NEUTRAL_SECTIONS
        or key in _MODEL_NEUTRAL_KEYS
        or (section == "model" and family in MODELS and family != model)
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ------------------------------------------------------------------------------ split manifest


def write_split_manifest(run_dir: Path, splits: Splits) -> None:
    """Record which images each split holds, so evaluation can check it sees the same split."""
    manifest = {name: sorted(r.key for r in splits[name]) for name in SPLITS}
    (run_dir / SPLIT_MANIFEST).write_text(json.dumps(manifest))


def check_split_manifest(run_dir: Path, name: str, records: Sequence[Record]) -> None:
    """Fail if the data now gives a different ``name`` split than the run was trained with."""
    expected = _manifest(run_dir)[name]
    if sorted(r.key for r in records) != expected:
        raise RunError(
            f"the {name} split of the data differs from the one {run_dir} was trained with "
            f"({len(records)} vs {len(expected)} images): evaluating would not be held out"
        )


def check_held_out(run_dir: Path, splits: Splits, data: str) -> None:
    """Fail if other data's evaluation would use images the run was trained or chosen on.

    No validation or test image may be in the run's training split, and no test image in its
    validation split (which chose its model). Images are the same when their keys are (NIH
    file names; paths in an image folder). An image whose file name is that of a training
    image in another folder (an image folder laid out anew) may be the same image: it is
    counted in a warning, as two data sets may also name different images alike.
    """
    manifest = _manifest(run_dir)
    trained = set(manifest["train"])
    validated = set(manifest["val"])
    chose = [r.key for r in splits.test if r.key in validated]
    if chose:
        raise RunError(
            f"{len(chose)} images of the test split of {data} (e.g. {chose[0]}) are in the "
            f"validation split of {run_dir}, which chose its model: the evaluation would not "
            "be held out"
        )
    trained_names = {key.rsplit("/", 1)[-1] for key in trained}
    for name in ("val", "test"):
        seen = [r.key for r in splits[name] if r.key in trained]
        if seen:
            raise RunError(
                f"{len(seen)} images of the {name} split of {data} (e.g. {seen[0]}) were used "
                f"to train {run_dir}: the evaluation would not be held out"
            )
        alike = [r.key for r in splits[name] if r.key.rsplit("/", 1)[-1] in trained_names]
        if alike:
            log.warning(
                "%d images of the %s split of %s (e.g. %s) have the file names of images that "
                "trained %s: if they are the same images, this evaluation is not held out",
                len(alike),
                name,
                data,
                alike[0],
                run_dir,
            )


def _manifest(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / SPLIT_MANIFEST
    if not path.is_file():
        raise RunError(f"{run_dir} has no splits.json; cannot verify the held-out split")
    manifest: dict[str, list[str]] = json.loads(path.read_text())
    return manifest


# ---------------------------------------------------------------------------------- threshold


@dataclass(frozen=True)
class Calibration:
    """What evaluation chose on the validation split and stores with the export."""

    threshold: float
    map_scale: float
    score: str
    """The image score (a name of :data:`~imgae_dx_jax.schema.SCORES`)."""
    rule: str
    """How the threshold was chosen, in words."""
    score_aurocs: dict[str, float]
    """Validation AUROC of every candidate score (empty for files of older versions)."""


def write_calibration(run_dir: Path, calibration: Calibration, n_val_images: int) -> None:
    """Write ``<run>/export/threshold.json`` (chosen on the validation split)."""
    (export_dir(run_dir) / THRESHOLD).write_text(
        json.dumps(
            {
                "threshold": calibration.threshold,
                "chosen_on": f"validation split, {calibration.rule}",
                "n_val_images": n_val_images,
                "score": calibration.score,
                "score_chosen_on": "validation split, AUROC of each candidate",
                "score_aurocs": calibration.score_aurocs,
                "map_scale": calibration.map_scale,
                "map_scale_is": "95th percentile of the anomaly-map maxima of normal "
                "validation images (overlays saturate there)",
            },
            indent=2,
        )
    )


def load_calibration(run_dir: Path) -> Calibration:
    """Read ``<run>/export/threshold.json``.

    A file written before the image score was chosen holds the threshold of the ``mean``
    score, which it is read as.

    Raises:
        RunError: when the run has not been evaluated (with this version) yet.
    """
    path = export_dir(run_dir) / THRESHOLD
    if not path.is_file():
        raise RunError(
            f"{run_dir} has no validation threshold yet: run `imgae-evaluate --run {run_dir}` first"
        )
    values = json.loads(path.read_text())
    if "map_scale" not in values:
        raise RunError(
            f"{path} was written by an older version: run `imgae-evaluate --run {run_dir}` again"
        )
    return Calibration(
        float(values["threshold"]),
        float(values["map_scale"]),
        values.get("score", "mean"),
        values.get("chosen_on", "maximum F1").removeprefix("validation split, "),
        values.get("score_aurocs", {}),
    )


# ------------------------------------------------------------------------------- training log


class TrainingLog:
    """Appends JSON lines to ``<run>/metrics.jsonl``."""

    def __init__(
        self, run_dir: Path, *, enabled: bool = True, tracker: Tracker | None = None
    ) -> None:
        self.path = run_dir / TRAINING_LOG
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


def read_training_log(run_dir: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``<run>/metrics.jsonl`` (empty when the file is missing)."""
    path = run_dir / TRAINING_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
