"""Evaluation: score trained runs on held-out patients, compare them, write the report.

:func:`evaluate_runs` (``imgae-evaluate``, :func:`imgae_dx_jax.api.compare_runs`) loads each
run's inference export, scores every validation and test image (:mod:`imgae_dx_jax.inference`),
picks the image score and the operating threshold on the *validation* split
(:func:`calibrate`), and reports the test split in ``<run>/eval/``: ``metrics.json``,
``scores.csv`` (one row per test image), figures and ``report.md`` / ``report.html``. The
choices are stored with the export (:func:`imgae_dx_jax.run_dir.write_calibration`) for
:mod:`imgae_dx_jax.predict`.

Several runs are compared on the same test split (checked): per model AUROC (also
patient-weighted) and AUPRC with 95% patient-level stratified bootstrap intervals, FPR at 95%
TPR, F1, and the analyses of :data:`ANALYSES` (per-finding and subgroup AUROC with intervals,
localization against NIH boxes); between models a paired patient-level bootstrap of the
AUROC difference. Every model is also compared, in the same way, with a model-free reference
on the same images (:func:`evaluate_reference`: the statistic of the raw image --
:mod:`imgae_dx_jax.reference` -- that separates the validation split best), the floor a
detector must beat. Other data of the same layout can be evaluated on, after
checking that none of its validation or test images were trained on.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.checkpoints import restore_model
from imgae_dx_jax.config import with_overrides
from imgae_dx_jax.data import Catalog, Splits, Store, load_splits
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.sources import source_stages
from imgae_dx_jax.errors import DataError, RunError
from imgae_dx_jax.inference import Scorer, score_split
from imgae_dx_jax.memory import memory_phase, release_after_compilations
from imgae_dx_jax.metrics.breakdown import per_finding, subgroups
from imgae_dx_jax.metrics.curves import (
    CURVE_GRID,
    bootstrap_band,
    pr_points,
    precision_at,
    roc_at,
    roc_points,
)
from imgae_dx_jax.metrics.image import (
    average_precision,
    bootstrap_ci,
    image_metrics,
    paired_bootstrap,
    rates_at,
    roc_auc,
)
from imgae_dx_jax.metrics.localization import localization, scaled_boxes
from imgae_dx_jax.metrics.threshold import choose_score, describe_rule, map_scale, select_threshold
from imgae_dx_jax.reference import reference_scores
from imgae_dx_jax.report.tables import TRACKED_TABLES
from imgae_dx_jax.results import Band, Comparison, ModelResult, SplitScores
from imgae_dx_jax.schema import NIH_SOURCES, Config, DataConfig, EvalConfig
from imgae_dx_jax.tracking import Tracker

log = logging.getLogger(__name__)

MIN_BOOTSTRAP = 1000
REFERENCE = "image statistic"
"""Name of the model-free reference in paired comparisons (:func:`evaluate_reference`)."""


@dataclass(frozen=True)
class AnalysisInput:
    """What every analysis of one model may use."""

    test: SplitScores
    """The scored test split."""
    boxed: SplitScores
    """The test images that have boxes, with their maps kept."""
    catalog: Catalog
    image_size: int
    n_bootstrap: int
    seed: int


ANALYSES: dict[str, Callable[[AnalysisInput], Any]] = {
    "per_finding": lambda a: per_finding(a.test, a.n_bootstrap, a.seed),
    "subgroups": lambda a: subgroups(a.test, a.n_bootstrap, a.seed),
    "localization": lambda a: localization(a.boxed, a.catalog, a.image_size),
}
"""The analyses of each model beyond the headline metrics, by their key in ``metrics.json``.

A new analysis is one entry here plus its table in :mod:`imgae_dx_jax.report.tables`.
"""


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


def calibrate(val: SplitScores, settings: EvalConfig) -> rundir.Calibration:
    """Choose the image score, the operating threshold and the overlay scale on validation.

    Only the validation split is used, so no test label can influence a choice.

    Args:
        val: the scored validation split, with every candidate score (``by_score``).
        settings: ``eval.score``, ``eval.threshold`` and ``eval.target_specificity``.

    Returns:
        The calibration that evaluation applies to the test split and prediction to new images.
    """
    score, aurocs = choose_score(val.labels, val.candidates, settings.score)
    chosen = val.choose(score)
    threshold = select_threshold(
        chosen.labels, chosen.scores, settings.threshold, settings.target_specificity
    )
    rule = describe_rule(settings.threshold, settings.target_specificity)
    return rundir.Calibration(threshold, map_scale(chosen), score, rule, aurocs)


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
            rundir.check_split_manifest(run_dir, split_name, splits[split_name])
    else:
        rundir.check_held_out(run_dir, splits, store.description)
    scorer = Scorer(restore_model(run_dir, config), config)
    val = score_split(scorer, config, splits.val, store, desc=f"{name}: scoring validation")
    test = score_split(scorer, config, splits.test, store, desc=f"{name}: scoring test")
    for part, skipped in (("validation", val.skipped), ("test", test.skipped)):
        if skipped:  # also in metrics.json under "skipped"
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            log.warning("%s: %s images skipped (%s)", part, sum(skipped.values()), reasons)
    more = (
        "use more stages"
        if config.data.source in NIH_SOURCES  # the sources that come in stages
        else "add the other class's folders, or evaluate on labelled data: imgae-evaluate "
        "--run RUN --source imagefolder --data TREE"
    )
    for split_name, split in (("validation", val), ("test", test)):
        if len(set(split.labels.tolist())) < 2:
            raise DataError(
                f"the {split_name} split needs normal and abnormal images to evaluate; it has "
                f"{len(split.labels)} readable images of one class ({more})"
            )
    calibration = calibrate(val, config.eval)
    scorer = scorer.select(calibration.score)
    val, test = val.choose(calibration.score), test.choose(calibration.score)
    threshold = calibration.threshold
    metrics = image_metrics(test.labels, test.scores, test.patients, threshold)
    on_val = rates_at(val.labels, val.scores, threshold)
    auroc_ci, roc_low, roc_high = bootstrap_band(test, roc_auc, roc_at, n_bootstrap, seed)
    auprc_ci, pr_low, pr_high = bootstrap_band(
        test, average_precision, precision_at, n_bootstrap, seed
    )
    fpr, tpr = roc_points(test.labels, test.scores)
    recall, precision = pr_points(test.labels, test.scores)
    boxed_records = [r for r in test.records if catalog.boxes.get(r.key)]
    boxed = score_split(
        scorer, config, boxed_records, store, desc=f"{name}: scoring boxed", keep_maps=True
    )
    size = config.data.image_size
    chosen = select_examples(test, {r.key for r in boxed_records})
    examples = score_split(
        scorer,
        config,
        [test.records[i] for _, i in chosen],
        store,
        desc=f"{name}: scoring examples",
        keep_maps=True,
    )
    kinds = tuple(kind for kind, _ in chosen)
    analysis = AnalysisInput(test, boxed, catalog, size, n_bootstrap, seed)
    metrics.update(
        model=config.model.name,
        run=str(run_dir),
        auroc_ci=list(auroc_ci),
        auprc_ci=list(auprc_ci),
        score=calibration.score,
        score_setting=config.eval.score,
        score_val_auroc=calibration.score_aurocs,
        threshold_rule=config.eval.threshold,
        threshold_source=f"validation split, {calibration.rule}",
        target_specificity=config.eval.target_specificity
        if config.eval.threshold == "specificity"
        else None,
        val_sensitivity=on_val["sensitivity"],
        val_specificity=on_val["specificity"],
        **{name: analyse(analysis) for name, analyse in ANALYSES.items()},
        data=store.description,
        stages=list(source_stages(config.data)),
        image_size=size,
        split_counts=splits.counts(),
        official_split=splits.official,
        skipped={"val": val.skipped, "test": test.skipped},
    )
    if own_data:
        rundir.write_calibration(run_dir, calibration, len(val.labels))
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
        map_scale=calibration.map_scale,
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


def paired(
    a: str, a_test: SplitScores, b: str, b_test: SplitScores, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Paired patient-level bootstrap of the test AUROC difference ``a - b``.

    On the test images both scored (:func:`~imgae_dx_jax.metrics.image.paired_bootstrap`, the
    same resamples of patients for both).
    """
    b_scores = dict(zip((r.key for r in b_test.records), b_test.scores, strict=True))
    common = [i for i, r in enumerate(a_test.records) if r.key in b_scores]
    scores_b = np.array([b_scores[a_test.records[i].key] for i in common])
    test = paired_bootstrap(
        a_test.labels[common],
        a_test.scores[common],
        scores_b,
        a_test.patients[common],
        n_resamples=n_bootstrap,
        seed=seed,
    )
    return {"a": a, "b": b, "n_images": len(common), **test}


def compare(models: Sequence[ModelResult], n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Paired patient-level bootstraps (:func:`paired`) of every pair of models."""
    return [
        paired(a.name, a.test, b.name, b.test, n_bootstrap, seed)
        for a, b in itertools.combinations(models, 2)
    ]


def evaluate_reference(
    config: Config, loaded: tuple[Store, Catalog, Splits], *, n_bootstrap: int, seed: int
) -> tuple[dict[str, Any], SplitScores]:
    """Score the model-free reference (:mod:`imgae_dx_jax.reference`) like a model.

    The statistic and its threshold are chosen on the validation split (:func:`calibrate`,
    with ``eval.score: auto`` whatever the model's setting), then applied to the test split.

    Args:
        config: the data's image size and threading, ``eval.threshold`` and its target.
        loaded: the store, catalog and splits of the evaluated data.
        n_bootstrap: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.

    Returns:
        ``(metrics, test)``: the test metrics of
        :func:`~imgae_dx_jax.metrics.image.image_metrics` with ``statistic`` (the chosen
        candidate), ``val_auroc`` (its validation AUROC), ``auroc_ci`` and ``auprc_ci``; and
        the test scores of that statistic.
    """
    store, _, splits = loaded
    val = reference_scores(splits.val, store, config, desc="reference: scoring validation")
    test = reference_scores(splits.test, store, config, desc="reference: scoring test")
    calibration = calibrate(val, replace(config.eval, score="auto"))
    test = test.choose(calibration.score)
    metrics = image_metrics(test.labels, test.scores, test.patients, calibration.threshold)
    cis = {
        f"{name}_ci": list(
            bootstrap_ci(
                test.labels,
                test.scores,
                test.patients,
                metric,
                n_resamples=n_bootstrap,
                seed=seed,
            )
        )
        for name, metric in (("auroc", roc_auc), ("auprc", average_precision))
    }
    metrics.update(
        statistic=calibration.score,
        val_auroc=calibration.score_aurocs[calibration.score],
        threshold_source=f"validation split, {calibration.rule}",
        **cis,
    )
    return metrics, test


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


def default_out_dir(run_dirs: Sequence[Path], source: str | None, data: str | None = None) -> Path:
    """``<run>/eval`` for one run on its own data, else ``reports/<run>-vs-<run>...``.

    One run on other data (``source`` or ``data`` given) writes to ``<run>/eval-<source>``,
    with the run's own ``data.source`` when only ``data`` is given, so that its own report
    in ``<run>/eval`` is never overwritten.
    """
    if len(run_dirs) == 1:
        if source is None and data is not None:
            source = rundir.load_export_config(Path(run_dirs[0])).data.source
        return rundir.eval_dir(Path(run_dirs[0]), source)
    return Path("reports") / "-vs-".join(Path(p).name for p in run_dirs)


def check_request(run_dirs: Sequence[Path], n_bootstrap: int) -> None:
    """Fail early on an evaluation that cannot run: no run, or too few bootstrap resamples.

    Raises:
        RunError: saying which.
    """
    if not run_dirs:
        raise RunError("no run to evaluate (give --run at least once)")
    if n_bootstrap < MIN_BOOTSTRAP:
        raise RunError(f"--bootstrap {n_bootstrap}: at least {MIN_BOOTSTRAP} resamples needed")


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
            otherwise it is the combined ``{"models": {...}, "paired": [...], ...}``.
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
        ConfigError: when the output directory cannot be created.
    """
    check_request(run_dirs, n_bootstrap)
    release_after_compilations()
    run_dirs = [Path(p) for p in run_dirs]
    names = run_names(run_dirs)
    overrides = {k: v for k, v in (("data.source", source), ("data.path", data)) if v is not None}
    configs = [rundir.load_export_config(run_dir) for run_dir in run_dirs]
    if overrides:
        configs = [with_overrides(config, overrides) for config in configs]
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs, source, data)
    rundir.make_out_dir(out)
    cache: dict[DataConfig, tuple[Store, Catalog, Splits]] = {}
    prepared = []
    with memory_phase("evaluation"):
        for run_dir, config in zip(run_dirs, configs, strict=True):
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
        paired_models = compare(models, n_bootstrap, seed)
        reference, reference_test = evaluate_reference(
            prepared[0][1], prepared[0][2], n_bootstrap=n_bootstrap, seed=seed
        )
        for model in models:
            versus = paired(model.name, model.test, REFERENCE, reference_test, n_bootstrap, seed)
            model.metrics["reference"] = reference | {"difference": versus}
    comparison = Comparison(
        models=models,
        paired=paired_models,
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
    with memory_phase("report"):
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if single:
            write_scores_csv(out / "scores.csv", models[0].test)
        else:
            write_wide_scores_csv(out / "scores.csv", models)
        comparison.files = {"metrics": out / "metrics.json", "scores": out / "scores.csv"}
        # Imported here: the report's figures need matplotlib (~35 MB resident), which a
        # training run should not hold while it compiles its step (the peak of its memory).
        from imgae_dx_jax.report.documents import write_report

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
    scalars = {}
    for model in comparison.models:
        m = model.metrics
        for key in (
            "auroc",
            "auroc_patient_weighted",
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
    for key, table in TRACKED_TABLES.items():
        columns, rows = table(comparison)
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

    The image score and the threshold are chosen on the validation split (:func:`calibrate`)
    and only then applied to the test split.

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
