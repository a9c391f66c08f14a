"""The result tables of an evaluation, as raw rows and as Markdown or HTML."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from typing import Any

from imgae_dx_jax.results import Comparison

Table = tuple[list[str], list[list[Any]]]
"""Column names and rows of raw values (numbers, strings, None)."""
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def file_stem(name: str) -> str:
    """A run's display name made safe for file names."""
    return _NOT_NAME.sub("_", name).strip("_") or "run"


def ci_text(value: float, ci: Sequence[float]) -> str:
    """``value (low–high)`` with three decimals."""
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


def ci_cell(value: float | None, ci: Sequence[float] | None) -> str | None:
    """:func:`ci_text`, the value alone without an interval, None without a value."""
    if value is None:
        return None
    return ci_text(value, ci) if ci is not None else f"{value:.3f}"


def headline_rows(comparison: Comparison) -> Table:
    """Per model: AUROC and AUPRC with 95% CIs, FPR@95%TPR, F1 and rates at the val threshold."""
    columns = [
        "model",
        "family",
        "score (val)",
        "AUROC (95% CI)",
        "AUROC patient-weighted",
        "AUPRC (95% CI)",
        "FPR@95%TPR",
        "best F1 (oracle)",
        "threshold rule (val)",
        "threshold",
        "val specificity",
        "sensitivity",
        "specificity",
        "F1",
        "normal",
        "abnormal",
    ]
    rows = []
    for model in comparison.models:
        m = model.metrics
        rows.append(
            [
                model.name,
                m["model"],
                m["score"],
                ci_text(m["auroc"], m["auroc_ci"]),
                m["auroc_patient_weighted"],
                ci_text(m["auprc"], m["auprc_ci"]),
                m["fpr_at_95_tpr"],
                m["best_f1"],
                m["threshold_source"].removeprefix("validation split, "),
                m["threshold"],
                m["val_specificity"],
                m["sensitivity"],
                m["specificity"],
                m["f1"],
                m["n_normal"],
                m["n_abnormal"],
            ]
        )
    return columns, rows


def paired_rows(comparison: Comparison) -> Table:
    """Paired patient bootstraps: AUROC difference A - B with 95% CI and p."""
    columns = ["A", "B", "images", "AUROC A", "AUROC B", "A − B (95% CI)", "p"]
    rows = [
        [
            d["a"],
            d["b"],
            d["n_images"],
            d["auroc_a"],
            d["auroc_b"],
            f"{d['diff']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})",
            d["p_value"],
        ]
        for d in comparison.paired
    ]
    return columns, rows


def reference_rows(comparison: Comparison) -> Table:
    """Per model: its test AUROC against the model-free reference's, paired on patients."""
    columns = [
        "model",
        "AUROC",
        "reference statistic (val AUROC)",
        "reference AUROC (95% CI)",
        "model − reference (95% CI)",
        "p",
    ]
    rows = []
    for model in comparison.models:
        ref = model.metrics["reference"]
        d = ref["difference"]
        rows.append(
            [
                model.name,
                model.metrics["auroc"],
                f"{ref['statistic']} ({ref['val_auroc']:.3f})",
                ci_text(ref["auroc"], ref["auroc_ci"]),
                f"{d['diff']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})",
                d["p_value"],
            ]
        )
    return columns, rows


def score_rows(comparison: Comparison) -> Table:
    """Validation AUROC of every candidate image score, one column per model."""
    models = comparison.models
    columns = ["score", *(m.name for m in models)]
    names = list(models[0].metrics["score_val_auroc"])
    rows = [[name, *(m.metrics["score_val_auroc"].get(name) for m in models)] for name in names]
    return columns, rows


def _auroc_cell(row: dict[str, Any]) -> str | None:
    return ci_cell(row["auroc"], row["auroc_ci"])


def finding_rows(comparison: Comparison) -> Table:
    """AUROC of each NIH finding vs. the normals, one column per model."""
    models = comparison.models
    columns = ["finding", "abnormal (patients)", "normal (patients)", *(m.name for m in models)]
    rows = []
    for i, row in enumerate(models[0].metrics["per_finding"]):
        rows.append(
            [
                row["finding"],
                f"{row['n_abnormal']} ({row['patients_abnormal']})",
                f"{row['n_normal']} ({row['patients_normal']})",
                *(_auroc_cell(m.metrics["per_finding"][i]) for m in models),
            ]
        )
    return columns, rows


def subgroup_rows(comparison: Comparison) -> Table:
    """AUROC per view position, sex and age band, one column per model."""
    models = comparison.models
    columns = [
        "group",
        "value",
        "normal (patients)",
        "abnormal (patients)",
        *(m.name for m in models),
    ]
    rows = []
    for i, row in enumerate(models[0].metrics["subgroups"]):
        rows.append(
            [
                row["group"],
                row["value"],
                f"{row['n_normal']} ({row['patients_normal']})",
                f"{row['n_abnormal']} ({row['patients_abnormal']})",
                *(_auroc_cell(m.metrics["subgroups"][i]) for m in models),
            ]
        )
    return columns, rows


def localization_rows(comparison: Comparison) -> Table:
    """Pixel AUROC inside vs. outside the NIH boxes, pointing game and box counts."""
    columns = [
        "model",
        "test images with boxes",
        "images used",
        "usable boxes",
        "unusable boxes",
        "pixel AUROC",
        "pointing game",
    ]
    rows = []
    for model in comparison.models:
        loc = model.metrics["localization"]
        rows.append(
            [
                model.name,
                loc["n_images_with_boxes"],
                loc["n_images"],
                loc["n_boxes"],
                loc["n_boxes_unusable"],
                loc["pixel_auroc"],
                loc["pointing_game"],
            ]
        )
    return columns, rows


def split_rows(comparison: Comparison) -> Table:
    """Images per split and class of each run (train holds normal images only)."""
    columns = ["run", "split", "normal", "abnormal", "skipped (unreadable)"]
    rows = []
    for model in comparison.models:
        skipped = model.metrics["skipped"]
        for split, counts in model.split_counts.items():
            rows.append(
                [
                    model.name,
                    split,
                    counts["normal"],
                    counts["abnormal"],
                    sum(skipped.get(split, {}).values()) if split in skipped else "–",
                ]
            )
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return str(value)


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    columns, rows = table
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    """An HTML table (values escaped)."""
    columns, rows = table
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table">{markup}</div>'


TRACKED_TABLES: dict[str, Callable[[Comparison], Table]] = {
    "test/headline": headline_rows,
    "test/per_finding": finding_rows,
    "test/subgroups": subgroup_rows,
    "test/paired_bootstrap": paired_rows,
    "test/reference": reference_rows,
    "val/scores": score_rows,
}
"""The tables logged to the experiment tracker, by their W&B key."""
