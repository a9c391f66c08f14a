"""AUROC broken down by NIH finding and by subgroup (view position, sex, age band).

Every AUROC comes with a 95% patient-level bootstrap interval
(:func:`~imgae_dx_jax.metrics.image.bootstrap_ci`); both are None where the images lack a
class, the interval alone where a stratum of the bootstrap -- the patients of the subset with
an abnormal image, or those without -- has fewer than :data:`MIN_PATIENTS` patients: every
resample would draw that one patient again, so the interval would leave out how patients
differ (on the NIH sample's test split, all 21 images with Edema are one patient's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from imgae_dx_jax.data.nih import FINDINGS, Record
from imgae_dx_jax.metrics.image import bootstrap_ci, roc_auc
from imgae_dx_jax.results import SplitScores

AGE_BANDS = ((0, 17), (18, 39), (40, 59), (60, 79), (80, 200))
MIN_PATIENTS = 2
"""Fewest patients with an abnormal image, and without one, for a bootstrap interval."""


def _auroc_with_ci(
    split: SplitScores, keep: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int
) -> dict[str, Any]:
    """``auroc``, ``auroc_ci`` and the patient counts of the images ``keep``.

    ``auroc`` and ``auroc_ci`` are None where undefined; ``patients_abnormal`` counts the
    patients with an abnormal image, ``patients_normal`` the others. The interval is None
    where either stratum of the patient bootstrap has fewer than :data:`MIN_PATIENTS`
    patients.
    """
    y, s, patients = labels[keep], split.scores[keep], split.patients[keep]
    abnormal = set(patients[y == 1].tolist())
    counts = {
        "patients_abnormal": len(abnormal),
        "patients_normal": len(set(patients.tolist()) - abnormal),
    }
    if not 0 < y.sum() < y.size:
        return {"auroc": None, "auroc_ci": None, **counts}
    ci: list[float] | None = None
    if min(counts.values()) >= MIN_PATIENTS:
        ci = list(bootstrap_ci(y, s, patients, roc_auc, n_resamples=n_resamples, seed=seed))
    return {"auroc": roc_auc(y, s), "auroc_ci": ci, **counts}


def per_finding(split: SplitScores, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """AUROC of each NIH finding (images with it, possibly among others) vs. the normals.

    Args:
        split: the scored test split.
        n_resamples: bootstrap resamples of each interval.
        seed: bootstrap seed.

    Returns:
        One row per finding: ``finding``, ``n_abnormal``, ``n_normal`` (images),
        ``patients_abnormal``, ``patients_normal``, ``auroc`` and ``auroc_ci`` (``[low, high]``).
    """
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
                **_auroc_with_ci(split, keep, labels, n_resamples, seed),
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


def subgroups(split: SplitScores, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """AUROC within each view position, sex and age band (None where a class is missing).

    Args:
        split: the scored test split.
        n_resamples: bootstrap resamples of each interval.
        seed: bootstrap seed.

    Returns:
        One row per subgroup: ``group``, ``value``, ``n_normal``, ``n_abnormal`` (images),
        ``patients_abnormal``, ``patients_normal``, ``auroc`` and ``auroc_ci``.
    """
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
                    **_auroc_with_ci(split, keep, labels, n_resamples, seed),
                }
            )
    return rows
