"""Metrics of anomaly scores and maps.

- :mod:`~imgae_dx_jax.metrics.image`: image-level metrics (AUROC, patient-weighted AUROC,
  AUPRC, FPR at 95% TPR, F1, patient bootstrap CIs, the paired patient bootstrap of an AUROC
  difference).
- :mod:`~imgae_dx_jax.metrics.threshold`: the image score, operating threshold and overlay
  scale chosen on the validation split.
- :mod:`~imgae_dx_jax.metrics.curves`: ROC and PR curves with bootstrap bands.
- :mod:`~imgae_dx_jax.metrics.breakdown`: AUROC per finding and per subgroup.
- :mod:`~imgae_dx_jax.metrics.localization`: pixel AUROC and pointing game against boxes.
"""

from __future__ import annotations

from imgae_dx_jax.metrics.image import (
    Metric,
    average_precision,
    best_f1,
    bootstrap_ci,
    fpr_at_tpr,
    image_metrics,
    paired_bootstrap,
    patient_weighted_auroc,
    rates_at,
    roc_auc,
)
from imgae_dx_jax.metrics.localization import localization_metrics
from imgae_dx_jax.metrics.threshold import choose_score, select_threshold

__all__ = [
    "Metric",
    "average_precision",
    "best_f1",
    "bootstrap_ci",
    "choose_score",
    "fpr_at_tpr",
    "image_metrics",
    "localization_metrics",
    "paired_bootstrap",
    "patient_weighted_auroc",
    "rates_at",
    "roc_auc",
    "select_threshold",
]
