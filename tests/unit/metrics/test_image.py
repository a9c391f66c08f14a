"""Tests for imgae_dx_jax.metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from imgae_dx_jax.metrics import (
    average_precision,
    best_f1,
    bootstrap_ci,
    fpr_at_tpr,
    image_metrics,
    localization_metrics,
    paired_bootstrap,
    patient_weighted_auroc,
    rates_at,
    roc_auc,
    select_threshold,
)
from imgae_dx_jax.metrics.image import weighted_roc_auc


def _random_case(seed: int, n: int = 200, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + labels
    if ties:
        scores = np.round(scores, 1)  # many tied scores, also across classes
    return labels, scores


# --- roc_auc / average_precision -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [True, False])
def test_roc_auc_and_average_precision_match_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_case(seed, n=50 + 37 * seed, ties=ties)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_roc_auc_hand_case() -> None:
    # pairs (pos, neg): (3,1) win, (3,2) win, (2,1) win, (2,2) tie -> (3 + 0.5) / 4
    assert roc_auc([0, 0, 1, 1], [1.0, 2.0, 2.0, 3.0]) == 0.875
    assert roc_auc([1, 0], [0.0, 1.0]) == 0.0


def test_average_precision_hand_case() -> None:
    # ranked: 1 (pos), 0.8 (neg), 0.6 (pos) -> 0.5 * 1 + 0.5 * 2/3
    assert average_precision([1, 0, 1], [1.0, 0.8, 0.6]) == pytest.approx(0.5 + 1 / 3)


def _f1_rule(labels, scores):
    return select_threshold(labels, scores, "f1")


def _youden_rule(labels, scores):
    return select_threshold(labels, scores, "youden")


@pytest.mark.parametrize(
    "fn", [roc_auc, average_precision, fpr_at_tpr, best_f1, _f1_rule, _youden_rule]
)
@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_raises(fn, labels: list[int]) -> None:
    with pytest.raises(ValueError, match=r"only .* images present"):
        fn(labels, [0.1, 0.2, 0.3])


def test_single_class_raises_for_threshold_metrics() -> None:
    with pytest.raises(ValueError, match="only normal"):
        rates_at([0, 0], [0.1, 0.2], 0.15)
    with pytest.raises(ValueError, match="only abnormal"):
        image_metrics([1, 1], [0.1, 0.2], [0, 1], 0.15)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 \\(normal\\) or 1"),
        ([0, 1], [0.1, 0.2, 0.3], "differ in length"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_malformed_input_raises(labels, scores, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        roc_auc(labels, scores)


# --- fpr_at_tpr ------------------------------------------------------------------------------


def test_fpr_at_tpr_hand_case() -> None:
    # 20 abnormal scored 1..20, 10 normal scored 0.5, 2.5, 4.5, ..., 18.5.
    labels = np.r_[np.ones(20, int), np.zeros(10, int)]
    scores = np.r_[np.arange(1.0, 21.0), np.arange(0.5, 20.0, 2.0)]
    # TPR 0.95 needs 19 positives: threshold 2 -> normals >= 2: 2.5..18.5 = 9 -> FPR 0.9.
    assert fpr_at_tpr(labels, scores, 0.95) == pytest.approx(0.9)
    # TPR 1.0 needs threshold 1 -> same 9 normals (0.5 is below 1) -> 0.9.
    assert fpr_at_tpr(labels, scores, 1.0) == pytest.approx(0.9)
    # TPR 0.5 needs 10 positives: threshold 11 -> normals 12.5..18.5 = 4 -> 0.4.
    assert fpr_at_tpr(labels, scores, 0.5) == pytest.approx(0.4)
    # TPR 0.05 -> threshold 20 -> no normal above -> 0.
    assert fpr_at_tpr(labels, scores, 0.05) == 0.0


def test_fpr_at_tpr_ties_take_the_whole_tie_group() -> None:
    # The only way to reach any TPR is the tied score 1.0, which also flags both normals.
    assert fpr_at_tpr([1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]) == 0.5


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.01])
def test_fpr_at_tpr_rejects_bad_tpr(tpr: float) -> None:
    with pytest.raises(ValueError, match="tpr must be in"):
        fpr_at_tpr([0, 1], [0.1, 0.2], tpr)


# --- best_f1 / select_threshold / rates_at -----------------------------------------------


def test_best_f1_and_select_threshold_hand_case() -> None:
    labels = [1, 0, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.3, 0.1]
    # thresholds: 0.9 -> tp1 fp0 f1 2/4; 0.8 -> tp1 fp1 2/5; 0.7 -> tp2 fp1 4/6;
    # 0.6 -> tp3 fp1 6/7 (best); 0.3 -> tp3 fp2 6/8; 0.1 -> 6/9.
    f1, threshold = best_f1(labels, scores)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == 0.6
    assert select_threshold(labels, scores, "f1") == 0.6
    assert rates_at(labels, scores, threshold)["f1"] == pytest.approx(f1)


def test_best_f1_ties_resolve_to_lowest_threshold() -> None:
    # threshold 0.9 -> tp1 fp0 f1 2/3; 0.5 -> tp1 fp1 2/4; 0.4 -> tp2 fp2 4/6 (tie with 0.9).
    labels = [1, 0, 0, 1]
    scores = [0.9, 0.5, 0.4, 0.4]
    f1, threshold = best_f1(labels, scores)
    assert f1 == pytest.approx(2 / 3)
    assert threshold == 0.4
    assert select_threshold(labels, scores, "f1") == 0.4


def test_best_f1_is_max_of_rates_at_f1() -> None:
    labels, scores = _random_case(3)
    f1, threshold = best_f1(labels, scores)
    all_f1 = [rates_at(labels, scores, t)["f1"] for t in np.unique(scores)]
    assert f1 == pytest.approx(max(all_f1))
    assert rates_at(labels, scores, threshold)["f1"] == pytest.approx(f1)


def test_rates_at_hand_case() -> None:
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.5, 0.2, 0.7, 0.5, 0.3, 0.1, 0.0, 0.4]
    # threshold 0.5 (>=): tp = 3 (0.9, 0.8, 0.5), fp = 2 (0.7, 0.5), fn = 1, tn = 4
    rates = rates_at(labels, scores, 0.5)
    assert rates == pytest.approx(
        {
            "sensitivity": 3 / 4,
            "specificity": 4 / 6,
            "precision": 3 / 5,
            "f1": 6 / 9,
            "accuracy": 7 / 10,
        }
    )


def test_rates_at_nothing_predicted_abnormal() -> None:
    rates = rates_at([1, 0], [0.2, 0.1], 1.0)
    assert rates["precision"] == 0.0
    assert rates["f1"] == 0.0
    assert rates["sensitivity"] == 0.0
    assert rates["specificity"] == 1.0


def test_rates_at_rejects_nan_threshold() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rates_at([1, 0], [0.2, 0.1], float("nan"))


# --- image_metrics ---------------------------------------------------------------------------


def test_image_metrics_keys_ranges_and_json() -> None:
    val_labels, val_scores = _random_case(10)
    labels, scores = _random_case(11, n=150)
    threshold = select_threshold(val_labels, val_scores)
    groups = np.arange(labels.size) // 2
    result = image_metrics(labels, scores, groups, threshold)
    assert set(result) == {
        "auroc",
        "auroc_patient_weighted",
        "auprc",
        "fpr_at_95_tpr",
        "best_f1",
        "threshold",
        "f1",
        "sensitivity",
        "specificity",
        "precision",
        "n_normal",
        "n_abnormal",
    }
    json.loads(json.dumps(result, allow_nan=False))
    for key in ("n_normal", "n_abnormal"):
        assert type(result[key]) is int
    for key in set(result) - {"n_normal", "n_abnormal", "threshold"}:
        assert type(result[key]) is float
        assert 0.0 <= result[key] <= 1.0, key
    assert result["n_normal"] + result["n_abnormal"] == 150
    assert result["n_abnormal"] == int(np.sum(labels))
    assert result["threshold"] == threshold
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["auroc_patient_weighted"] == patient_weighted_auroc(labels, scores, groups)
    assert result["f1"] <= result["best_f1"]  # the test-tuned oracle bounds the honest F1
    assert result["sensitivity"] == rates_at(labels, scores, threshold)["sensitivity"]


# --- bootstrap_ci ----------------------------------------------------------------------------


def _patients(seed: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of ``n_patients`` patients with 1-3 images each and patient-level effects."""
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 4, n_patients)
    groups = np.repeat(np.arange(n_patients), per_patient)
    sick = rng.random(n_patients) < 0.4
    labels = (sick[groups] & (rng.random(groups.size) < 0.8)).astype(int)
    scores = rng.normal(size=n_patients)[groups] * 0.5 + rng.normal(size=groups.size) + labels
    return labels, scores, groups


def test_bootstrap_ci_reproducible_and_contains_estimate() -> None:
    labels, scores, groups = _patients(0, 120)
    ci = bootstrap_ci(labels, scores, groups, roc_auc, n_resamples=300, seed=5)
    assert ci == bootstrap_ci(labels, scores, groups, roc_auc, n_resamples=300, seed=5)
    assert ci != bootstrap_ci(labels, scores, groups, roc_auc, n_resamples=300, seed=6)
    low, high = ci
    assert low < roc_auc(labels, scores) < high
    assert 0.0 <= low < high <= 1.0


def test_bootstraps_show_their_resamples(bars) -> None:
    labels, scores, groups = _patients(0, 40)
    bootstrap_ci(labels, scores, groups, roc_auc, n_resamples=30)
    paired_bootstrap(labels, scores, -scores, groups, n_resamples=20)
    assert [(b.desc, b.total, b.n, b.unit) for b in bars] == [
        ("patient bootstrap", 30, 30, "resample"),
        ("patient bootstrap", 20, 20, "resample"),
    ]


def test_bootstrap_ci_narrower_with_more_patients() -> None:
    small = _patients(1, 60)
    large = _patients(1, 1500)
    low_s, high_s = bootstrap_ci(*small, roc_auc, n_resamples=200)
    low_l, high_l = bootstrap_ci(*large, roc_auc, n_resamples=200)
    assert high_l - low_l < 0.5 * (high_s - low_s)


def test_bootstrap_ci_wider_at_higher_confidence() -> None:
    data = _patients(2, 100)
    low_90, high_90 = bootstrap_ci(*data, roc_auc, n_resamples=300, confidence=0.9)
    low_99, high_99 = bootstrap_ci(*data, roc_auc, n_resamples=300, confidence=0.99)
    assert low_99 < low_90 and high_90 < high_99


def test_bootstrap_resamples_whole_patients_within_strata() -> None:
    # Each score encodes (patient, image); patients 0-3 have an abnormal image, 4-9 do not.
    sizes = [1, 2, 3, 2, 1, 3, 2, 1, 2, 4]
    groups = np.repeat(np.arange(10), sizes)
    image = np.concatenate([np.arange(k) for k in sizes])
    scores = groups * 10.0 + image
    labels = ((groups < 4) & (image == 0)).astype(int)  # patients 0-3: first image abnormal
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(y: np.ndarray, s: np.ndarray) -> float:
        seen.append((y.copy(), s.copy()))
        return float(len(s))

    bootstrap_ci(labels, scores, groups, record, n_resamples=50, seed=1)
    assert len(seen) == 50
    drawn_abnormal = set()
    for y, s in seen:
        patient, img = (s // 10).astype(int), (s % 10).astype(int)
        # labels travel with their images
        np.testing.assert_array_equal(y, labels[np.searchsorted(scores, s)])
        # every image of a drawn patient appears equally often (patients move as a whole)
        for p in np.unique(patient):
            copies = np.bincount(img[patient == p], minlength=sizes[p])
            assert np.all(copies == copies[0]) and copies.size == sizes[p]
        # each stratum keeps its patient count: 4 abnormal-stratum, 6 normal-stratum draws
        n_draws = {p: np.sum(patient == p) // sizes[p] for p in np.unique(patient)}
        assert sum(c for p, c in n_draws.items() if p < 4) == 4
        assert sum(c for p, c in n_draws.items() if p >= 4) == 6
        assert y.min() == 0 and y.max() == 1
        drawn_abnormal |= {p for p in n_draws if p < 4}
    assert drawn_abnormal == {0, 1, 2, 3}


def test_bootstrap_duplicating_every_image_within_patients_keeps_the_interval() -> None:
    # Resampling patients draws the same patients either way and AUROC ignores uniform
    # duplication, so the interval is unchanged; an image-level bootstrap would change it.
    labels, scores, groups = _patients(3, 80)
    ci = bootstrap_ci(labels, scores, groups, roc_auc, n_resamples=200, seed=2)
    doubled = bootstrap_ci(
        np.r_[labels, labels],
        np.r_[scores, scores],
        np.r_[groups, groups],
        roc_auc,
        n_resamples=200,
        seed=2,
    )
    assert doubled == pytest.approx(ci, abs=1e-12)


def test_bootstrap_accepts_string_patient_ids() -> None:
    labels, scores, groups = _patients(4, 40)
    names = np.array([f"p{g:05d}" for g in groups])
    assert bootstrap_ci(labels, scores, names, roc_auc, n_resamples=100) == bootstrap_ci(
        labels, scores, groups, roc_auc, n_resamples=100
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_resamples": 0}, "n_resamples"),
        ({"confidence": 1.0}, "confidence"),
        ({"groups": np.arange(3)}, "one patient per image"),
    ],
)
def test_bootstrap_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"groups": np.arange(4)} | kwargs
    groups = args.pop("groups")
    with pytest.raises(ValueError, match=match):
        bootstrap_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], groups, roc_auc, **args)


def test_bootstrap_rejects_single_class() -> None:
    with pytest.raises(ValueError, match="only normal"):
        bootstrap_ci([0, 0, 0], [0.1, 0.2, 0.3], [0, 1, 2], roc_auc)


def test_bootstrap_rejects_when_no_patient_is_all_normal() -> None:
    # Both patients have an abnormal image; resampling patient 0 alone would lack normals.
    with pytest.raises(ValueError, match="every patient has one"):
        bootstrap_ci([1, 0, 1], [0.9, 0.1, 0.8], [0, 1, 1], roc_auc)


# --- paired_bootstrap ------------------------------------------------------------------------


def test_paired_bootstrap_identical_models_give_exactly_zero() -> None:
    labels, scores, groups = _patients(1, 60)
    result = paired_bootstrap(labels, scores, scores, groups, n_resamples=200, seed=3)
    assert result["diff"] == 0.0
    assert result["ci_low"] == result["ci_high"] == 0.0
    assert result["p_value"] == 1.0
    assert result["auroc_a"] == result["auroc_b"] == roc_auc(labels, scores)


def test_paired_bootstrap_separating_model_beats_noise() -> None:
    labels, _, groups = _patients(2, 80)
    rng = np.random.default_rng(0)
    perfect = labels + rng.random(labels.size) * 0.5  # every abnormal above every normal
    noise = rng.random(labels.size)
    result = paired_bootstrap(labels, perfect, noise, groups, n_resamples=500, seed=0)
    assert result["auroc_a"] == 1.0
    assert result["diff"] == pytest.approx(1.0 - roc_auc(labels, noise))
    assert 0.0 < result["ci_low"] <= result["diff"] <= result["ci_high"]
    assert result["p_value"] == pytest.approx(2 / 501)  # no resample at or below 0
    swapped = paired_bootstrap(labels, noise, perfect, groups, n_resamples=500, seed=0)
    assert swapped["diff"] == -result["diff"]
    assert (swapped["ci_low"], swapped["ci_high"]) == pytest.approx(
        (-result["ci_high"], -result["ci_low"])
    )


def test_paired_bootstrap_is_seeded_and_resamples_patients() -> None:
    labels, scores, groups = _patients(4, 100)
    other = scores + np.random.default_rng(9).normal(size=scores.size)
    first = paired_bootstrap(labels, scores, other, groups, n_resamples=200, seed=1)
    assert first == paired_bootstrap(labels, scores, other, groups, n_resamples=200, seed=1)
    assert first != paired_bootstrap(labels, scores, other, groups, n_resamples=200, seed=2)
    # One patient per image resamples differently from the real patients.
    by_image = np.arange(labels.size)
    assert first != paired_bootstrap(labels, scores, other, by_image, n_resamples=200, seed=1)


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.2, 0.1], [0, 1], n_resamples=0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.2], [0, 1])


# --- patient-weighted AUROC ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_weighted_roc_auc_matches_sklearn_sample_weights(seed: int) -> None:
    labels, scores = _random_case(seed)
    weights = np.random.default_rng(seed).random(labels.size) + 0.1
    expected = roc_auc_score(labels, scores, sample_weight=weights)
    assert weighted_roc_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)
    assert weighted_roc_auc(labels, scores, np.ones(labels.size)) == pytest.approx(
        roc_auc(labels, scores), abs=1e-12
    )


def test_patient_weighted_auroc_counts_each_patient_once() -> None:
    # Patient 0 (abnormal, score 0.2) has 5 identical images; the others one each.
    labels = np.array([1] * 5 + [1, 0, 0])
    scores = np.array([0.2] * 5 + [0.9, 0.5, 0.1])
    groups = np.array([0] * 5 + [1, 2, 3])
    unique = roc_auc([1, 1, 0, 0], [0.2, 0.9, 0.5, 0.1])  # one image per patient: 0.75
    assert patient_weighted_auroc(labels, scores, groups) == pytest.approx(unique)
    assert roc_auc(labels, scores) != pytest.approx(unique)  # the plain AUROC is pulled down
    with pytest.raises(ValueError, match="one patient per image"):
        patient_weighted_auroc(labels, scores, groups[:3])


def test_weighted_roc_auc_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="positive finite"):
        weighted_roc_auc([0, 1], [0.1, 0.2], [1.0, 0.0])


# --- localization_metrics --------------------------------------------------------------------


def _map_with_spot(row: int, col: int, shape=(32, 32), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amap = rng.random(shape) * 0.1
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return amap + np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / 8.0)


def test_localization_hot_spot_inside_box() -> None:
    maps = [_map_with_spot(10, 20, seed=0), _map_with_spot(25, 5, seed=1)]
    # (x, y, w, h) with x along columns; the second image has two overlapping boxes
    boxes = [[(16, 6, 8, 8)], [(1, 21, 8, 8), (4, 24, 3, 3)]]
    result = localization_metrics(maps, boxes)
    assert json.loads(json.dumps(result)) == result
    assert result["pointing_game"] == 1.0
    assert result["pixel_auroc"] > 0.95
    assert result["n_images"] == 2
    assert result["n_boxes"] == 3
    assert result["n_boxes_unusable"] == 0


def test_localization_hot_spot_outside_box() -> None:
    maps = np.stack([_map_with_spot(10, 20, seed=0), _map_with_spot(25, 5, seed=1)])
    boxes = [[(0, 20, 8, 8)], [(20, 0, 8, 8)]]  # boxes far from the spots
    result = localization_metrics(maps, boxes)
    assert result["pointing_game"] == 0.0
    assert result["pixel_auroc"] < 0.5


def test_localization_box_pixels_and_clipping() -> None:
    amap = np.zeros((6, 8))
    amap[2, 1:4] = 1.0  # exactly the pixels overlapped by x 1.5..3.5, y 2..3
    assert localization_metrics([amap], [[(1.5, 2.0, 2.0, 1.0)]])["pixel_auroc"] == 1.0
    amap[0, 0] = 1.0  # a hot pixel outside the box
    assert localization_metrics([amap], [[(1.5, 2.0, 2.0, 1.0)]])["pixel_auroc"] < 1.0

    corner = np.zeros((6, 8))
    corner[4:, 6:] = 1.0
    corner[5, 7] = 2.0
    # partly outside (clipped to rows 4-5, cols 6-7); fully outside; zero width
    boxes = [[(6, 4, 10, 10), (8, 0, 3, 3), (2, 2, 0, 3)]]
    result = localization_metrics([corner], boxes)
    assert result["pixel_auroc"] == 1.0
    assert result["pointing_game"] == 1.0
    assert result["n_boxes"] == 1
    assert result["n_boxes_unusable"] == 2


def test_localization_skips_images_without_usable_boxes() -> None:
    maps = [_map_with_spot(10, 20), _map_with_spot(10, 20)]
    result = localization_metrics(maps, [[(16, 6, 8, 8)], [(-20, -20, 5, 5)]])
    assert result["n_images"] == 1
    assert result["n_boxes_unusable"] == 1
    assert result["pointing_game"] == 1.0


@pytest.mark.parametrize(
    ("maps", "boxes", "match"),
    [
        ([np.zeros((4, 4))], [], "1 maps but 0 box lists"),
        ([np.zeros(4)], [[(0, 0, 1, 1)]], "2-D"),
        ([np.full((4, 4), np.nan)], [[(0, 0, 1, 1)]], "non-finite"),
        ([np.zeros((4, 4))], [[(9, 9, 1, 1)]], "no image has a usable box"),
        ([np.zeros((4, 4))], [[(-1, -1, 9, 9)]], "cover every pixel"),
    ],
)
def test_localization_errors(maps, boxes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        localization_metrics(maps, boxes)
