"""What the command line and the notebooks share: train, evaluate, compare, print, log in.

Like Flax's examples, the entry points (:mod:`imgae_dx_jax.train`,
:mod:`imgae_dx_jax.evaluate`) are short wrappers over these importable functions, and the
generated Colab/Kaggle notebooks call the same ones, so a notebook run and a command-line run
train, evaluate and track to W&B the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from imgae_dx_jax import distributed
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.config import parse_stages, to_dict
from imgae_dx_jax.evaluation import (
    MIN_BOOTSTRAP,
    check_request,
    default_out_dir,
    evaluate_run,
    evaluate_runs,
)
from imgae_dx_jax.logs import setup_logging
from imgae_dx_jax.results import Comparison
from imgae_dx_jax.runtime import setup_compilation_cache
from imgae_dx_jax.schema import Config
from imgae_dx_jax.tracking import Tracker
from imgae_dx_jax.training import train

__all__ = [
    "compare_runs",
    "parse_stages",
    "print_comparison",
    "print_summary",
    "setup_logging",
    "train_and_evaluate",
    "wandb_login",
]


def train_and_evaluate(
    config: Config,
    run_dir: Path,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    evaluate: bool = True,
) -> dict[str, Any] | None:
    """Train (or continue) the run, export its model and evaluate it on the test split.

    The export is the model of best validation AUROC, or the last one
    (``train.select_checkpoint``).

    Training (and the evaluation) are logged to one W&B run of ``config.tracking``. In a
    multi-host run only process 0 evaluates (from the export); the others wait for it.

    Args:
        config: the run's configuration.
        run_dir: its run directory (:func:`imgae_dx_jax.run_dir.default_run_dir`).
        resume: ``auto`` continues from the run directory's checkpoints; ``never`` starts
            afresh.
        overwrite: with ``resume="never"``, delete an existing run directory first.
        evaluate: evaluate once trained (a notebook comparing several runs evaluates them
            together with :func:`compare_runs` instead).

    Returns:
        The test metrics written to ``run_dir/eval/metrics.json`` (``None`` on processes
        other than 0, or without ``evaluate``).
    """
    main = distributed.is_main_process()
    tracker = Tracker.from_config(
        config.tracking, job_type="train", mode=None if main else "disabled"
    )
    with tracker:
        train(config, run_dir, resume=resume, overwrite=overwrite, tracker=tracker)
        metrics = evaluate_run(run_dir, tracker=tracker) if main and evaluate else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("imgae_dx_jax evaluated")
    return metrics


def compare_runs(
    run_dirs: Sequence[Path],
    out_dir: Path | None = None,
    *,
    source: str | None = None,
    data: str | None = None,
    n_bootstrap: int = MIN_BOOTSTRAP,
    seed: int = 0,
    wandb: str | None = None,
) -> Comparison:
    """Evaluate runs on the same held-out test split, write the report and log it to W&B.

    The W&B run (``tracking`` of the first run, ``wandb`` overriding its mode) records every
    run's config and the evaluation settings.

    Args:
        run_dirs: trained run directories.
        out_dir: where to write (:func:`imgae_dx_jax.evaluation.default_out_dir` if None).
        source: evaluate on another data source (``data.source``) instead of the runs' own.
        data: its ``data.path``.
        n_bootstrap: bootstrap resamples (at least 1000).
        seed: bootstrap seed.
        wandb: ``online``, ``offline`` or ``disabled``; None keeps the first run's setting.

    Returns:
        The comparison, with the written files in ``files``.
    """
    check_request(run_dirs, n_bootstrap)
    configs = {str(run): rundir.load_export_config(Path(run)) for run in run_dirs}
    first = configs[str(run_dirs[0])]
    out = out_dir or default_out_dir(run_dirs, source, data)
    rundir.make_out_dir(out)
    setup_compilation_cache(first)
    tracker = Tracker.from_config(first.tracking, job_type="evaluate", mode=wandb)
    with tracker:
        tracker.start(
            {
                "runs": {run: to_dict(config) for run, config in configs.items()},
                "source": source,
                "data": data,
                "bootstrap": n_bootstrap,
                "seed": seed,
            },
            out,
        )
        return evaluate_runs(
            run_dirs,
            out_dir,
            source=source,
            data=data,
            n_bootstrap=n_bootstrap,
            seed=seed,
            tracker=tracker,
        )


def wandb_login(key: str | None = None) -> None:
    """Log in to W&B for ``online`` tracking: with ``key``, or by prompting for one."""
    import wandb

    if key:
        wandb.login(key=key)
    else:
        wandb.login()  # prompts for the key


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    """Print the held-out test results a person reads first."""
    counts = metrics["split_counts"]
    print(f"\nRun: {run_dir}")
    print("Split by patient (train uses normal images only):")
    for name in ("train", "val", "test"):
        normal, abnormal = counts[name]["normal"], counts[name]["abnormal"]
        print(f"  {name:5s} {normal:5d} normal  {abnormal:5d} abnormal")
    print(
        f"Held-out test ({metrics['model']}, {metrics['n_normal']} normal / "
        f"{metrics['n_abnormal']} abnormal images of unseen patients):"
    )
    (auroc_low, auroc_high), (auprc_low, auprc_high) = metrics["auroc_ci"], metrics["auprc_ci"]
    print(
        f"  AUROC {metrics['auroc']:.3f} (95% CI {auroc_low:.3f}-{auroc_high:.3f}, patient "
        f"bootstrap)   patient-weighted AUROC {metrics['auroc_patient_weighted']:.3f}"
    )
    print(
        f"  AUPRC {metrics['auprc']:.3f} (95% CI {auprc_low:.3f}-{auprc_high:.3f})   "
        f"FPR@95%TPR {metrics['fpr_at_95_tpr']:.3f}"
    )
    print(
        f"  image score {metrics['score']} (eval.score {metrics['score_setting']}, "
        f"validation AUROC {metrics['score_val_auroc'][metrics['score']]:.3f})"
    )
    print(
        f"  threshold {metrics['threshold']:.4g} ({metrics['threshold_source']}; validation "
        f"specificity {metrics['val_specificity']:.3f}): test sensitivity "
        f"{metrics['sensitivity']:.3f}, specificity {metrics['specificity']:.3f}, "
        f"F1 {metrics['f1']:.3f}"
    )
    if (line := localization_line(metrics)) is not None:
        print(f"  {line}")
    print(f"  {reference_line(metrics)}")


def localization_line(metrics: dict[str, Any]) -> str | None:
    """The localization against the NIH boxes (one line), or None where no test image has one."""
    loc = metrics["localization"]
    if loc["pixel_auroc"] is None:
        return None
    images, boxes = loc["n_images"], loc["n_boxes"]
    return (
        f"localization on {images} boxed image{'s' * (images != 1)} ({boxes} "
        f"box{'es' * (boxes != 1)}): pixel AUROC {loc['pixel_auroc']:.3f}, pointing game "
        f"{loc['pointing_game']:.3f}"
    )


def reference_line(metrics: dict[str, Any]) -> str:
    """How a model's test AUROC compares with the model-free reference's (one line)."""
    ref = metrics["reference"]
    d, (low, high) = ref["difference"], ref["auroc_ci"]
    return (
        f"reference: raw-image {ref['statistic']} (chosen on validation) AUROC "
        f"{ref['auroc']:.3f} ({low:.3f}-{high:.3f}); model - reference {d['diff']:+.3f} "
        f"({d['ci_low']:+.3f} to {d['ci_high']:+.3f}, p = {d['p_value']:.3g})"
    )


def print_comparison(comparison: Comparison) -> None:
    """Print the per-model table and the paired bootstraps of an evaluation."""
    print(
        f"\nHeld-out test on {comparison.data} "
        f"(95% CIs: {comparison.bootstrap['n_resamples']} patient-level bootstrap resamples):"
    )
    width = max(len(m.name) for m in comparison.models)
    for model in comparison.models:
        m = model.metrics
        (a_low, a_high), (p_low, p_high) = m["auroc_ci"], m["auprc_ci"]
        print(
            f"  {model.name:{width}s}  AUROC {m['auroc']:.3f} [{a_low:.3f}, {a_high:.3f}]  "
            f"AUPRC {m['auprc']:.3f} [{p_low:.3f}, {p_high:.3f}]  "
            f"FPR@95%TPR {m['fpr_at_95_tpr']:.3f}  patient-weighted AUROC "
            f"{m['auroc_patient_weighted']:.3f}  score {m['score']}"
        )
        print(
            f"  {'':{width}s}  threshold ({m['threshold_source']}, validation specificity "
            f"{m['val_specificity']:.3f}): test sens {m['sensitivity']:.3f} "
            f"spec {m['specificity']:.3f} F1 {m['f1']:.3f}"
        )
        if (line := localization_line(m)) is not None:
            print(f"  {'':{width}s}  {line}")
        print(f"  {'':{width}s}  {reference_line(m)}")
    for d in comparison.paired:
        print(
            f"  {d['a']} - {d['b']}: AUROC difference {d['diff']:+.3f} "
            f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], paired patient bootstrap "
            f"p = {d['p_value']:.3g}"
        )
    print(f"Report: {comparison.files['report_html']}")
