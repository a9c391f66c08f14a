"""Tests for imgae_dx_jax.metrics.threshold: threshold rules and the image-score choice."""

from __future__ import annotations

import numpy as np
import pytest

from imgae_dx_jax.metrics.image import rates_at, roc_auc
from imgae_dx_jax.metrics.threshold import (
    RULES,
    choose_score,
    describe_rule,
    select_threshold,
    specificity_threshold,
    youden_threshold,
)
from imgae_dx_jax.schema import THRESHOLD_RULES


def test_specificity_threshold_is_the_quantile_of_the_normal_scores() -> None:
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.arange(100.0))
    labels = np.r_[np.zeros(100, int), np.ones(400, int)]
    scores = np.r_[normal, rng.normal(50.0, 30.0, 400)]
    threshold = select_threshold(labels, scores, "specificity", 0.95)
    assert threshold == 95.0 == np.quantile(normal, 0.95, method="higher")
    assert rates_at(labels, scores, threshold)["specificity"] == 0.95
    # The abnormal images, however many, do not move it.
    assert specificity_threshold(labels[:100], scores[:100], 0.95) == threshold
    assert specificity_threshold(labels, scores, 0.8) == 80.0


@pytest.mark.parametrize("n", [1, 7, 24, 101])
def test_specificity_threshold_reaches_the_target_with_the_lowest_score(n: int) -> None:
    normal = np.round(np.random.default_rng(n).normal(size=n), 1)  # with ties
    labels = np.zeros(n, int)
    for target in (0.5, 0.9, 0.95, 0.99):
        threshold = specificity_threshold(labels, normal, target)
        assert np.mean(normal < threshold) >= target
        lower = normal[normal < threshold]
        if lower.size:  # the next observed score down misses the target
            assert np.mean(normal < lower.max()) < target


def test_specificity_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        specificity_threshold([0, 1], [0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="needs normal"):
        specificity_threshold([1, 1], [0.1, 0.2], 0.9)


def test_specificity_rule_stays_meaningful_where_f1_calls_everything_abnormal() -> None:
    # 10 normals, 200 abnormals barely above them: max F1 is to call everything abnormal.
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(10, int), np.ones(200, int)]
    scores = np.r_[rng.normal(0.0, 1.0, 10), rng.normal(0.3, 1.0, 200)]
    f1_rates = rates_at(labels, scores, select_threshold(labels, scores, "f1"))
    spec_rates = rates_at(labels, scores, select_threshold(labels, scores, "specificity", 0.9))
    assert f1_rates["specificity"] <= 0.1
    assert spec_rates["specificity"] >= 0.8


def test_youden_threshold_hand_case() -> None:
    labels = [1, 0, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.3, 0.1]
    # thresholds 0.9: J = 1/3; 0.8: 1/3 - 1/3; 0.7: 2/3 - 1/3; 0.6: 1 - 1/3 = 2/3 (best).
    assert youden_threshold(labels, scores) == 0.6
    assert select_threshold(labels, scores, "youden") == 0.6
    # Ties go to the highest threshold: J = 1/2 at 0.9 and at 0.4.
    assert youden_threshold([1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]) == 0.9


def test_select_threshold_rejects_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown threshold rule"):
        select_threshold([0, 1], [0.1, 0.2], "accuracy")


def test_describe_rule() -> None:
    assert describe_rule("specificity", 0.95) == "95% specificity on normals"
    assert describe_rule("specificity", 0.975) == "97.5% specificity on normals"
    assert "Youden" in describe_rule("youden", 0.95)
    assert describe_rule("f1", 0.95) == "maximum F1"


def test_the_config_accepts_exactly_the_rules_there_are() -> None:
    assert tuple(RULES) == THRESHOLD_RULES


def test_choose_score_picks_the_best_validation_auroc_ties_to_the_simplest() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    weak = np.array([0.1, 0.5, 0.3, 0.4, 0.2, 0.6])
    strong = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    name, aurocs = choose_score(labels, {"mean": weak, "top25": strong, "top10": strong})
    assert name == "top25"  # top10 ties with it but comes later
    assert aurocs == {"mean": roc_auc(labels, weak), "top25": 1.0, "top10": 1.0}
    assert choose_score(labels, {"mean": strong, "top25": strong})[0] == "mean"
    assert choose_score(labels, {"mean": weak, "top25": strong}, "mean")[0] == "mean"
    with pytest.raises(ValueError, match="unknown score"):
        choose_score(labels, {"mean": weak}, "top1")
