"""The Markdown and self-contained HTML report of an evaluation.

:func:`write_report` turns a :class:`~imgae_dx_jax.results.Comparison` into
``figures/*.png``, ``report.md`` (figures linked) and ``report.html`` (figures embedded as
base64 PNG, no external resources): the headline table with bootstrap intervals, each model
against the model-free reference, the validation AUROC of each candidate image score, the
paired patient bootstraps between models,
per-finding, subgroup and localization results, split sizes, the data source
and every run's config.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

from imgae_dx_jax.config import to_dict
from imgae_dx_jax.redact import public_config
from imgae_dx_jax.report.figures import write_figures
from imgae_dx_jax.report.tables import (
    Table,
    finding_rows,
    headline_rows,
    html_table,
    localization_rows,
    markdown_table,
    paired_rows,
    reference_rows,
    score_rows,
    split_rows,
    subgroup_rows,
)
from imgae_dx_jax.results import Comparison
from imgae_dx_jax.schema import NIH_SOURCES

SMALL_N = 10
"""The report warns that per-finding AUROCs from fewer abnormal images than this are unreliable."""


def _split_text(comparison: Comparison) -> str:
    """How the evaluated data was split into patients, in words (the first run's data)."""
    model = comparison.models[0]
    if model.metrics.get("official_split") and model.config.data.source not in NIH_SOURCES:
        return (
            "The image folder's own train/, val/ and test/ folders are the splits (without "
            "val/, validation patients are carved from train/ by a seeded hash of the patient "
            "id; no patient has images in two splits)"
        )
    return (
        "Patients are split by a seeded hash of the patient id (NIH's official test list when "
        "the data has it)"
    )


def _sections(comparison: Comparison) -> list[tuple[str, str, Table]]:
    """(title, explanation, table) of every report section, in order."""
    b = comparison.bootstrap
    sections: list[tuple[str, str, Table]] = [
        (
            "Held-out test results",
            f"Image-level results on the test patients. 95% confidence intervals: "
            f"{b['n_resamples']} bootstrap resamples of patients (seed {b['seed']}), stratified "
            "by whether a patient has an abnormal image. The patient-weighted AUROC counts "
            "each image with weight 1 / (images of its patient). The image score and the "
            "threshold were chosen on the validation split by the rule shown (the specificity it "
            "reached there beside it) and applied unchanged; sensitivity, specificity and F1 are "
            "the test results at that threshold. Best F1 is an oracle tuned on the test labels "
            "(an upper bound, not an operating point).",
            headline_rows(comparison),
        ),
        (
            "Image score (chosen on validation)",
            "Validation AUROC of each candidate image score: mean = mean of the anomaly map; "
            "top<k> = mean of the top k% pixels of the 5x5-median-filtered map. With eval.score "
            "auto the best one is used (ties: the simplest, listed first).",
            score_rows(comparison),
        ),
    ]
    sections.append(
        (
            "Against a model-free reference",
            "A statistic of the raw image (mean, standard deviation, 1st or 99th percentile of "
            "its pixels before intensity normalisation; a leading minus: low values are "
            "abnormal), the one with the best validation AUROC, scored on the same test images: "
            "what differences in exposure or contrast between normal and abnormal images give "
            "without a model. Difference of test AUROC with its 95% interval and p-value from "
            "the paired patient bootstrap.",
            reference_rows(comparison),
        )
    )
    if comparison.paired:
        sections.append(
            (
                "Model comparison (paired patient bootstrap)",
                "Difference of test AUROC between two models scored on the same images, with "
                f"its 95% percentile interval over {b['n_resamples']} resamples of patients "
                "(the same resample for both models) and the two-sided bootstrap p-value.",
                paired_rows(comparison),
            )
        )
    sections += [
        (
            "Per-finding AUROC",
            "Images with each NIH finding (possibly among others) against all normal test "
            "images, with 95% patient-bootstrap intervals (none where the abnormal images, or "
            "the patients without one, are a single patient's: a bootstrap cannot measure how "
            f"patients differ). Values from fewer than {SMALL_N} abnormal images are unreliable.",
            finding_rows(comparison),
        ),
        (
            "Subgroup AUROC",
            "Normal vs. abnormal within each view position, sex and age band, with 95% "
            "patient-bootstrap intervals (– where a subgroup lacks a class; no interval where "
            "its abnormal images, or its patients without one, are a single patient's).",
            subgroup_rows(comparison),
        ),
        (
            "Localization (NIH boxes)",
            "Test images with boxes from BBox_List_2017.csv (1024-pixel coordinates scaled to "
            "the image size). Pixel AUROC: anomaly-map values inside any box vs. outside, pooled "
            "over the images. Pointing game: fraction of images whose map maximum lies in a "
            "box.",
            localization_rows(comparison),
        ),
        (
            "Data and splits",
            f"Data: {comparison.data}. {_split_text(comparison)}; training uses normal images "
            "of the training patients only.",
            split_rows(comparison),
        ),
    ]
    return sections


_FIGURE_CAPTIONS = {
    "roc": "ROC curves with 95% bootstrap bands.",
    "pr": "Precision-recall curves with 95% bootstrap bands.",
    "histograms": "Anomaly scores of normal and abnormal test images; dashed: validation "
    "threshold.",
    "reconstructions": "Input, reconstruction and anomaly map (colour saturates at the 95th "
    "percentile of normal validation map maxima); green: NIH boxes.",
    "training": "Training losses and throughput from metrics.jsonl.",
}


def _caption(name: str) -> str:
    return _FIGURE_CAPTIONS[name.split("_")[0]] + (
        f" Run: {name.split('_', 1)[1]}." if "_" in name else ""
    )


def _configs(comparison: Comparison) -> list[tuple[str, str]]:
    """Each run's configuration as YAML, without secrets (a signed data URL's query string)."""
    return [
        (m.name, yaml.safe_dump(public_config(to_dict(m.config)), sort_keys=False))
        for m in comparison.models
    ]


def write_markdown(comparison: Comparison, figures: dict[str, Path], path: Path) -> None:
    """Write ``report.md`` (figures linked relative to it)."""
    title = " vs ".join(m.name for m in comparison.models)
    parts = [f"# ImgAE-Dx evaluation: {title}", ""]
    for heading, text, table in _sections(comparison):
        parts += [f"## {heading}", "", text, "", markdown_table(table), ""]
    parts += ["## Figures", ""]
    for name, figure in figures.items():
        parts += [
            f"![{name}]({figure.relative_to(path.parent).as_posix()})",
            "",
            f"*{_caption(name)}*",
            "",
        ]
    parts += ["## Run configurations", ""]
    for name, text in _configs(comparison):
        parts += [f"### {name}", "", "```yaml", text.rstrip(), "```", ""]
    path.write_text("\n".join(parts))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;
font-size:.8em}p.note{color:#555;font-size:.9em}
div.table{overflow-x:auto}
"""


def write_html(comparison: Comparison, figures: dict[str, Path], path: Path) -> None:
    """Write the self-contained ``report.html`` (figures embedded as base64 PNG)."""
    title = " vs ".join(m.name for m in comparison.models)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ImgAE-Dx evaluation: {html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>ImgAE-Dx evaluation: {html.escape(title)}</h1>",
    ]
    for heading, text, table in _sections(comparison):
        parts += [
            f"<h2>{html.escape(heading)}</h2>",
            f'<p class="note">{html.escape(text)}</p>',
            html_table(table),
        ]
    parts.append("<h2>Figures</h2>")
    for name, figure in figures.items():
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append(
            f'<figure id="{html.escape(name)}"><img alt="{html.escape(figure.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(_caption(name))}'
            "</figcaption></figure>"
        )
    parts.append("<h2>Run configurations</h2>")
    for name, text in _configs(comparison):
        parts.append(
            f"<details><summary>{html.escape(name)}</summary>"
            f"<pre>{html.escape(text)}</pre></details>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def write_report(comparison: Comparison) -> dict[str, Path]:
    """Write the figures, ``report.md`` and ``report.html`` into ``comparison.out_dir``.

    Returns:
        Output name -> path: every figure, ``report_md`` and ``report_html``.
    """
    out = comparison.out_dir
    figures = write_figures(comparison, out / "figures")
    write_markdown(comparison, figures, out / "report.md")
    write_html(comparison, figures, out / "report.html")
    return figures | {"report_md": out / "report.md", "report_html": out / "report.html"}
