"""Evaluation: score trained runs on held-out patients, compare them, write the report.

``python -m imgae_dx_jax.evaluate --run runs/<name>`` (= ``imgae-evaluate``) loads the run's
inference export, scores every validation and test image (per-image mean of the anomaly
map), picks the operating threshold on the *validation* split, and reports the test split
in ``<run>/eval/``: ``metrics.json``, ``scores.csv`` (one row per test image), figures and
``report.md`` / ``report.html``. The calibrated threshold is stored with the export
(``<run>/export/threshold.json``) for :mod:`imgae_dx_jax.predict`.

``--run A --run B [--out DIR]`` compares runs on the same test split (checked): per model
AUROC and AUPRC with 95% patient-level stratified bootstrap intervals, FPR at 95% TPR, F1,
per-finding and subgroup AUROC, localization against NIH boxes; between models the paired
DeLong test. ``--source/--data`` evaluate the runs on other data of the same layout, after
checking that none of its validation or test images were trained on.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax.config import Config, DataConfig, from_dict, load_config, to_dict, with_overrides
from imgae_dx_jax.data import Catalog, DataError, Splits, Store, load_splits
from imgae_dx_jax.data.nih import FINDINGS, Record
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset
from imgae_dx_jax.metrics import (
    average_precision,
    bootstrap_ci,
    delong_test,
    image_metrics,
    localization_metrics,
    roc_auc,
    select_threshold,
)
from imgae_dx_jax.models import create_model
from imgae_dx_jax.scoring import anomaly_maps, image_scores
from imgae_dx_jax.tracking import Tracker

log = logging.getLogger(__name__)

BOX_SCALE = 1024
"""NIH boxes are in the pixel coordinates of the original 1024x1024 images."""
CURVE_GRID = np.linspace(0.0, 1.0, 101)
"""FPR (ROC) and recall (PR) values at which bootstrap curve bands are computed."""
AGE_BANDS = ((0, 17), (18, 39), (40, 59), (60, 79), (80, 200))
MIN_BOOTSTRAP = 1000


class RunError(RuntimeError):
    """A run directory is missing, incomplete, or does not match the data it is evaluated on."""


@dataclass(frozen=True)
class SplitScores:
    """Anomaly scores of the readable images of one split, in catalog order.

    ``images``, ``reconstructions`` and ``maps`` ([N, H, W]) are only kept when asked for.
    """

    records: tuple[Record, ...]
    scores: np.ndarray
    peaks: np.ndarray
    """Per-image maximum of the anomaly map."""
    skipped: dict[str, int]
    images: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    maps: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """1 = abnormal, 0 = normal."""
        return np.array([r.label for r in self.records], dtype=np.int32)

    @property
    def patients(self) -> np.ndarray:
        """Patient id of each image (the bootstrap's resampling unit)."""
        return np.array([r.patient for r in self.records])


def load_run_config(run_dir: Path) -> Config:
    """Read the configuration of a run's inference export.

    Keys added to the package after the run was trained (a new section such as
    ``tracking``, or a new setting) take their current default values, which are logged;
    every key the run has must still be valid.
    """
    path = run_dir / "export" / "config.yaml"
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a run directory of a trained model (no export/config.yaml)"
        )
    tree = yaml.safe_load(path.read_text())
    added = _fill_missing(tree, to_dict(load_config()))
    if added:
        log.info("%s predates these settings; using their defaults: %s", run_dir, ", ".join(added))
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


def restore_model(run_dir: Path, config: Config) -> nnx.Module:
    """Load the run's inference export (``<run>/export/model``) without any training state."""
    path = (run_dir / "export" / "model").absolute()
    if not path.is_dir():
        raise RunError(f"{run_dir} has no exported model yet (train it first)")
    abstract = nnx.eval_shape(
        lambda: create_model(config.model, config.data.image_size, rngs=nnx.Rngs(0))
    )
    graphdef, target = nnx.split(abstract)
    with distributed.local_checkpointer() as checkpointer:
        state = checkpointer.restore(path, target)
    return nnx.merge(graphdef, state)


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a short last batch to ``batch_size`` by repeating its first image (fixed shapes)."""
    if len(images) == batch_size:
        return images
    return np.concatenate([images, np.repeat(images[:1], batch_size - len(images), axis=0)])


@dataclass(frozen=True)
class Inference:
    """Model outputs for a batch of images; the arrays are None unless kept."""

    scores: np.ndarray
    peaks: np.ndarray
    reconstructions: np.ndarray | None
    maps: np.ndarray | None


class Scorer:
    """A model's anomaly maps and scores, compiled once, run in fixed-size batches."""

    def __init__(self, model: nnx.Module, config: Config) -> None:
        """Split the model and compile its scoring function for ``config.eval.batch_size``."""
        graphdef, self._state = nnx.split(model)
        self.batch_size = config.eval.batch_size

        @jax.jit
        def run(state: Any, images: jax.Array) -> tuple[jax.Array, ...]:
            model = nnx.merge(graphdef, state)
            x_hat, maps = anomaly_maps(model, images.astype(jnp.float32) / 255.0, config.model)
            return image_scores(maps), jnp.max(maps, axis=(1, 2)), x_hat[..., 0], maps

        self._run = run

    def __call__(self, images: np.ndarray, *, keep_maps: bool = False) -> Inference:
        """Score uint8 images ``[N, size, size, 1]`` (N >= 1).

        Args:
            images: the images, already decoded and resized to the model's size.
            keep_maps: also return the reconstructions and anomaly maps ([N, H, W]).

        Returns:
            Per-image scores and map maxima, and the maps if asked for.
        """
        parts: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            outputs = self._run(self._state, pad_batch(chunk, self.batch_size))
            wanted = outputs if keep_maps else outputs[:2]
            parts.append(tuple(np.asarray(x)[: len(chunk)] for x in wanted))
        joined = [np.concatenate(column) for column in zip(*parts, strict=True)]
        return Inference(
            joined[0].astype(np.float64),
            joined[1].astype(np.float64),
            joined[2] if keep_maps else None,
            joined[3] if keep_maps else None,
        )


def score_split(
    scorer: Scorer,
    config: Config,
    records: Sequence[Record],
    store: Store,
    *,
    keep_maps: bool = False,
) -> SplitScores:
    """Score every readable image of ``records`` (unreadable ones are skipped and counted).

    Args:
        scorer: the model's :class:`Scorer`.
        config: the run's config (image size, batch size, decoding threads).
        records: the images to score.
        store: where their bytes are.
        keep_maps: also keep the images, reconstructions and anomaly maps.

    Returns:
        The scores of the readable images, in the order of ``records``.
    """
    skips = SkipLog()
    source = ImageSource(records, store, config.data.image_size, skips)
    indices: list[np.ndarray] = []
    results: list[Inference] = []
    images: list[np.ndarray] = []
    for batch in eval_dataset(source, scorer.batch_size, config.data.num_threads):
        results.append(scorer(batch["image"], keep_maps=keep_maps))
        indices.append(batch["index"])
        if keep_maps:
            images.append(batch["image"][..., 0])
    order = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
    kept = tuple(source.records[i] for i in order)

    def join(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results]) if results else np.zeros(0)

    return SplitScores(
        kept,
        join("scores"),
        join("peaks"),
        skips.by_reason(),
        np.concatenate(images) if keep_maps and images else None,
        join("reconstructions") if keep_maps else None,
        join("maps") if keep_maps else None,
    )


def check_split_manifest(run_dir: Path, name: str, records: Sequence[Record]) -> None:
    """Fail if the data now gives a different ``name`` split than the run was trained with."""
    expected = _manifest(run_dir)[name]
    if sorted(r.key for r in records) != expected:
        raise RunError(
            f"the {name} split of the data differs from the one {run_dir} was trained with "
            f"({len(records)} vs {len(expected)} images): evaluating would not be held out"
        )


def check_held_out(run_dir: Path, splits: Splits, data: str) -> None:
    """Fail if any validation or test image of other data was in the run's training split."""
    trained = set(_manifest(run_dir)["train"])
    for name in ("val", "test"):
        seen = [r.key for r in splits[name] if r.key in trained]
        if seen:
            raise RunError(
                f"{len(seen)} images of the {name} split of {data} (e.g. {seen[0]}) were used "
                f"to train {run_dir}: the evaluation would not be held out"
            )


def _manifest(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / "splits.json"
    if not path.is_file():
        raise RunError(f"{run_dir} has no splits.json; cannot verify the held-out split")
    return json.loads(path.read_text())


def write_scores_csv(path: Path, split: SplitScores) -> None:
    """Write one row per scored image: image, patient, label, findings, score."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient", "label", "findings", "score"])
        for record, score in zip(split.records, split.scores, strict=True):
            writer.writerow(
                [record.key, record.patient, record.label, _findings(record), f"{score:.8g}"]
            )


def _findings(record: Record) -> str:
    return "|".join(record.findings) or "No Finding"


# ---------------------------------------------------------------------------------------------
# Metrics beyond the headline numbers


@dataclass(frozen=True)
class Band:
    """A curve of the full test split and its pointwise 95% bootstrap band on a grid."""

    x: np.ndarray
    y: np.ndarray
    grid: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct score taken as the threshold, highest first."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    last = np.concatenate((np.flatnonzero(ranked[1:] != ranked[:-1]), [ranked.size - 1]))
    tp = np.cumsum(labels[order])[last]
    return tp, last + 1 - tp


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` from (0, 0) through every distinct threshold (lines join them)."""
    tp, fp = _cumulative_counts(labels, scores)
    n_pos = labels.sum()
    return np.concatenate(([0.0], fp / (labels.size - n_pos))), np.concatenate(([0.0], tp / n_pos))


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve ``(recall, precision)``, recall ascending from 0.

    Drawn as steps (``steps-pre``) its area is the AUPRC of
    :func:`imgae_dx_jax.metrics.average_precision`.
    """
    tp, fp = _cumulative_counts(labels, scores)
    precision = tp / (tp + fp)
    return np.concatenate(([0.0], tp / labels.sum())), np.concatenate((precision[:1], precision))


def roc_at(labels: np.ndarray, scores: np.ndarray, grid: np.ndarray = CURVE_GRID) -> np.ndarray:
    """Highest TPR reached at FPR <= each grid value."""
    fpr, tpr = roc_points(labels, scores)
    return tpr[np.searchsorted(fpr, grid, side="right") - 1]


def precision_at(
    labels: np.ndarray, scores: np.ndarray, grid: np.ndarray = CURVE_GRID
) -> np.ndarray:
    """Interpolated precision (best precision at recall >= r) at each grid recall."""
    recall, precision = pr_points(labels, scores)
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.minimum(np.searchsorted(recall, grid, side="left"), recall.size - 1)
    return best_after[index]


def bootstrap_band(
    split: SplitScores,
    metric: Callable[[np.ndarray, np.ndarray], float],
    curve: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_resamples: int,
    seed: int,
) -> tuple[tuple[float, float], np.ndarray, np.ndarray]:
    """95% CI of ``metric`` and pointwise band of ``curve`` from the same bootstrap resamples.

    The resampling is :func:`imgae_dx_jax.metrics.bootstrap_ci` (patients, stratified by
    whether they have an abnormal image); ``curve`` is recorded on each resample it draws.

    Returns:
        ``((low, high), band_low, band_high)``.
    """
    curves: list[np.ndarray] = []

    def recorded(labels: np.ndarray, scores: np.ndarray) -> float:
        curves.append(curve(labels, scores))
        return metric(labels, scores)

    ci = bootstrap_ci(
        split.labels, split.scores, split.patients, recorded, n_resamples=n_resamples, seed=seed
    )
    low, high = np.quantile(np.stack(curves), [0.025, 0.975], axis=0)
    return ci, low, high


def _auroc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return roc_auc(labels, scores) if 0 < labels.sum() < labels.size else None


def per_finding(split: SplitScores) -> list[dict[str, Any]]:
    """AUROC of each NIH finding (images with it, possibly among others) vs. the normals."""
    labels, normal = split.labels, split.labels == 0
    rows = []
    for finding in FINDINGS:
        has = np.array([finding in r.findings for r in split.records], dtype=bool)
        keep = has | normal
        rows.append(
            {
                "finding": finding,
                "n_abnormal": int(has.sum()),
                "n_normal": int(normal.sum()),
                "auroc": _auroc_or_none(labels[keep], split.scores[keep]) if has.any() else None,
            }
        )
    return rows


def age_band(age: int) -> str:
    """``18-39`` style band of an age in years; ``unknown`` for a missing age (-1)."""
    for low, high in AGE_BANDS:
        if low <= age <= high:
            return f"{low}+" if high >= 200 else f"{low}-{high}"
    return "unknown"


SUBGROUPS: dict[str, Callable[[Record], str]] = {
    "view": lambda r: r.view or "unknown",
    "sex": lambda r: r.sex or "unknown",
    "age": lambda r: age_band(r.age),
}


def subgroups(split: SplitScores) -> list[dict[str, Any]]:
    """AUROC within each view position, sex and age band (None where a class is missing)."""
    rows = []
    labels = split.labels
    for group, key in SUBGROUPS.items():
        values = np.array([key(r) for r in split.records])
        for value in sorted(set(values.tolist())):
            keep = values == value
            rows.append(
                {
                    "group": group,
                    "value": value,
                    "n_normal": int((labels[keep] == 0).sum()),
                    "n_abnormal": int(labels[keep].sum()),
                    "auroc": _auroc_or_none(labels[keep], split.scores[keep]),
                }
            )
    return rows


def scaled_boxes(
    catalog: Catalog, key: str, image_size: int
) -> list[tuple[str, float, float, float, float]]:
    """NIH boxes of an image as ``(finding, x, y, w, h)`` in ``image_size`` pixels."""
    scale = image_size / BOX_SCALE
    return [
        (f, x * scale, y * scale, w * scale, h * scale)
        for f, x, y, w, h in catalog.boxes.get(key, ())
    ]


def localization(split: SplitScores, catalog: Catalog, image_size: int) -> dict[str, Any]:
    """Pixel AUROC inside vs. outside the NIH boxes and pointing game, on the boxed images.

    Args:
        split: scores of the test images that have boxes, with their maps kept.
        catalog: where the boxes are.
        image_size: side of the maps.

    Returns:
        :func:`imgae_dx_jax.metrics.localization_metrics` plus ``n_images_with_boxes``; when
        no box is usable the metrics are None and ``note`` says why.
    """
    boxes = [[b[1:] for b in scaled_boxes(catalog, r.key, image_size)] for r in split.records]
    out: dict[str, Any] = {"n_images_with_boxes": len(split.records)}
    if not split.records:
        return out | {
            "pixel_auroc": None,
            "pointing_game": None,
            "n_images": 0,
            "n_boxes": 0,
            "n_boxes_unusable": 0,
            "note": "no readable test image has an NIH box",
        }
    assert split.maps is not None
    try:
        return out | localization_metrics(list(split.maps), boxes)
    except ValueError as err:
        return out | {
            "pixel_auroc": None,
            "pointing_game": None,
            "n_images": 0,
            "n_boxes": 0,
            "n_boxes_unusable": sum(len(b) for b in boxes),
            "note": str(err),
        }


# ---------------------------------------------------------------------------------------------
# One model, several models


@dataclass
class ModelResult:
    """Everything the report needs about one evaluated run."""

    name: str
    run_dir: Path
    config: Config
    val: SplitScores
    test: SplitScores
    metrics: dict[str, Any]
    roc: Band
    pr: Band
    examples: SplitScores
    """A few test images with maps: typical, best and worst cases (see :func:`example_kinds`)."""
    example_kinds: tuple[str, ...]
    boxes: dict[str, list[tuple[str, float, float, float, float]]]
    """Scaled NIH boxes of the example images, by image name."""
    map_scale: float
    """Anomaly-map value at which overlays saturate (see :func:`map_scale`)."""
    split_counts: dict[str, dict[str, int]]


@dataclass
class Comparison:
    """The evaluated runs, the paired tests between them, and where the outputs went."""

    models: list[ModelResult]
    delong: list[dict[str, Any]]
    data: str
    bootstrap: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The combined ``metrics.json`` of a comparison."""
        return {
            "models": {m.name: m.metrics for m in self.models},
            "delong": self.delong,
            "data": self.data,
            "bootstrap": self.bootstrap,
            "test_split": self.models[0].split_counts["test"],
        }


def map_scale(split: SplitScores) -> float:
    """Overlay saturation level: the 95th percentile of the map maxima of normal images.

    A pixel shown at full colour is hotter than the hottest pixel of most normal images.
    """
    peaks = split.peaks[split.labels == 0]
    return float(np.quantile(peaks if peaks.size else split.peaks, 0.95)) or 1.0


def select_examples(split: SplitScores, boxed: set[str]) -> list[tuple[str, int]]:
    """Typical, best and worst test cases of each class, and the two top-scoring boxed images.

    Args:
        split: the scored test split.
        boxed: names of the test images that have NIH boxes.

    Returns:
        ``(kind, index into split.records)`` pairs: ``typical`` is the median score of the
        class; ``best`` is the lowest-scoring normal / highest-scoring abnormal image;
        ``worst`` the highest-scoring normal (false alarm) / lowest-scoring abnormal (miss);
        ``with box`` the highest-scoring images that have boxes, if not chosen already.
    """
    out = []
    for label, name in ((0, "normal"), (1, "abnormal")):
        idx = np.flatnonzero(split.labels == label)
        ordered = idx[np.argsort(split.scores[idx], kind="stable")]
        low, mid, high = ordered[0], ordered[len(ordered) // 2], ordered[-1]
        best, worst = (low, high) if label == 0 else (high, low)
        out += [
            (f"typical {name}", int(mid)),
            (f"best {name}", int(best)),
            (f"worst {name}", int(worst)),
        ]
    chosen = {i for _, i in out}
    with_box = [
        i
        for i in np.argsort(-split.scores, kind="stable")
        if split.records[i].key in boxed and i not in chosen
    ]
    return out + [("with box", int(i)) for i in with_box[:2]]


def evaluate_model(
    name: str,
    run_dir: Path,
    config: Config,
    loaded: tuple[Store, Catalog, Splits],
    *,
    own_data: bool,
    n_bootstrap: int,
    seed: int,
) -> ModelResult:
    """Score one run's validation and test splits and compute every per-model result.

    Args:
        name: display name of the run in tables and figures.
        run_dir: the run directory.
        config: its config (with the data overridden when evaluating other data).
        loaded: the store, catalog and splits of the data to evaluate on.
        own_data: True when the data is the run's own (the split must match ``splits.json``
            and the threshold is saved with the export); False for other data (no image of
            its validation or test split may have been trained on).
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        The per-model result; ``metrics`` holds what ``metrics.json`` reports.
    """
    store, catalog, splits = loaded
    if own_data:
        for split_name in ("val", "test"):
            check_split_manifest(run_dir, split_name, splits[split_name])
    else:
        check_held_out(run_dir, splits, store.description)
    scorer = Scorer(restore_model(run_dir, config), config)
    val = score_split(scorer, config, splits.val, store)
    test = score_split(scorer, config, splits.test, store)
    for part, skipped in (("validation", val.skipped), ("test", test.skipped)):
        if skipped:  # also in metrics.json under "skipped"
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            log.warning("%s: %s images skipped (%s)", part, sum(skipped.values()), reasons)
    for split_name, split in (("validation", val), ("test", test)):
        if len(set(split.labels.tolist())) < 2:
            raise DataError(
                f"the {split_name} split needs normal and abnormal images to evaluate; it has "
                f"{len(split.labels)} readable images of one class (use more stages)"
            )
    threshold = select_threshold(val.labels, val.scores)
    metrics = image_metrics(test.labels, test.scores, threshold)
    auroc_ci, roc_low, roc_high = bootstrap_band(test, roc_auc, roc_at, n_bootstrap, seed)
    auprc_ci, pr_low, pr_high = bootstrap_band(
        test, average_precision, precision_at, n_bootstrap, seed
    )
    fpr, tpr = roc_points(test.labels, test.scores)
    recall, precision = pr_points(test.labels, test.scores)
    boxed_records = [r for r in test.records if catalog.boxes.get(r.key)]
    boxed = score_split(scorer, config, boxed_records, store, keep_maps=True)
    size = config.data.image_size
    chosen = select_examples(test, {r.key for r in boxed_records})
    examples = score_split(
        scorer, config, [test.records[i] for _, i in chosen], store, keep_maps=True
    )
    kinds = tuple(kind for kind, _ in chosen)
    scale = map_scale(val)
    metrics.update(
        model=config.model.name,
        run=str(run_dir),
        auroc_ci=list(auroc_ci),
        auprc_ci=list(auprc_ci),
        threshold_source="validation split (max F1)",
        per_finding=per_finding(test),
        subgroups=subgroups(test),
        localization=localization(boxed, catalog, size),
        data=store.description,
        stages=list(config.data.stages),
        image_size=size,
        split_counts=splits.counts(),
        official_split=splits.official,
        skipped={"val": val.skipped, "test": test.skipped},
    )
    if own_data:
        (run_dir / "export" / "threshold.json").write_text(
            json.dumps(
                {
                    "threshold": threshold,
                    "chosen_on": "validation split, maximum F1",
                    "n_val_images": len(val.labels),
                    "map_scale": scale,
                    "map_scale_is": "95th percentile of the anomaly-map maxima of normal "
                    "validation images (overlays saturate there)",
                },
                indent=2,
            )
        )
    return ModelResult(
        name=name,
        run_dir=run_dir,
        config=config,
        val=val,
        test=test,
        metrics=metrics,
        roc=Band(fpr, tpr, CURVE_GRID, roc_low, roc_high),
        pr=Band(recall, precision, CURVE_GRID, pr_low, pr_high),
        examples=examples,
        example_kinds=kinds,
        boxes={r.key: scaled_boxes(catalog, r.key, size) for r in examples.records},
        map_scale=scale,
        split_counts=splits.counts(),
    )


def run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique display names: the directory names, with parents where they clash."""
    names = [p.name or str(p) for p in run_dirs]
    if len(set(names)) < len(names):
        names = [str(Path(p.parent.name) / p.name) for p in run_dirs]
    if len(set(names)) < len(names):
        raise RunError(f"the same run is given twice: {', '.join(map(str, run_dirs))}")
    return names


def compare(models: Sequence[ModelResult]) -> list[dict[str, Any]]:
    """Paired DeLong tests of the AUROC of every pair of models, on their common test images."""
    out = []
    for a, b in itertools.combinations(models, 2):
        b_scores = dict(zip((r.key for r in b.test.records), b.test.scores, strict=True))
        common = [i for i, r in enumerate(a.test.records) if r.key in b_scores]
        labels = a.test.labels[common]
        scores_b = np.array([b_scores[a.test.records[i].key] for i in common])
        test = delong_test(labels, a.test.scores[common], scores_b)
        out.append({"a": a.name, "b": b.name, "n_images": len(common), **test})
    return out


def _check_same_test_split(models: Sequence[tuple[Path, Splits]]) -> None:
    (first_dir, first), *rest = models
    reference = {r.key for r in first.test}
    for run_dir, splits in rest:
        keys = {r.key for r in splits.test}
        if keys != reference:
            raise RunError(
                f"{first_dir} and {run_dir} have different test splits ({len(reference)} vs "
                f"{len(keys)} images, {len(reference & keys)} in common): compare runs trained "
                "on the same stages with the same data.split, data.split_seed and "
                "data.official_split"
            )


def default_out_dir(run_dirs: Sequence[Path], source: str | None) -> Path:
    """``<run>/eval`` for one run (``<run>/eval-<source>`` on other data), else ``reports/``."""
    if len(run_dirs) == 1:
        return run_dirs[0] / ("eval" if source is None else f"eval-{source}")
    return Path("reports") / "-vs-".join(p.name for p in run_dirs)


def evaluate_runs(
    run_dirs: Sequence[Path],
    out_dir: Path | None = None,
    *,
    source: str | None = None,
    data: str | None = None,
    n_bootstrap: int = MIN_BOOTSTRAP,
    seed: int = 0,
    tracker: Tracker | None = None,
) -> Comparison:
    """Evaluate one or more runs on the same held-out test split and write the report.

    Args:
        run_dirs: trained run directories.
        out_dir: where to write; default :func:`default_out_dir`. With one run and no
            ``out_dir``, ``metrics.json`` is that run's flat metrics (as in training);
            otherwise it is the combined ``{"models": {...}, "delong": [...], ...}``.
        source: evaluate on another data source (``data.source``) instead of the run's own.
        data: its ``data.path``.
        n_bootstrap: bootstrap resamples (at least 1000).
        seed: bootstrap seed; the same seed gives the same intervals.
        tracker: a started :class:`~imgae_dx_jax.tracking.Tracker` to log metrics tables
            and figures to, or None.

    Returns:
        The comparison, with the written files in ``files``.

    Raises:
        RunError: for unusable runs, different test splits, or images seen in training.
        DataError: when the data cannot be read or a split has one class only.
    """
    from imgae_dx_jax.report import write_report

    if not run_dirs:
        raise RunError("no run to evaluate (give --run at least once)")
    if n_bootstrap < MIN_BOOTSTRAP:
        raise RunError(f"--bootstrap {n_bootstrap}: at least {MIN_BOOTSTRAP} resamples needed")
    run_dirs = [Path(p) for p in run_dirs]
    names = run_names(run_dirs)
    overrides = {k: v for k, v in (("data.source", source), ("data.path", data)) if v is not None}
    cache: dict[DataConfig, tuple[Store, Catalog, Splits]] = {}
    prepared = []
    for run_dir in run_dirs:
        config = load_run_config(run_dir)
        if overrides:
            config = with_overrides(config, overrides)
        if config.data not in cache:
            cache[config.data] = load_splits(config.data)
        prepared.append((run_dir, config, cache[config.data]))
    _check_same_test_split([(run_dir, loaded[2]) for run_dir, _, loaded in prepared])
    models = [
        evaluate_model(
            name,
            run_dir,
            config,
            loaded,
            own_data=not overrides,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for name, (run_dir, config, loaded) in zip(names, prepared, strict=True)
    ]
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs, source)
    out.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(
        models=models,
        delong=compare(models),
        data=models[0].metrics["data"],
        bootstrap={
            "n_resamples": n_bootstrap,
            "seed": seed,
            "confidence": 0.95,
            "unit": "patient",
            "stratified_by": "patient has an abnormal image",
        },
        out_dir=out,
    )
    single = len(models) == 1 and out_dir is None
    if single:
        metrics = models[0].metrics | {"bootstrap": comparison.bootstrap}
    else:
        metrics = comparison.summary()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if single:
        write_scores_csv(out / "scores.csv", models[0].test)
    else:
        write_wide_scores_csv(out / "scores.csv", models)
    comparison.files = {"metrics": out / "metrics.json", "scores": out / "scores.csv"}
    comparison.files |= write_report(comparison)
    if tracker is not None:
        log_to_tracker(tracker, comparison)
    log.info("wrote %s", ", ".join(str(p) for p in comparison.files.values()))
    return comparison


def write_wide_scores_csv(path: Path, models: Sequence[ModelResult]) -> None:
    """One row per test image with every model's score (``score_<name>``)."""
    by_key = [
        dict(zip((r.key for r in m.test.records), m.test.scores, strict=True)) for m in models
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "image",
                "patient",
                "label",
                "findings",
                "view",
                "sex",
                "age",
                *(f"score_{m.name}" for m in models),
            ]
        )
        for record in models[0].test.records:
            writer.writerow(
                [
                    record.key,
                    record.patient,
                    record.label,
                    _findings(record),
                    record.view,
                    record.sex,
                    record.age,
                    *(
                        f"{scores[record.key]:.8g}" if record.key in scores else ""
                        for scores in by_key
                    ),
                ]
            )


def log_to_tracker(tracker: Tracker, comparison: Comparison) -> None:
    """Log the headline metrics, the tables and the figures of a comparison."""
    from imgae_dx_jax.report import delong_rows, finding_rows, headline_rows, subgroup_rows

    headline = headline_rows(comparison)
    scalars = {}
    for model in comparison.models:
        m = model.metrics
        for key in (
            "auroc",
            "auprc",
            "fpr_at_95_tpr",
            "best_f1",
            "f1",
            "sensitivity",
            "specificity",
            "threshold",
        ):
            scalars[f"test/{model.name}/{key}"] = m[key]
        scalars[f"test/{model.name}/auroc_ci_low"], scalars[f"test/{model.name}/auroc_ci_high"] = m[
            "auroc_ci"
        ]
        loc = m["localization"]
        if loc["pixel_auroc"] is not None:
            scalars[f"test/{model.name}/pixel_auroc"] = loc["pixel_auroc"]
            scalars[f"test/{model.name}/pointing_game"] = loc["pointing_game"]
    tracker.log(scalars)
    tracker.summary(scalars)
    for key, (columns, rows) in {
        "test/headline": headline,
        "test/per_finding": finding_rows(comparison),
        "test/subgroups": subgroup_rows(comparison),
        "test/delong": delong_rows(comparison),
    }.items():
        if rows:
            tracker.log_table(key, columns, rows)
    figures = {
        f"figures/{name}": path for name, path in comparison.files.items() if path.suffix == ".png"
    }
    tracker.log_images(figures)


def evaluate_run(
    run_dir: Path,
    *,
    tracker: Tracker | None = None,
    n_bootstrap: int = MIN_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate one run on its own held-out test split and write ``<run>/eval/``.

    The threshold is chosen on the validation split (maximum F1) and only then applied to
    the test split.

    Args:
        run_dir: the trained run directory.
        tracker: a started tracker to log the metrics and figures to (e.g. the training
            run's), or None.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        The metrics written to ``metrics.json``.
    """
    comparison = evaluate_runs([run_dir], tracker=tracker, n_bootstrap=n_bootstrap, seed=seed)
    return comparison.models[0].metrics


if __name__ == "__main__":
    from imgae_dx_jax.cli import evaluate_main

    sys.exit(evaluate_main())
