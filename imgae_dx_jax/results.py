"""Plain result records: what inference, metrics, evaluation and the report exchange."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.schema import Config


@dataclass(frozen=True)
class SplitScores:
    """Anomaly scores of the readable images of one split, in catalog order.

    ``images``, ``reconstructions`` and ``maps`` ([N, H, W]) are only kept when asked for.
    ``scores`` and ``peaks`` are those of one image score; ``by_score`` holds, for every
    candidate score (:data:`~imgae_dx_jax.schema.SCORES`), its scores and the maxima of the
    map it is computed from.
    """

    records: tuple[Record, ...]
    scores: np.ndarray
    peaks: np.ndarray
    """Per-image maximum of the anomaly map."""
    skipped: dict[str, int]
    images: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    maps: np.ndarray | None = None
    by_score: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def choose(self, score: str) -> SplitScores:
        """The same images reporting the candidate ``score`` (and its map maxima)."""
        scores, peaks = self.by_score[score]
        return replace(self, scores=scores, peaks=peaks)

    @property
    def candidates(self) -> dict[str, np.ndarray]:
        """Every candidate score's image scores, by score name (what the score is chosen from)."""
        return {name: scores for name, (scores, _) in self.by_score.items()}

    @property
    def labels(self) -> np.ndarray:
        """1 = abnormal, 0 = normal."""
        return np.array([r.label for r in self.records], dtype=np.int32)

    @property
    def patients(self) -> np.ndarray:
        """Patient id of each image (the bootstrap's resampling unit)."""
        return np.array([r.patient for r in self.records])


@dataclass(frozen=True)
class Band:
    """A curve of the full test split and its pointwise 95% bootstrap band on a grid."""

    x: np.ndarray
    y: np.ndarray
    grid: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class ModelResult:
    """Everything the report needs about one evaluated run."""

    name: str
    run_dir: Path
    config: Config
    val: SplitScores
    test: SplitScores
    metrics: dict[str, Any]
    roc: Band
    pr: Band
    examples: SplitScores
    """A few test images with maps: typical, best and worst cases
    (:func:`imgae_dx_jax.evaluation.select_examples`)."""
    example_kinds: tuple[str, ...]
    boxes: dict[str, list[tuple[str, float, float, float, float]]]
    """Scaled NIH boxes of the example images, by image name."""
    map_scale: float
    """Anomaly-map value at which overlays saturate
    (:func:`imgae_dx_jax.metrics.threshold.map_scale`)."""
    split_counts: dict[str, dict[str, int]]


@dataclass
class Comparison:
    """The evaluated runs, the paired tests between them, and where the outputs went."""

    models: list[ModelResult]
    paired: list[dict[str, Any]]
    """Paired patient-level bootstraps of the AUROC difference of each pair of models."""
    data: str
    bootstrap: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The combined ``metrics.json`` of a comparison."""
        return {
            "models": {m.name: m.metrics for m in self.models},
            "paired": self.paired,
            "data": self.data,
            "bootstrap": self.bootstrap,
            "test_split": self.models[0].split_counts["test"],
        }


@dataclass(frozen=True)
class Prediction:
    """The result for one input file; ``error`` is set (and the rest None) if unreadable."""

    path: Path
    score: float | None
    abnormal: bool | None
    overlay: Path | None
    error: str | None = None
