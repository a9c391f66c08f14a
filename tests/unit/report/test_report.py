"""Evaluation helpers and the report, on synthetic scores and maps (no training)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from imgae_dx_jax.config import load_config
from imgae_dx_jax.data.nih import FINDINGS, Catalog, Record
from imgae_dx_jax.evaluation import REFERENCE, compare, paired, select_examples
from imgae_dx_jax.metrics import average_precision, bootstrap_ci, image_metrics, roc_auc
from imgae_dx_jax.metrics.breakdown import age_band, per_finding, subgroups
from imgae_dx_jax.metrics.curves import (
    bootstrap_band,
    pr_points,
    precision_at,
    roc_at,
    roc_points,
)
from imgae_dx_jax.metrics.localization import localization
from imgae_dx_jax.report.documents import _sections, write_html, write_markdown, write_report
from imgae_dx_jax.report.overlay import overlay_rgb
from imgae_dx_jax.results import Band, Comparison, ModelResult, SplitScores

SIZE = 32


def record(i: int, label: int, findings: tuple[str, ...] = ()) -> Record:
    return Record(
        key=f"{i:08d}_000.png",
        member=f"images_001/images/{i:08d}_000.png",
        stage="images_001",
        label=label,
        findings=findings if label else (),
        patient=str(i // 2),  # two images per patient
        age=[15, 30, 50, 70, 85, -1][i % 6],
        sex="MF"[i % 2],
        view=("PA", "AP")[i % 3 == 0],
    )


def synthetic_split(seed: int, n: int = 80, with_maps: bool = False) -> SplitScores:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 5 >= 2).astype(int)  # patients 0-1 per block of 5 are normal
    records = tuple(
        record(i, int(y), (FINDINGS[i % len(FINDINGS)], FINDINGS[(i + 3) % len(FINDINGS)]))
        for i, y in enumerate(labels)
    )
    scores = rng.normal(size=n) + 0.8 * labels
    maps = rng.random((n, SIZE, SIZE)).astype(np.float32) if with_maps else None
    return SplitScores(
        records,
        scores,
        scores + 1.0,
        {},
        (rng.random((n, SIZE, SIZE)) * 255).astype(np.uint8) if with_maps else None,
        rng.random((n, SIZE, SIZE)).astype(np.float32) if with_maps else None,
        maps,
    )


def subset(split: SplitScores, index: list[int]) -> SplitScores:
    assert split.maps is not None and split.images is not None
    assert split.reconstructions is not None
    return SplitScores(
        tuple(split.records[i] for i in index),
        split.scores[index],
        split.peaks[index],
        {},
        split.images[index],
        split.reconstructions[index],
        split.maps[index],
    )


def test_localization_on_a_known_box():
    hot = np.zeros((SIZE, SIZE), dtype=np.float32)
    hot[16:24, 8:16] = 1.0  # rows 16-23, columns 8-15
    cold = np.zeros((SIZE, SIZE), dtype=np.float32)
    cold[0, 0] = 5.0  # maximum outside the box
    # Boxes in 1024-pixel coordinates: x=256, y=512, w=256, h=256 -> 8, 16, 8, 8 at 32 px.
    box = ("Mass", 256.0, 512.0, 256.0, 256.0)
    outside = ("Nodule", 2000.0, 2000.0, 50.0, 50.0)
    records = (record(1, 1, ("Mass",)), record(3, 1, ("Mass",)))
    catalog = Catalog(
        records, ("images_001",), None, {records[0].key: (box, outside), records[1].key: (box,)}
    )
    split = SplitScores(
        records, np.zeros(2), np.zeros(2), {}, maps=np.stack([hot, np.where(hot > 0, 0.5, cold)])
    )
    result = localization(split, catalog, SIZE)
    assert result["n_images_with_boxes"] == 2
    assert (result["n_images"], result["n_boxes"], result["n_boxes_unusable"]) == (2, 2, 1)
    assert result["pointing_game"] == pytest.approx(0.5)
    # Inside: 2 x 64 pixels (1.0 and 0.5); outside: zeros except one 5.0.
    inside = np.r_[np.ones(64), np.full(64, 0.5)]
    outside_values = np.r_[np.zeros(2 * SIZE * SIZE - 128 - 1), 5.0]
    expected = roc_auc_score(
        np.r_[np.ones(128), np.zeros(outside_values.size)], np.r_[inside, outside_values]
    )
    assert result["pixel_auroc"] == pytest.approx(expected)


def test_localization_without_usable_boxes_reports_counts():
    records = (record(1, 1, ("Mass",)),)
    catalog = Catalog(
        records, ("images_001",), None, {records[0].key: (("Mass", 5000.0, 0.0, 10.0, 10.0),)}
    )
    split = SplitScores(
        records, np.zeros(1), np.zeros(1), {}, maps=np.zeros((1, SIZE, SIZE), np.float32)
    )
    result = localization(split, catalog, SIZE)
    assert result["pixel_auroc"] is None and result["n_boxes_unusable"] == 1
    empty = SplitScores((), np.zeros(0), np.zeros(0), {})
    assert localization(empty, catalog, SIZE)["n_images_with_boxes"] == 0


def test_curves_match_sklearn_and_the_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # ties
    fpr, tpr = roc_points(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))
    recall, precision = pr_points(labels, scores)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(
        average_precision_score(labels, scores)
    )
    grid = np.linspace(0, 1, 11)
    assert np.all(np.diff(roc_at(labels, scores, grid)) >= 0)
    assert np.all(np.diff(precision_at(labels, scores, grid)) <= 0)


def test_bootstrap_band_is_reproducible_and_brackets_the_estimate():
    split = synthetic_split(1)
    ci, low, high = bootstrap_band(split, roc_auc, roc_at, 1000, seed=7)
    again = bootstrap_band(split, roc_auc, roc_at, 1000, seed=7)
    assert ci == again[0] and np.array_equal(low, again[1]) and np.array_equal(high, again[2])
    assert ci[0] < roc_auc(split.labels, split.scores) < ci[1]
    assert np.all(low <= high)
    assert bootstrap_band(split, roc_auc, roc_at, 1000, seed=8)[0] != ci


def test_per_finding_subgroups_and_age_bands():
    split = synthetic_split(2)
    rows = per_finding(split, 200, 4)
    assert [r["finding"] for r in rows] == list(FINDINGS)
    normal = int((split.labels == 0).sum())
    for row in rows:
        has = np.array([row["finding"] in r.findings for r in split.records])
        assert row["n_abnormal"] == has.sum() and row["n_normal"] == normal
        keep = has | (split.labels == 0)
        assert row["auroc"] == pytest.approx(roc_auc_score(split.labels[keep], split.scores[keep]))
        expected_ci = bootstrap_ci(
            split.labels[keep],
            split.scores[keep],
            split.patients[keep],
            roc_auc,
            n_resamples=200,
            seed=4,
        )
        assert row["auroc_ci"] == list(expected_ci)
        assert row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    groups = subgroups(split, 200, 4)
    assert all(r["auroc_ci"] is None for r in groups if r["auroc"] is None)
    assert all(r["auroc_ci"][0] < r["auroc_ci"][1] for r in groups if r["auroc"] is not None)
    assert {r["group"] for r in groups} == {"view", "sex", "age"}
    assert sum(r["n_normal"] + r["n_abnormal"] for r in groups if r["group"] == "sex") == 80
    assert [age_band(a) for a in (0, 17, 18, 59, 60, 95, -1)] == [
        "0-17",
        "0-17",
        "18-39",
        "40-59",
        "60-79",
        "80+",
        "unknown",
    ]


def test_select_examples_picks_best_and_worst():
    split = synthetic_split(3)
    boxed = {split.records[5].key}
    chosen = dict(select_examples(split, boxed))
    normal = np.flatnonzero(split.labels == 0)
    abnormal = np.flatnonzero(split.labels == 1)
    assert chosen["best normal"] == normal[np.argmin(split.scores[normal])]
    assert chosen["worst normal"] == normal[np.argmax(split.scores[normal])]
    assert chosen["best abnormal"] == abnormal[np.argmax(split.scores[abnormal])]
    assert chosen["worst abnormal"] == abnormal[np.argmin(split.scores[abnormal])]
    assert chosen["with box"] == 5


def test_overlay_keeps_the_image_where_the_map_is_zero():
    image = np.full((4, 6), 100, dtype=np.uint8)
    amap = np.zeros((4, 6))
    amap[0, 0] = 10.0
    out = overlay_rgb(image, amap, scale=1.0)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert np.all(out[1:] == 100) and not np.all(out[0, 0] == 100)


def fake_result(name: str, seed: int, run_dir: Path) -> ModelResult:
    config = load_config()
    test = synthetic_split(seed, with_maps=True)
    val = synthetic_split(seed + 100)
    threshold = float(np.median(val.scores))
    metrics = image_metrics(test.labels, test.scores, test.patients, threshold)
    auroc_ci, roc_low, roc_high = bootstrap_band(test, roc_auc, roc_at, 1000, 0)
    auprc_ci, pr_low, pr_high = bootstrap_band(test, average_precision, precision_at, 1000, 0)
    key = test.records[4].key
    catalog = Catalog(test.records, ("images_001",), None, {key: (("Mass", 0, 0, 512, 512),)})
    chosen = select_examples(test, {key})
    metrics.update(
        model="unet",
        auroc_ci=list(auroc_ci),
        auprc_ci=list(auprc_ci),
        score="top5",
        score_setting="auto",
        score_val_auroc={"mean": 0.6, "top5": 0.7},
        threshold_source="validation split, 95% specificity on normals",
        val_specificity=0.95,
        per_finding=per_finding(test, 200, 0),
        subgroups=subgroups(test, 200, 0),
        localization=localization(subset(test, [4]), catalog, SIZE),
        data="synthetic",
        skipped={"val": {}, "test": {"corrupt": 1}},
    )
    reference = synthetic_split(seed + 200)  # a weaker score of the same test images
    reference = SplitScores(test.records, reference.scores, reference.peaks, {})
    metrics["reference"] = {
        "statistic": "-mean",
        "val_auroc": 0.58,
        "auroc": roc_auc(test.labels, reference.scores),
        "auroc_ci": list(bootstrap_ci(test.labels, reference.scores, test.patients, roc_auc)),
        "difference": paired(name, test, REFERENCE, reference, 200, 0),
    }
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 2, "loss": 0.5, "loss_enc": 0.1, "images_per_s": 10.0}\n'
        '{"step": 4, "loss": 0.4, "loss_enc": 0.05, "images_per_s": 12.0}\n'
        '{"step": 4, "stage": "images_001", "epoch": 1, "val_loss": 0.45}\n'
    )
    return ModelResult(
        name=name,
        run_dir=run_dir,
        config=config,
        val=val,
        test=test,
        metrics=metrics,
        roc=Band(*roc_points(test.labels, test.scores), np.linspace(0, 1, 101), roc_low, roc_high),
        pr=Band(*pr_points(test.labels, test.scores), np.linspace(0, 1, 101), pr_low, pr_high),
        examples=subset(test, [i for _, i in chosen]),
        example_kinds=tuple(k for k, _ in chosen),
        boxes={key: [("Mass", 0.0, 0.0, 16.0, 16.0)]},
        map_scale=1.0,
        split_counts={
            "train": {"normal": 10, "abnormal": 0},
            "val": {"normal": 5, "abnormal": 5},
            "test": {"normal": 32, "abnormal": 48},
        },
    )


def test_report_files_exist_and_the_html_embeds_every_figure(tmp_path):
    models = [fake_result("unet", 0, tmp_path / "unet"), fake_result("ra", 1, tmp_path / "ra")]
    comparison = Comparison(
        models,
        compare(models, 200, 0),
        "synthetic data",
        {"n_resamples": 1000, "seed": 0},
        tmp_path / "report",
    )
    files = write_report(comparison)
    figures = {k: p for k, p in files.items() if p.suffix == ".png"}
    assert set(figures) == {
        "roc",
        "pr",
        "histograms",
        "reconstructions_unet",
        "reconstructions_ra",
        "training_unet",
        "training_ra",
    }
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    html = files["report_html"].read_text()
    markdown = files["report_md"].read_text()
    for name, path in figures.items():
        assert f'alt="{path.name}"' in html, name
        assert f"(figures/{path.name})" in markdown, name
    assert html.count("data:image/png;base64,") == len(figures)
    assert not re.search(r'src="(?!data:)', html)  # self-contained: nothing external
    for text in (
        "AUROC (95% CI)",
        "paired patient bootstrap",
        "95% specificity on normals",
        "top5",
        "patient-weighted",
        "Per-finding",
        "model-free reference",
        "-mean (0.580)",
        "Subgroup",
        "Localization",
        "Data and splits",
        "synthetic data",
        "Pleural_Thickening",
        "noise_std",
    ):
        assert text in html and text in markdown, text
    assert comparison.paired[0]["n_images"] == 80


def test_report_says_how_the_data_was_split(tmp_path):
    model = fake_result("ae", 0, tmp_path / "ae")
    comparison = Comparison([model], [], "a tree", {"n_resamples": 1000, "seed": 0}, tmp_path)

    def split_text() -> str:
        return next(text for title, text, _ in _sections(comparison) if title == "Data and splits")

    model.metrics["official_split"] = False
    assert "seeded hash of the patient id (NIH's official test list" in split_text()
    model.config = load_config(overrides=["data.source=imagefolder", "data.path=tree"])
    assert "seeded hash of the patient id (NIH's official test list" in split_text()
    model.metrics["official_split"] = True  # the tree's own train/ and test/ folders
    assert "image folder's own train/, val/ and test/ folders are the splits" in split_text()


def test_no_patient_bootstrap_interval_from_a_single_patient():
    def image(i: int, patient: str, findings: tuple[str, ...] = (), view: str = "PA") -> Record:
        return replace(record(i, int(bool(findings)), findings), patient=patient, view=view)

    normals = [image(i, f"n{i // 2}") for i in range(20)]  # 10 patients, 2 images each
    edema = [image(20 + i, "e", ("Edema",)) for i in range(12)]  # one patient's 12 images
    mass = [image(32 + i, f"m{i}", ("Mass",), "AP") for i in range(3)]  # three patients
    ap = [image(35, "a", view="AP"), image(36, "a", view="AP")]  # the one normal AP patient
    records = (*normals, *edema, *mass, *ap)
    scores = np.random.default_rng(0).normal(size=len(records)) + [r.label for r in records]
    split = SplitScores(records, scores, scores, {})
    rows = {r["finding"]: r for r in per_finding(split, 200, 0)}
    assert rows["Edema"]["n_abnormal"] == 12 and rows["Edema"]["auroc"] is not None
    assert rows["Edema"]["auroc_ci"] is None  # every resample would draw patient "e" again
    assert (rows["Edema"]["patients_abnormal"], rows["Edema"]["patients_normal"]) == (1, 11)
    assert (rows["Mass"]["patients_abnormal"], rows["Mass"]["patients_normal"]) == (3, 11)
    assert rows["Mass"]["auroc_ci"] is not None
    views = {r["value"]: r for r in subgroups(split, 200, 0) if r["group"] == "view"}
    assert views["AP"]["auroc"] is not None and views["AP"]["auroc_ci"] is None
    assert views["PA"]["auroc_ci"] is None  # its abnormal images: patient "e" alone


def test_the_report_shows_the_run_configurations_without_url_secrets(tmp_path):
    url = "https://me:pa55@storage.example:8443/archive.zip?X-Goog-Signature=deadbeef"
    result = fake_result("unet", 0, tmp_path / "unet")
    result = replace(result, config=load_config(overrides=["data.source=url", f"data.path={url}"]))
    comparison = Comparison(
        [result], [], "synthetic data", {"n_resamples": 1000, "seed": 0}, tmp_path / "report"
    )
    (tmp_path / "report").mkdir()
    write_markdown(comparison, {}, tmp_path / "report" / "report.md")
    write_html(comparison, {}, tmp_path / "report" / "report.html")
    for name in ("report.md", "report.html"):
        text = (tmp_path / "report" / name).read_text()
        assert "https://storage.example:8443/archive.zip" in text, name
        assert "deadbeef" not in text and "pa55" not in text, name
