"""The model-free reference: raw-image statistics, chosen on validation like a model's score."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from imgae_dx_jax import evaluation
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.nih import Catalog, Record
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.metrics.image import roc_auc
from imgae_dx_jax.reference import CANDIDATES, candidate_statistics
from imgae_dx_jax.results import SplitScores


def test_candidates_are_each_statistic_of_the_raw_pixels_in_both_directions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    out = candidate_statistics(images)
    assert (
        tuple(out) == CANDIDATES == ("mean", "-mean", "std", "-std", "p01", "-p01", "p99", "-p99")
    )
    pixels = images.reshape(5, -1) / 255.0
    np.testing.assert_allclose(out["mean"], pixels.mean(axis=1))
    np.testing.assert_allclose(out["std"], pixels.std(axis=1))
    np.testing.assert_allclose(out["p01"], np.quantile(pixels, 0.01, axis=1))
    np.testing.assert_allclose(out["-p99"], -np.quantile(pixels, 0.99, axis=1))


def records(prefix: str, labels: np.ndarray) -> tuple[Record, ...]:
    return tuple(
        Record(
            f"{prefix}{i}.png",
            f"{prefix}{i}.png",
            "all",
            int(y),
            (),
            f"{prefix}{i // 2}",
            40,
            "F",
            "PA",
        )
        for i, y in enumerate(labels)
    )


def fake_reference_scores(separating: dict[str, str]):
    """Stands in for :func:`imgae_dx_jax.reference.reference_scores`: on each split (by its
    records' prefix) one candidate separates the classes, the others are noise."""

    def score(recs, store, config, *, desc) -> SplitScores:
        labels = np.array([r.label for r in recs], float)
        rng = np.random.default_rng(len(recs))
        by_score = {}
        for name in CANDIDATES:
            values = rng.normal(size=len(recs)) + (
                4.0 * labels if name == separating[recs[0].key[0]] else 0
            )
            by_score[name] = (values, values)
        first = by_score[CANDIDATES[0]][0]
        return SplitScores(tuple(recs), first, first, {}, by_score=by_score)

    return score


def test_the_statistic_and_its_threshold_are_chosen_on_validation_only(monkeypatch):
    labels = np.tile([0, 0, 1, 1, 1], 12)
    val, test = records("v", labels), records("t", labels)
    # -std separates validation, mean separates test: a leak of test labels would pick mean.
    monkeypatch.setattr(
        evaluation, "reference_scores", fake_reference_scores({"v": "-std", "t": "mean"})
    )
    config = load_config(overrides=["eval.score=top10"])  # a model's setting does not apply
    loaded = (SimpleNamespace(), Catalog(val + test, ("all",), None), Splits((), val, test, False))
    metrics, scored = evaluation.evaluate_reference(config, loaded, n_bootstrap=50, seed=0)
    assert metrics["statistic"] == "-std" and metrics["val_auroc"] > 0.95
    assert metrics["auroc"] == roc_auc(labels, scored.scores) < 0.8  # -std is noise on test
    assert metrics["threshold_source"] == "validation split, 95% specificity on normals"
    low, high = metrics["auroc_ci"]
    assert 0 <= low <= high <= 1
