"""Image-level metrics of anomaly scores: AUROC, AUPRC, FPR at 95% TPR, F1, patient bootstrap.

Conventions used throughout:

* ``labels`` are 1 for abnormal and 0 for normal images; ``scores`` are anomaly scores where a
  higher value means more abnormal.
* The prediction rule is *abnormal iff score >= threshold*. Curve-based metrics evaluate every
  distinct observed score as a threshold.
* A metric that is undefined for the given data (for example AUROC when only one class is
  present) raises :class:`ValueError` with a message saying why, instead of returning NaN.

The threshold for a test split must be chosen on validation data with
:func:`~imgae_dx_jax.metrics.threshold.select_threshold`
and passed to :func:`image_metrics`; the ``best_f1`` that :func:`image_metrics` also reports is
an oracle computed on the test labels and must not be read as an achievable operating point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from imgae_dx_jax.progress import progress_bar

Metric = Callable[[np.ndarray, np.ndarray], float]
"""A metric of ``(labels, scores)`` such as :func:`roc_auc`."""


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels and scores to 1-D ``int64`` / ``float64`` arrays."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or inf)")
    return y.astype(np.int64), s


def _both_classes(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_labels_scores`, but also require at least one image of each class."""
    y, s = _labels_scores(labels, scores)
    n_abnormal = int(y.sum())
    if n_abnormal in (0, y.size):
        only = "abnormal" if n_abnormal else "normal"
        raise ValueError(
            f"metric undefined: only {only} images present ({y.size} images); "
            "need both normal (0) and abnormal (1) labels"
        )
    return y, s


def _midranks(x: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``x`` with tied values given the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    n = xs.size
    boundaries = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at every distinct score used as a threshold.

    ``y`` (1 abnormal, 0 normal) and ``s`` are numpy arrays of one image each, not validated.

    Returns:
        ``(thresholds, tp, fp)``: distinct scores in decreasing order and, for each, the number
        of abnormal and normal images with ``score >= threshold``.

    """
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last = np.concatenate((np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), [s.size - 1]))
    tp = np.cumsum(y[order])[last]
    fp = last + 1 - tp
    return s_sorted[last], tp, fp


def operating_points(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, ...]:
    """True- and false-positive rates at every distinct score used as the threshold.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.

    Returns:
        ``(thresholds, tpr, fpr)``: the distinct scores in decreasing order and the rates of
        predicting abnormal iff ``score >= threshold``.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    y, s = _both_classes(labels, scores)
    thresholds, tp, fp = cumulative_counts(y, s)
    n_pos = int(y.sum())
    return thresholds, tp / n_pos, fp / (y.size - n_pos)


def weighted_roc_auc(labels: ArrayLike, scores: ArrayLike, weights: ArrayLike) -> float:
    """AUROC with a weight per image: the weighted Mann-Whitney statistic.

    Each (abnormal ``i``, normal ``j``) pair counts ``w_i * w_j`` (one half on tied scores),
    divided by the total weight of all pairs. Equal weights give :func:`roc_auc`.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.
        weights: positive weight of each image.

    Returns:
        The weighted probability that an abnormal image scores above a normal one.

    Raises:
        ValueError: if the inputs are malformed, a weight is not positive and finite, or only
            one class is present.

    """
    y, s = _both_classes(labels, scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != y.shape or not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"weights must be {y.size} positive finite numbers, got shape {w.shape}")
    values, level = np.unique(s, return_inverse=True)
    neg_at = np.bincount(level, weights=w * (y == 0), minlength=values.size)
    neg_below = np.cumsum(neg_at) - neg_at
    pos = y == 1
    wins = w[pos] * (neg_below[level[pos]] + 0.5 * neg_at[level[pos]])
    return float(wins.sum() / (w[pos].sum() * w[~pos].sum()))


def patient_weighted_auroc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """AUROC with each image weighted by 1 / (number of images of its patient).

    Every patient then carries the same total weight, so a few patients with many images do
    not dominate the statistic (:func:`weighted_roc_auc`).

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.
        groups: patient identifier of each image.

    Returns:
        The patient-weighted AUROC.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    g = np.asarray(groups)
    if g.shape != np.shape(labels):
        raise ValueError(f"groups must give one patient per image: shape {g.shape}")
    _, patient, size = np.unique(g, return_inverse=True, return_counts=True)
    return weighted_roc_auc(labels, scores, 1.0 / size[patient])


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count one half).

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.

    Returns:
        The probability that a random abnormal image scores above a random normal one.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    y, s = _both_classes(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(_midranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve as a step sum (AUPRC).

    Same definition as ``sklearn.metrics.average_precision_score``:
    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct thresholds in decreasing order, without
    interpolation.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.

    Returns:
        The average precision, in ``[0, 1]``.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    y, s = _both_classes(labels, scores)
    _, tp, fp = cumulative_counts(y, s)
    recall = tp / y.sum()
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def fpr_at_tpr(labels: ArrayLike, scores: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.
        tpr: the required sensitivity, in ``(0, 1]``.

    Returns:
        The lowest FPR among the thresholds with TPR >= ``tpr`` (no interpolation).

    Raises:
        ValueError: if ``tpr`` is outside ``(0, 1]``, the inputs are malformed or only one
            class is present.

    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    y, s = _both_classes(labels, scores)
    _, tp, fp = cumulative_counts(y, s)
    # TPR and FPR both grow as the threshold falls, so the first qualifying threshold is best.
    first = int(np.argmax(tp / y.sum() >= tpr))
    return float(fp[first] / (y.size - y.sum()))


def best_f1(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Highest F1 over all thresholds, and the threshold that reaches it.

    Every distinct observed score is tried as a threshold (abnormal iff score >= threshold).
    Among thresholds with equal F1 the lowest (most sensitive) one is returned.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.

    Returns:
        ``(f1, threshold)``; the threshold is one of the observed scores.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    y, s = _both_classes(labels, scores)
    thresholds, tp, fp = cumulative_counts(y, s)
    f1 = 2.0 * tp / (tp + fp + y.sum())  # 2TP / (2TP + FP + FN), as TP + FN = positives
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # last maximum = lowest threshold
    return float(f1[best]), float(thresholds[best])


def rates_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion-matrix rates when predicting abnormal iff ``score >= threshold``.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.
        threshold: the decision threshold, usually from :func:`select_threshold`.

    Returns:
        ``sensitivity`` (TPR), ``specificity`` (TNR), ``precision`` (0.0 when no image is
        predicted abnormal), ``f1`` and ``accuracy``, as Python floats.

    Raises:
        ValueError: if ``threshold`` is NaN, the inputs are malformed or only one class is
            present.

    """
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    y, s = _both_classes(labels, scores)
    predicted = s >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    fn = n_pos - tp
    tn = n_neg - fp
    return {
        "sensitivity": tp / n_pos,
        "specificity": tn / n_neg,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn),
        "accuracy": (tp + tn) / y.size,
    }


def image_metrics(
    labels: ArrayLike, scores: ArrayLike, groups: ArrayLike, threshold: float
) -> dict[str, Any]:
    """All image-level metrics for a test split, at a threshold chosen on validation data.

    Args:
        labels: test labels, 1 for abnormal, 0 for normal.
        scores: test anomaly scores, higher meaning more abnormal.
        groups: patient identifier of each image.
        threshold: operating threshold from :func:`select_threshold` on the validation split.

    Returns:
        A JSON-serialisable dict of Python scalars: ``auroc``, ``auroc_patient_weighted``
        (:func:`patient_weighted_auroc`), ``auprc``, ``fpr_at_95_tpr``;
        ``best_f1``, an *oracle* F1 with its threshold tuned on these test labels (an upper
        bound, not an achievable result); ``threshold`` (the one given) with the ``f1``,
        ``sensitivity``, ``specificity`` and ``precision`` it achieves on this split; and the
        class counts ``n_normal`` and ``n_abnormal``.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    y, s = _both_classes(labels, scores)
    rates = rates_at(y, s, threshold)
    n_abnormal = int(y.sum())
    return {
        "auroc": roc_auc(y, s),
        "auroc_patient_weighted": patient_weighted_auroc(y, s, groups),
        "auprc": average_precision(y, s),
        "fpr_at_95_tpr": fpr_at_tpr(y, s, 0.95),
        "best_f1": best_f1(y, s)[0],
        "threshold": float(threshold),
        "f1": rates["f1"],
        "sensitivity": rates["sensitivity"],
        "specificity": rates["specificity"],
        "precision": rates["precision"],
        "n_normal": y.size - n_abnormal,
        "n_abnormal": n_abnormal,
    }


def _patient_resamples(
    y: np.ndarray, groups: ArrayLike, n_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Image indices of each resample of a patient-level stratified bootstrap.

    Whole patients are drawn with replacement, each bringing all of their images; patients
    with at least one abnormal image and those with none are resampled separately, each
    stratum to its own size, so every resample holds both classes.

    Raises:
        ValueError: if ``groups`` does not match the images or every patient has an abnormal
            image.
    """
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must give one patient per image: shape {g.shape} vs {y.shape}")
    _, patient = np.unique(g, return_inverse=True)
    # Images ordered by patient: patient p owns by_patient[start[p] : start[p] + size[p]].
    by_patient = np.argsort(patient, kind="stable")
    size = np.bincount(patient)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    abnormal = np.bincount(patient, weights=y) > 0
    if abnormal.all():
        raise ValueError(
            "stratified bootstrap needs patients without abnormal images; every patient has one"
        )
    strata = [np.flatnonzero(abnormal), np.flatnonzero(~abnormal)]
    rng = np.random.default_rng(seed)
    with progress_bar("patient bootstrap", n_resamples, "resample", leave=False) as bar:
        for _ in range(n_resamples):
            drawn = np.concatenate([rng.choice(stratum, size=stratum.size) for stratum in strata])
            counts = size[drawn]
            # Offset of each image within its patient's block, then the block's start.
            within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            yield by_patient[np.repeat(start[drawn], counts) + within]
            bar.update()  # counted once the caller has computed its metric on the resample


def _check_resampling(n_resamples: int, confidence: float) -> float:
    """Validate the bootstrap settings; return the two tail quantiles' total mass."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def bootstrap_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike,
    metric: Metric,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile confidence interval of a metric from a patient-level stratified bootstrap.

    Images of one patient are correlated, so whole patients are resampled with replacement and
    each drawn patient contributes all of their images. Patients are split into two strata --
    those with at least one abnormal image and those with none -- and each stratum is resampled
    to its own size, so every resample contains both classes.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores: anomaly scores, higher meaning more abnormal.
        groups: patient identifier of each image (any comparable values).
        metric: ``metric(labels, scores) -> float``, e.g. :func:`roc_auc`.
        n_resamples: number of bootstrap resamples.
        seed: seed of the random generator; the same seed gives the same interval.
        confidence: coverage of the two-sided interval, in ``(0, 1)``.

    Returns:
        ``(low, high)``, the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
        of the metric over the resamples.

    Raises:
        ValueError: if an argument is out of range, ``groups`` does not match the images, only
            one class is present, or every patient has an abnormal image.

    """
    alpha = _check_resampling(n_resamples, confidence)
    y, s = _both_classes(labels, scores)
    values = [metric(y[i], s[i]) for i in _patient_resamples(y, groups, n_resamples, seed)]
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def paired_bootstrap(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    groups: ArrayLike,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Paired patient-level bootstrap of the AUROC difference of two models on the same images.

    Each resample of patients (:func:`bootstrap_ci`'s stratified resampling) is used for both
    models, so the correlation between their scores is kept; the AUROC difference is recomputed
    on the images of the resampled patients.

    Args:
        labels: 1 for abnormal, 0 for normal, one per image.
        scores_a: anomaly scores of model A.
        scores_b: anomaly scores of model B on the same images, in the same order.
        groups: patient identifier of each image.
        n_resamples: number of bootstrap resamples.
        seed: seed of the random generator; the same seed gives the same result.
        confidence: coverage of the percentile interval of the difference.

    Returns:
        ``auroc_a``, ``auroc_b``, ``diff`` (A - B on all images), ``ci_low`` and ``ci_high``
        (percentile interval of the resampled differences) and the two-sided bootstrap
        ``p_value``: twice the smaller fraction of resampled differences on either side of 0
        (each count plus one over ``n_resamples + 1``), at most 1.

    Raises:
        ValueError: if an argument is out of range, the inputs are malformed, only one class
            is present, or every patient has an abnormal image.

    """
    alpha = _check_resampling(n_resamples, confidence)
    y, a = _both_classes(labels, scores_a)
    _, b = _both_classes(y, scores_b)
    diffs = np.array(
        [
            roc_auc(y[i], a[i]) - roc_auc(y[i], b[i])
            for i in _patient_resamples(y, groups, n_resamples, seed)
        ]
    )
    low, high = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min(int(np.sum(diffs <= 0.0)), int(np.sum(diffs >= 0.0)))
    auroc_a, auroc_b = roc_auc(y, a), roc_auc(y, b)
    return {
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "diff": auroc_a - auroc_b,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": min(1.0, 2.0 * (tail + 1) / (n_resamples + 1)),
    }
