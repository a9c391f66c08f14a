"""The operating threshold and the overlay scale, both chosen on the validation split.

A new threshold rule goes here, next to :func:`select_threshold`, and is chosen in
:func:`imgae_dx_jax.evaluation.evaluate_model`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from imgae_dx_jax.metrics.image import best_f1
from imgae_dx_jax.results import SplitScores


def select_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """Choose the operating threshold on validation data: the one maximising F1.

    Call this on the validation split and apply the result unchanged to the test split (via
    :func:`~imgae_dx_jax.metrics.image.image_metrics` or
    :func:`~imgae_dx_jax.metrics.image.rates_at`), so that test metrics are not tuned on test
    labels. Ties are broken towards the lowest threshold, as in
    :func:`~imgae_dx_jax.metrics.image.best_f1`.

    Args:
        labels: validation labels, 1 for abnormal, 0 for normal.
        scores: validation anomaly scores, higher meaning more abnormal.

    Returns:
        The threshold (an observed validation score); predict abnormal iff score >= it.

    Raises:
        ValueError: if the inputs are malformed or only one class is present.

    """
    return best_f1(labels, scores)[1]


def map_scale(split: SplitScores) -> float:
    """Overlay saturation level: the 95th percentile of the map maxima of normal images.

    A pixel shown at full colour is hotter than the hottest pixel of most normal images.
    """
    peaks = split.peaks[split.labels == 0]
    return float(np.quantile(peaks if peaks.size else split.peaks, 0.95)) or 1.0
