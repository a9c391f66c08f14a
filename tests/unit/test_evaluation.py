"""Evaluation's validation-only choices (image score, threshold), with a stand-in scorer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from imgae_dx_jax import evaluation
from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.nih import Catalog, Record
from imgae_dx_jax.data.split import Splits
from imgae_dx_jax.evaluate import main as evaluate_main
from imgae_dx_jax.evaluation import calibrate, evaluate_model
from imgae_dx_jax.metrics.image import roc_auc
from imgae_dx_jax.metrics.threshold import specificity_threshold
from imgae_dx_jax.results import SplitScores
from imgae_dx_jax.schema import SCORES

SIZE = 16


def records(prefix: str, labels: np.ndarray) -> tuple[Record, ...]:
    return tuple(
        Record(
            key=f"{prefix}{i:04d}.png",
            member=f"{prefix}{i:04d}.png",
            stage="all",
            label=int(y),
            findings=("Mass",) if y else (),
            patient=f"{prefix}{i // 2}",
            age=40,
            sex="F",
            view="PA",
        )
        for i, y in enumerate(labels)
    )


def candidates(labels: np.ndarray, best: str, seed: int) -> np.ndarray:
    """Scores of every candidate: ``best`` separates the classes, the others are weak."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(labels.size, len(SCORES))) + 0.3 * labels[:, None]
    out[:, SCORES.index(best)] += 3.0 * labels
    return out


class FakeScores:
    """Stands in for :func:`imgae_dx_jax.inference.score_split`: fixed scores per image."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def __call__(self, scorer, config, recs, store, *, desc, keep_maps=False) -> SplitScores:
        rows = np.array([self.table[r.key] for r in recs]).reshape(len(recs), len(SCORES))
        peaks = np.abs(rows) + 1.0
        maps = np.zeros((len(recs), SIZE, SIZE), np.float32) if keep_maps else None
        return SplitScores(
            tuple(recs),
            rows[:, SCORES.index(scorer.score)],
            peaks[:, SCORES.index(scorer.score)],
            {},
            np.zeros((len(recs), SIZE, SIZE), np.uint8) if keep_maps else None,
            maps,
            maps,
            {name: (rows[:, i], peaks[:, i]) for i, name in enumerate(SCORES)},
        )


class FakeScorer:
    def __init__(self, model, config, score: str = "mean") -> None:
        self.score = score

    def select(self, score: str) -> FakeScorer:
        return FakeScorer(None, None, score)


def run_evaluation(monkeypatch, tmp_path: Path, test_labels: np.ndarray) -> dict:
    val_labels = np.tile([0, 0, 1, 1, 1], 12)
    val = records("v", val_labels)
    test = records("t", test_labels)
    # top5 separates on validation, mean on test: a leak of test labels would pick mean.
    table = dict(zip((r.key for r in val), candidates(val_labels, "top5", 0), strict=True))
    fixed_test = np.tile([0, 0, 1, 1, 1], 12)
    table |= dict(zip((r.key for r in test), candidates(fixed_test, "mean", 1), strict=True))
    monkeypatch.setattr(evaluation, "score_split", FakeScores(table))
    monkeypatch.setattr(evaluation, "Scorer", FakeScorer)
    monkeypatch.setattr(evaluation, "restore_model", lambda run_dir, config: None)
    monkeypatch.setattr(rundir, "check_held_out", lambda *args: None)
    config = load_config(overrides=[f"data.image_size={SIZE}", "eval.score=auto"])
    splits = Splits((), val, test, official=False)
    catalog = Catalog(val + test, ("all",), None)
    store = SimpleNamespace(description="synthetic")
    result = evaluate_model(
        "fake",
        tmp_path,
        config,
        (store, catalog, splits),  # type: ignore[arg-type]
        own_data=False,
        n_bootstrap=20,
        seed=0,
    )
    return result.metrics


def test_the_score_and_threshold_depend_on_validation_labels_only(monkeypatch, tmp_path):
    labels = np.tile([0, 0, 1, 1, 1], 12)
    first = run_evaluation(monkeypatch, tmp_path, labels)
    permuted = run_evaluation(monkeypatch, tmp_path, np.random.default_rng(3).permutation(labels))
    assert first["score"] == permuted["score"] == "top5"
    assert first["score_val_auroc"] == permuted["score_val_auroc"]
    assert first["threshold"] == permuted["threshold"]
    assert first["auroc"] != permuted["auroc"]  # the permutation did change the test labels
    assert first["threshold_source"] == "validation split, 95% specificity on normals"
    assert first["target_specificity"] == 0.95
    assert first["val_specificity"] == 23 / 24  # the fewest normals below that reach 95%


def test_calibrate_follows_the_settings() -> None:
    labels = np.tile([0, 1], 30)
    rows = candidates(labels, "top10", 5)
    peaks = rows + 10.0
    val = SplitScores(
        records("v", labels),
        rows[:, 0],
        peaks[:, 0],
        {},
        by_score={name: (rows[:, i], peaks[:, i]) for i, name in enumerate(SCORES)},
    )
    settings = load_config().eval
    auto = calibrate(val, settings)
    top10 = rows[:, SCORES.index("top10")]
    assert auto.score == "top10"
    assert auto.score_aurocs["top10"] == roc_auc(labels, top10)
    assert auto.threshold == specificity_threshold(labels, top10, 0.95)
    assert auto.map_scale == pytest.approx(np.quantile(peaks[labels == 0, 2], 0.95))
    fixed = calibrate(val, load_config(overrides=["eval.score=mean", "eval.threshold=f1"]).eval)
    assert fixed.score == "mean" and fixed.rule == "maximum F1"


def test_an_out_that_is_a_file_fails_before_any_work(monkeypatch, tmp_path, capsys):
    def no_work(*args):
        raise AssertionError("work was done before --out was checked")

    monkeypatch.setattr("imgae_dx_jax.api.setup_compilation_cache", no_work)
    monkeypatch.setattr(evaluation, "load_splits", no_work)
    run = tmp_path / "run"
    rundir.export_dir(run).mkdir(parents=True)
    rundir.write_config(load_config(), rundir.export_dir(run))
    out = tmp_path / "taken"
    out.write_text("")
    assert evaluate_main(["--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgae-evaluate: error: cannot write to {out}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
