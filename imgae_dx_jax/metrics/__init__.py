"""Metrics of anomaly scores and maps.

- :mod:`~imgae_dx_jax.metrics.image`: image-level metrics (AUROC, AUPRC, FPR at 95% TPR, F1,
  patient bootstrap CIs, the paired DeLong test).
- :mod:`~imgae_dx_jax.metrics.threshold`: the operating threshold and overlay scale chosen
  on the validation split.
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
    delong_test,
    fpr_at_tpr,
    image_metrics,
    rates_at,
    roc_auc,
)
from imgae_dx_jax.metrics.localization import localization_metrics
from imgae_dx_jax.metrics.threshold import select_threshold

__all__ = [
    "Metric",
    "average_precision",
    "best_f1",
    "bootstrap_ci",
    "delong_test",
    "fpr_at_tpr",
    "image_metrics",
    "localization_metrics",
    "rates_at",
    "roc_auc",
    "select_threshold",
]
