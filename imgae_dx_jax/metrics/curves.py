"""ROC and precision-recall curves, and their pointwise bootstrap bands."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imgae_dx_jax.metrics.image import bootstrap_ci, cumulative_counts
from imgae_dx_jax.results import SplitScores

CURVE_GRID = np.linspace(0.0, 1.0, 101)
"""FPR (ROC) and recall (PR) values at which bootstrap curve bands are computed."""


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` from (0, 0) through every distinct threshold (lines join them)."""
    _, tp, fp = cumulative_counts(labels, scores)
    n_pos = labels.sum()
    return np.concatenate(([0.0], fp / (labels.size - n_pos))), np.concatenate(([0.0], tp / n_pos))


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve ``(recall, precision)``, recall ascending from 0.

    Drawn as steps (``steps-pre``) its area is the AUPRC of
    :func:`~imgae_dx_jax.metrics.image.average_precision`.
    """
    _, tp, fp = cumulative_counts(labels, scores)
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

    The resampling is :func:`~imgae_dx_jax.metrics.image.bootstrap_ci` (patients, stratified by
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
