"""A model-free reference: statistics of each image's own pixels, scored like a detector.

Two chest X-ray sets can differ between their normal and abnormal images in ways no detector
needs to learn: exposure, contrast, the film or device they were taken with. A detector is
worth its AUROC only where it beats what such a statistic of the raw image reaches on the same
patients. Every evaluation therefore scores the validation and test images with the
statistics of :data:`STATISTICS` -- of the decoded image, in [0, 1], before any intensity
normalisation, over all of its pixels -- in both directions (``-<name>``: a low value is
abnormal): :func:`reference_scores` here, the scores level beside
:func:`imgae_dx_jax.inference.score_split`. Evaluation
(:func:`imgae_dx_jax.evaluation.evaluate_reference`) chooses the candidate with the best
validation AUROC and its operating threshold on validation, as it chooses a model's image
score, and reports it on the test patients beside every model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from imgae_dx_jax.data import Store
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.inference import scan_split
from imgae_dx_jax.results import SplitScores
from imgae_dx_jax.schema import Config

STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=1),
    "std": lambda x: x.std(axis=1),
    "p01": lambda x: np.quantile(x, 0.01, axis=1),
    "p99": lambda x: np.quantile(x, 0.99, axis=1),
}
"""Statistics of an image's pixels (rows of ``[N, pixels]`` in [0, 1]) -> one value each:
exposure (mean), contrast (std), and the dark and bright ends of the histogram."""
CANDIDATES = tuple(f"{sign}{name}" for name in STATISTICS for sign in ("", "-"))
"""The reference's candidate scores: each statistic, and its negative (a low value abnormal)."""


def candidate_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every reference candidate of a uint8 batch ``[N, H, W(, C)]``: each statistic, both signs.

    Returns:
        ``{"mean": ..., "-mean": ..., "std": ..., ...}`` (the order of :data:`CANDIDATES`):
        float64 scores, one per image, higher meaning more abnormal.
    """
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    out: dict[str, np.ndarray] = {}
    for name, statistic in STATISTICS.items():
        values = statistic(flat)
        out[name], out[f"-{name}"] = values, -values
    return out


def reference_scores(
    records: Sequence[Record], store: Store, config: Config, *, desc: str
) -> SplitScores:
    """The reference candidates of every readable image of ``records`` (unreadable: skipped).

    Images are read as a model's scoring reads them (:func:`~imgae_dx_jax.inference.scan_split`,
    at ``data.image_size``). ``by_score`` holds every candidate (its scores serve as the map
    maxima too: there is no map); ``scores`` is the first candidate's.
    """
    kept, parts, skipped = scan_split(
        records, store, config, config.eval.batch_size, candidate_statistics, desc=desc
    )
    joined = {
        name: np.concatenate([p[name] for p in parts] or [np.zeros(0)]) for name in CANDIDATES
    }
    first = joined[CANDIDATES[0]]
    return SplitScores(
        records=kept,
        scores=first,
        peaks=first,
        skipped=skipped,
        by_score={name: (values, values) for name, values in joined.items()},
    )
