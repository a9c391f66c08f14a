"""The summary a person reads first: every held-out figure, the localization where there is one."""

from pathlib import Path

import pytest

from imgae_dx_jax.api import print_summary


def metrics(pixel_auroc: float | None) -> dict:
    counts = {"normal": 10, "abnormal": 0}
    return {
        "split_counts": {"train": counts, "val": counts, "test": counts},
        "model": "ae",
        "n_normal": 104,
        "n_abnormal": 133,
        "auroc": 0.633,
        "auroc_ci": [0.527, 0.736],
        "auroc_patient_weighted": 0.611,
        "auprc": 0.63,
        "auprc_ci": [0.397, 0.781],
        "fpr_at_95_tpr": 0.9,
        "score": "top1",
        "score_setting": "auto",
        "score_val_auroc": {"top1": 0.555},
        "threshold": 1.5,
        "threshold_source": "validation split, 95% specificity on normals",
        "val_specificity": 0.95,
        "sensitivity": 0.07,
        "specificity": 0.92,
        "f1": 0.12,
        "localization": {
            "pixel_auroc": pixel_auroc,
            "pointing_game": None if pixel_auroc is None else 0.25,
            "n_images": 0 if pixel_auroc is None else 4,
            "n_boxes": 0 if pixel_auroc is None else 5,
        },
        "reference": {
            "statistic": "-mean",
            "auroc": 0.595,
            "auroc_ci": [0.48, 0.708],
            "difference": {"diff": 0.038, "ci_low": -0.067, "ci_high": 0.14, "p_value": 0.402},
        },
    }


def test_one_boxed_image_is_counted_in_the_singular(capsys):
    figures = metrics(0.45)
    figures["localization"].update(n_images=1, n_boxes=1)
    print_summary(figures, Path("runs/x"))
    assert "localization on 1 boxed image (1 box): pixel AUROC 0.450" in capsys.readouterr().out


@pytest.mark.parametrize("boxed", [True, False])
def test_summary_shows_the_localization_only_where_test_images_have_boxes(boxed, capsys):
    print_summary(metrics(0.71 if boxed else None), Path("runs/x"))
    out = capsys.readouterr().out
    assert "AUROC 0.633 (95% CI 0.527-0.736" in out
    assert "model - reference +0.038 (-0.067 to +0.140, p = 0.402)" in out
    line = "localization on 4 boxed images (5 boxes): pixel AUROC 0.710, pointing game 0.250"
    assert (line in out) is boxed and ("localization" in out) is boxed
