"""The figures of an evaluation as PNG files (matplotlib).

Figures are made with matplotlib's object-oriented API on an Agg canvas chosen in
:func:`_figure`, when a figure is drawn: nothing here imports ``matplotlib.pyplot`` or
changes the caller's backend (a notebook keeps its inline plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from imgae_dx_jax import run_dir as rundir
from imgae_dx_jax.report.overlay import overlay_rgb
from imgae_dx_jax.report.tables import ci_text, file_stem
from imgae_dx_jax.results import Comparison, ModelResult


def _colours(n: int) -> list[Any]:
    return [colormaps["tab10"](i % 10) for i in range(n)]


def _figure(**kwargs: Any) -> Figure:
    """A new figure drawn on matplotlib's Agg canvas (no pyplot, no global backend)."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def plot_roc(comparison: Comparison, path: Path) -> None:
    """ROC curves of every model with their 95% bootstrap bands."""
    fig = _figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for model, colour in zip(comparison.models, _colours(len(comparison.models)), strict=True):
        m, band = model.metrics, model.roc
        ax.fill_between(band.grid, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(
            band.x,
            band.y,
            color=colour,
            label=f"{model.name}: AUROC {ci_text(m['auroc'], m['auroc_ci'])}",
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
    fig = _figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for model, colour in zip(comparison.models, _colours(len(comparison.models)), strict=True):
        m, band = model.metrics, model.pr
        ax.fill_between(band.grid, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(
            band.x,
            band.y,
            color=colour,
            drawstyle="steps-pre",
            label=f"{model.name}: AUPRC {ci_text(m['auprc'], m['auprc_ci'])}",
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
    fig = _figure(figsize=(4.6 * len(models), 3.6))
    axes = fig.subplots(1, len(models), squeeze=False)
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
        ax.set(
            title=model.name,
            xlabel=f"anomaly score ({model.metrics['score']})",
            ylabel="density",
        )
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
    fig = _figure(figsize=(7.2, 2.45 * rows + 0.4))
    axes = fig.subplots(rows, 3, squeeze=False)
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
    fig = _figure(figsize=(3.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
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


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
        if plot_training(model.name, rundir.read_training_log(model.run_dir), training):
            figures[f"training_{stem}"] = training
    return figures
