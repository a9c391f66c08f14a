"""AUROC broken down by NIH finding and by subgroup (view position, sex, age band)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from imgae_dx_jax.data.nih import FINDINGS, Record
from imgae_dx_jax.metrics.image import roc_auc
from imgae_dx_jax.results import SplitScores

AGE_BANDS = ((0, 17), (18, 39), (40, 59), (60, 79), (80, 200))


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
