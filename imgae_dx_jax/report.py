"""Figures (matplotlib, PNG) and the Markdown / self-contained HTML report of an evaluation.

:func:`write_report` turns an :class:`~imgae_dx_jax.evaluate.Comparison` into
``figures/*.png``, ``report.md`` (figures linked) and ``report.html`` (figures embedded as
base64 PNG, no external resources): the headline table with bootstrap intervals, the paired
DeLong tests, per-finding, subgroup and localization results, split sizes, the data source
and every run's config.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.patches import Rectangle

from imgae_dx_jax.config import to_dict

if TYPE_CHECKING:
    from imgae_dx_jax.evaluate import Comparison, ModelResult

Table = tuple[list[str], list[list[Any]]]
"""Column names and rows of raw values (numbers, strings, None)."""
OVERLAY_CMAP = "jet"
SMALL_N = 10
"""The report warns that per-finding AUROCs from fewer abnormal images than this are unreliable."""
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def file_stem(name: str) -> str:
    """A run's display name made safe for file names."""
    return _NOT_NAME.sub("_", name).strip("_") or "run"


def overlay_rgb(image: np.ndarray, amap: np.ndarray, scale: float) -> np.ndarray:
    """Blend an anomaly map over a grayscale image: hot = high map value.

    Args:
        image: ``[H, W]`` uint8 grayscale image.
        amap: ``[H, W]`` anomaly map (same size), >= 0.
        scale: map value shown at full colour and opacity (higher values saturate).

    Returns:
        ``[H, W, 3]`` uint8 RGB; the colour's opacity grows with the map value (up to 0.7),
        so normal-looking regions keep the X-ray visible.
    """
    level = np.clip(np.asarray(amap, dtype=np.float64) / max(scale, 1e-12), 0.0, 1.0)
    colour = colormaps[OVERLAY_CMAP](level)[..., :3]
    gray = np.repeat((np.asarray(image, dtype=np.float64) / 255.0)[..., None], 3, axis=-1)
    alpha = 0.7 * level[..., None]
    return np.round((1.0 - alpha) * gray * 255.0 + alpha * colour * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Tables


def _ci(value: float, ci: Sequence[float]) -> str:
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


def headline_rows(comparison: Comparison) -> Table:
    """Per model: AUROC and AUPRC with 95% CIs, FPR@95%TPR, F1 and rates at the val threshold."""
    columns = [
        "model",
        "family",
        "AUROC (95% CI)",
        "AUPRC (95% CI)",
        "FPR@95%TPR",
        "best F1 (oracle)",
        "threshold (val)",
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
                _ci(m["auroc"], m["auroc_ci"]),
                _ci(m["auprc"], m["auprc_ci"]),
                m["fpr_at_95_tpr"],
                m["best_f1"],
                m["threshold"],
                m["sensitivity"],
                m["specificity"],
                m["f1"],
                m["n_normal"],
                m["n_abnormal"],
            ]
        )
    return columns, rows


def delong_rows(comparison: Comparison) -> Table:
    """Paired DeLong tests: AUROC difference A - B with 95% CI, z and p."""
    columns = ["A", "B", "images", "AUROC A", "AUROC B", "A − B (95% CI)", "z", "p"]
    rows = [
        [
            d["a"],
            d["b"],
            d["n_images"],
            d["auroc_a"],
            d["auroc_b"],
            f"{d['diff']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})",
            d["z"],
            d["p_value"],
        ]
        for d in comparison.delong
    ]
    return columns, rows


def finding_rows(comparison: Comparison) -> Table:
    """AUROC of each NIH finding vs. the normals, one column per model."""
    models = comparison.models
    columns = ["finding", "abnormal", "normal", *(m.name for m in models)]
    rows = []
    for i, row in enumerate(models[0].metrics["per_finding"]):
        rows.append(
            [
                row["finding"],
                row["n_abnormal"],
                row["n_normal"],
                *(m.metrics["per_finding"][i]["auroc"] for m in models),
            ]
        )
    return columns, rows


def subgroup_rows(comparison: Comparison) -> Table:
    """AUROC per view position, sex and age band, one column per model."""
    models = comparison.models
    columns = ["group", "value", "normal", "abnormal", *(m.name for m in models)]
    rows = []
    for i, row in enumerate(models[0].metrics["subgroups"]):
        rows.append(
            [
                row["group"],
                row["value"],
                row["n_normal"],
                row["n_abnormal"],
                *(m.metrics["subgroups"][i]["auroc"] for m in models),
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


# ---------------------------------------------------------------------------------------------
# Figures


def _colours(n: int) -> list[Any]:
    return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def plot_roc(comparison: Comparison, path: Path) -> None:
    """ROC curves of every model with their 95% bootstrap bands."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for model, colour in zip(comparison.models, _colours(len(comparison.models)), strict=True):
        m, band = model.metrics, model.roc
        ax.fill_between(band.grid, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(
            band.x,
            band.y,
            color=colour,
            label=f"{model.name}: AUROC {_ci(m['auroc'], m['auroc_ci'])}",
        )
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    ax.set(
        xlabel="false-positive rate (normal flagged)",
        ylabel="true-positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC, held-out test (bands: 95% bootstrap)",
    )
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(comparison: Comparison, path: Path) -> None:
    """Precision-recall curves of every model with their 95% bootstrap bands."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for model, colour in zip(comparison.models, _colours(len(comparison.models)), strict=True):
        m, band = model.metrics, model.pr
        ax.fill_between(band.grid, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(
            band.x,
            band.y,
            color=colour,
            drawstyle="steps-pre",
            label=f"{model.name}: AUPRC {_ci(m['auprc'], m['auprc_ci'])}",
        )
    first = comparison.models[0].metrics
    prevalence = first["n_abnormal"] / (first["n_abnormal"] + first["n_normal"])
    ax.axhline(
        prevalence, color="0.6", linestyle=":", linewidth=1, label=f"prevalence {prevalence:.2f}"
    )
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="Precision-recall, held-out test",
    )
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_histograms(comparison: Comparison, path: Path) -> None:
    """Score histograms of normal vs. abnormal test images, one panel per model."""
    models = comparison.models
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        scores, labels = model.test.scores, model.test.labels
        bins = np.linspace(scores.min(), scores.max(), 30)
        for label, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
            ax.hist(
                scores[labels == label],
                bins=bins,
                alpha=0.55,
                color=colour,
                label=f"{name} ({int((labels == label).sum())})",
                density=True,
            )
        ax.axvline(
            model.metrics["threshold"],
            color="k",
            linestyle="--",
            linewidth=1,
            label="threshold (val)",
        )
        ax.set(title=model.name, xlabel="anomaly score (mean of the map)", ylabel="density")
        ax.legend(fontsize=8)
    _save(fig, path)


def _draw_boxes(ax: Any, boxes: Sequence[tuple[Any, ...]]) -> None:
    for finding, x, y, w, h in boxes:
        ax.add_patch(
            Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="lime", linewidth=1.2)
        )
        ax.text(x - 0.5, y - 1.5, finding, color="lime", fontsize=6, va="bottom")


def plot_reconstructions(model: ModelResult, path: Path) -> None:
    """Input | reconstruction | anomaly-map overlay for the model's example test images."""
    ex = model.examples
    assert ex.images is not None and ex.reconstructions is not None and ex.maps is not None
    rows = len(ex.records)
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, 2.45 * rows + 0.4), squeeze=False)
    titles = (f"{model.name}: input", "reconstruction", "anomaly map (green: NIH boxes)")
    for title, ax in zip(titles, axes[0], strict=True):
        ax.set_title(title, fontsize=9)
    for row, (record, kind) in enumerate(zip(ex.records, model.example_kinds, strict=True)):
        boxes = model.boxes.get(record.key, [])
        image = ex.images[row]
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[row, 1].imshow(np.clip(ex.reconstructions[row], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[row, 2].imshow(overlay_rgb(image, ex.maps[row], model.map_scale))
        for ax in (axes[row, 0], axes[row, 2]):
            _draw_boxes(ax, boxes)
        verdict = "abnormal" if ex.scores[row] >= model.metrics["threshold"] else "normal"
        findings = ", ".join(record.findings) or "No Finding"
        axes[row, 0].set_ylabel(f"{kind}\n{record.key}", fontsize=7)
        axes[row, 1].set_xlabel(f"{findings}", fontsize=7)
        axes[row, 2].set_xlabel(f"score {ex.scores[row]:.4g} → {verdict}", fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path)


def read_training_log(run_dir: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``<run>/metrics.jsonl`` (empty when the file is missing)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(name: str, records: Sequence[dict[str, Any]], path: Path) -> bool:
    """Training curves: each loss term (validation losses on the matching panel), images/s.

    Returns:
        False (and writes nothing) when the log has no training line.
    """
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if not train:
        return False
    skip = {"step", "stage", "epoch", "images_per_s"}
    terms = sorted(
        (k for k in train[0] if k not in skip and isinstance(train[0][k], int | float)),
        key=lambda k: (k != "loss", k),
    )
    panels = [*terms, "images_per_s"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    steps = [r["step"] for r in train]
    for ax, key in zip(axes.flat, panels, strict=False):
        ax.plot(
            steps, [r[key] for r in train], marker="." if len(train) < 20 else None, label="train"
        )
        if val and f"val_{key}" in val[0]:
            ax.plot(
                [r["step"] for r in val],
                [r[f"val_{key}"] for r in val],
                marker="o",
                label="validation",
            )
            ax.legend(fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{name}: training curves (metrics.jsonl)", fontsize=10)
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_figures(comparison: Comparison, directory: Path) -> dict[str, Path]:
    """Write every figure as PNG into ``directory``.

    Returns:
        Figure name -> path (``roc``, ``pr``, ``histograms``, ``reconstructions_<run>``,
        ``training_<run>`` when the run has a training log).
    """
    directory.mkdir(parents=True, exist_ok=True)
    figures = {name: directory / f"{name}.png" for name in ("roc", "pr", "histograms")}
    plot_roc(comparison, figures["roc"])
    plot_pr(comparison, figures["pr"])
    plot_histograms(comparison, figures["histograms"])
    for model in comparison.models:
        stem = file_stem(model.name)
        figures[f"reconstructions_{stem}"] = directory / f"reconstructions_{stem}.png"
        plot_reconstructions(model, figures[f"reconstructions_{stem}"])
        training = directory / f"training_{stem}.png"
        if plot_training(model.name, read_training_log(model.run_dir), training):
            figures[f"training_{stem}"] = training
    return figures


# ---------------------------------------------------------------------------------------------
# Documents


def _sections(comparison: Comparison) -> list[tuple[str, str, Table]]:
    """(title, explanation, table) of every report section, in order."""
    b = comparison.bootstrap
    sections: list[tuple[str, str, Table]] = [
        (
            "Held-out test results",
            f"Image-level results on the test patients. 95% confidence intervals: "
            f"{b['n_resamples']} bootstrap resamples of patients (seed {b['seed']}), stratified "
            "by whether a patient has an abnormal image. The threshold was chosen on the "
            "validation split (maximum F1) and applied unchanged; sensitivity, specificity and F1 "
            "are at that threshold. Best F1 is an oracle tuned on the test labels (an upper "
            "bound, not an operating point).",
            headline_rows(comparison),
        ),
    ]
    if comparison.delong:
        sections.append(
            (
                "Model comparison (paired DeLong test)",
                "Difference of test AUROC between two models scored on the same "
                "images, with its 95% confidence interval and two-sided p-value.",
                delong_rows(comparison),
            )
        )
    sections += [
        (
            "Per-finding AUROC",
            "Images with each NIH finding (possibly among others) against all normal test "
            f"images. Values from fewer than {SMALL_N} abnormal images are unreliable.",
            finding_rows(comparison),
        ),
        (
            "Subgroup AUROC",
            "Normal vs. abnormal within each view position, sex and age band (– where a "
            "subgroup lacks a class).",
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
            f"Data: {comparison.data}. Patients are split by a seeded hash of the patient id "
            "(NIH's official test list when the data has it); training uses normal images of the "
            "training patients only.",
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
    return [(m.name, yaml.safe_dump(to_dict(m.config), sort_keys=False)) for m in comparison.models]


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
