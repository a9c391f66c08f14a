"""What is chosen on the validation split: image score, operating threshold, overlay scale.

:func:`choose_score` picks the image score (config ``eval.score``) among the candidates of
:data:`~imgae_dx_jax.schema.SCORES` by validation AUROC.

The rules of :data:`RULES` (config ``eval.threshold``, the names of
:data:`imgae_dx_jax.schema.THRESHOLD_RULES`):

* ``specificity``: the ``eval.target_specificity`` quantile of the validation *normal* scores:
  at least that fraction of normal images scores below it. It needs no abnormal image and does
  not move with the class balance.
* ``youden``: the threshold maximising Youden's J = TPR - FPR on validation.
* ``f1``: the threshold maximising F1 on validation. Where abnormal images dominate it tends
  to call everything abnormal; kept as an option.

A new rule is one entry in :data:`RULES` (how it chooses, and its name in reports) and its
name in :data:`imgae_dx_jax.schema.THRESHOLD_RULES`, which the config is validated against
(the schema cannot import this module; a unit test checks that the two agree).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from imgae_dx_jax.metrics.image import best_f1, operating_points, roc_auc
from imgae_dx_jax.results import SplitScores


def specificity_threshold(labels: ArrayLike, scores: ArrayLike, target: float) -> float:
    """The lowest threshold below which at least ``target`` of the normal images score.

    With ``n`` normal scores this is the ``ceil(target * n)``-th smallest one counted from
    zero (an order statistic: the empirical ``target`` quantile), moved up past ties; just
    above the highest normal score when every normal must fall below it. The specificity on
    these images is then at least ``target``, and no lower observed score achieves that.

    Args:
        labels: validation labels, 1 for abnormal, 0 for normal.
        scores: validation anomaly scores, higher meaning more abnormal.
        target: the specificity aimed at, in ``(0, 1)``.

    Returns:
        The threshold; predict abnormal iff score >= it.

    Raises:
        ValueError: if ``target`` is outside ``(0, 1)``, the inputs differ in length or there
            is no normal image.

    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target specificity must be in (0, 1), got {target}")
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    normal = np.sort(s[y == 0])
    if not normal.size:
        raise ValueError("the specificity threshold needs normal (0) images")
    needed = int(np.ceil(target * normal.size - 1e-9))  # normals that must score below
    candidates = np.append(np.unique(normal), np.nextafter(normal[-1], np.inf))
    below = np.searchsorted(normal, candidates, side="left")
    return float(candidates[int(np.argmax(below >= needed))])


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The observed score maximising TPR - FPR (ties: the highest, most specific threshold).

    Raises:
        ValueError: if the inputs are malformed or only one class is present.
    """
    thresholds, tpr, fpr = operating_points(labels, scores)
    return float(thresholds[int(np.argmax(tpr - fpr))])


class Rule(NamedTuple):
    """A threshold rule: how it chooses, and how a report names it."""

    choose: Callable[[ArrayLike, ArrayLike, float], float]
    """``(labels, scores, target) -> threshold``."""
    describe: Callable[[float], str]
    """``target -> the rule in words``."""


RULES: dict[str, Rule] = {
    "specificity": Rule(specificity_threshold, lambda t: f"{100 * t:g}% specificity on normals"),
    "youden": Rule(
        lambda labels, scores, _target: youden_threshold(labels, scores),
        lambda _t: "maximum Youden's J (TPR - FPR)",
    ),
    "f1": Rule(lambda labels, scores, _target: best_f1(labels, scores)[1], lambda _t: "maximum F1"),
}
"""Threshold rules by their ``eval.threshold`` name."""


def select_threshold(
    labels: ArrayLike, scores: ArrayLike, rule: str = "specificity", target: float = 0.95
) -> float:
    """Choose the operating threshold on validation data with one of :data:`RULES`.

    Call this on the validation split and apply the result unchanged to the test split (via
    :func:`~imgae_dx_jax.metrics.image.image_metrics` or
    :func:`~imgae_dx_jax.metrics.image.rates_at`), so that test metrics are not tuned on test
    labels.

    Args:
        labels: validation labels, 1 for abnormal, 0 for normal.
        scores: validation anomaly scores, higher meaning more abnormal.
        rule: ``specificity``, ``youden`` or ``f1``.
        target: the specificity aimed at by the ``specificity`` rule.

    Returns:
        The threshold; predict abnormal iff score >= it.

    Raises:
        ValueError: for an unknown rule, or inputs the rule cannot use.

    """
    if rule not in RULES:
        choices = ", ".join(RULES)
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {choices}")
    return RULES[rule].choose(labels, scores, target)


def describe_rule(rule: str, target: float) -> str:
    """The rule in words, for reports: e.g. ``95% specificity on normals``."""
    return RULES[rule].describe(target)


def choose_score(
    labels: ArrayLike, candidates: dict[str, np.ndarray], setting: str = "auto"
) -> tuple[str, dict[str, float]]:
    """Pick the image score on validation data: ``setting``, or the best AUROC for ``auto``.

    Args:
        labels: validation labels, 1 for abnormal, 0 for normal.
        candidates: validation scores of each candidate, simplest first (ties go to the
            earlier one).
        setting: a candidate name, or ``auto``.

    Returns:
        ``(name, aurocs)``: the chosen candidate and every candidate's validation AUROC.

    Raises:
        ValueError: for an unknown candidate, or labels of one class only.

    """
    aurocs = {name: roc_auc(labels, scores) for name, scores in candidates.items()}
    if setting == "auto":
        return max(aurocs, key=aurocs.__getitem__), aurocs  # max keeps the first of ties
    if setting not in aurocs:
        raise ValueError(f"unknown score {setting!r}; choose auto or one of {', '.join(aurocs)}")
    return setting, aurocs


def map_scale(split: SplitScores) -> float:
    """Overlay saturation level: the 95th percentile of the map maxima of normal images.

    A pixel shown at full colour is hotter than the hottest pixel of most normal images.
    """
    peaks = split.peaks[split.labels == 0]
    return float(np.quantile(peaks if peaks.size else split.peaks, 0.95)) or 1.0
