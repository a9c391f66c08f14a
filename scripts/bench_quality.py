"""Detection-quality benchmark (``hatch run bench-quality``): held-out AUROC of every model.

    hatch run bench-quality [--datasets nih pediatric] [--variants unet ra ae ae-latent4 ...]
                            [--size 64] [--epochs N] [--max-steps N] [--out bench/quality.json]
                            [--readme README.md] [--set KEY=VALUE ... --tag NAME]

For each data set and variant (a model family at its defaults, or one named option of it), in
a fresh process each: train on the normal images of the training patients, then evaluate. The
evaluation chooses everything -- the image-score aggregation (``eval.score``), the operating
threshold (``eval.threshold``) and the epoch whose model is evaluated
(``train.select_checkpoint``: ``auto``, the default, is the epoch of best validation AUROC on
both data sets; the ``-last`` variants evaluate the final model) -- on the validation patients
only. The held-out test patients give the
reported figures: AUROC and AUPRC with patient-bootstrap 95% CIs, the patient-weighted AUROC
(each image weighted by 1 / its patient's image count), sensitivity and specificity at the
validation-chosen threshold, train and evaluation wall time, epochs and steps. Each
evaluation also scores the model-free reference (the raw-image statistic with the best
validation AUROC, :func:`imgae_dx_jax.evaluation.evaluate_reference`): a variant's row keeps
its paired AUROC difference with it (``reference_difference``), and the reference gets a row of
its own (variant ``image-statistic``, one per data set and size), the floor of the table.

Data sets:

- ``nih``: the bundled 1000-image NIH ChestX-ray14 sample (stage ``images_001``; labels from
  ``Data_Entry_2017.csv``, split by ``Patient ID``).
- ``pediatric``: ``benchmarks/data/pediatric-pneumonia-dev.zip`` (1341 normal, 1000 pneumonia
  pediatric chest X-rays from the training part of Kermany et al.'s set), read as an image
  folder with the packaged ``pediatric`` config (patients from the file names).

Settings of one's own are measured with ``--set KEY=VALUE`` (repeatable, any config key, as
``hatch run train --set``), applied to every variant after the variant's own; they need
``--tag NAME``, which names the rows ``<variant>+<NAME>`` (their ``overrides`` list the settings
that reproduce them), so that they never replace the row of a named variant.

Results are merged into ``--out`` (keyed by data set, variant and image size, so variants can
be run one at a time) and, with ``--readme``, written as the table between the
``<!-- quality-table -->`` markers of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imgae_dx_jax.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the machine description shared by the benchmarks

ROOT = bench.ROOT
PEDIATRIC = ROOT / "benchmarks" / "data" / "pediatric-pneumonia-dev.zip"

DATASETS: dict[str, list[str]] = {
    "nih": ["--source", "sample", "--stage", "images_001"],
    "pediatric": ["--config", "pediatric", "--data", str(PEDIATRIC)],
}
"""Training-command arguments of each data set."""

COARSE = "model.unet.noise=coarse"
"""Kascenas et al.'s coarse noise alone, the U-Net's default until 2026-12-04 (now coarse noise
and foreign patches, ``both``): the U-Net options measured on it keep it, so that their rows
reproduce."""

RA_VAL1 = "model.ra.validations_per_epoch=1"
"""One validation point per epoch, the RA's default until 2026-12-04 (now 4): the RA options
measured with it keep it, so that their rows reproduce."""

PATCH1 = [
    "model.unet.patches=1",
    "model.unet.patch_side=[0.1,0.4]",
    "model.unet.patch_alpha=[0.0,1.0]",
]
"""The U-Net's foreign patches from 2026-12-04 until 2026-12-05 (one per image, sides 10-40% of
the image, weight U(0, 1)), when stronger ones became the default: the rows measured with them
keep them, so that they reproduce."""

MEASURED_WITH: dict[str, list[str]] = {"unet": [COARSE], "ra": [RA_VAL1], "ae": []}
"""Family -> the former defaults its option rows were measured with (kept under every option
of the family, so that its rows reproduce)."""

UNET_OPTIONS: dict[str, list[str]] = {
    # The authors' training recipe (Kascenas et al.): AMSGrad with L2 1e-5, cosine decay over
    # the step budget (the default schedule), the coarse noise randomly rolled.
    "unet-kascenas": [
        "train.optimizer=amsgrad",
        "train.weight_decay=1e-5",
        "model.unet.noise_roll=true",
    ],
    "unet-constant-lr": ["train.lr_schedule=constant"],
    "unet-no-border": ["eval.border=0"],
    "unet-no-intensity": ["data.intensity=none"],
    # Kascenas et al. draw the coarse noise on 16x16 for 128 px images: 8x8 is that scale at 64 px.
    "unet-noise8": ["model.unet.noise_resolution=8"],
    # Twice the coarse noise's amplitude: the anomalies it teaches to remove are stronger.
    "unet-std0.4": ["model.unet.noise_std=0.4"],
    # The AE's uncertainty head on the U-Net: NLL of the clean image, map = error / variance.
    "unet-uncertainty": ["model.unet.uncertainty=true"],
    # Twice the default budget (about 580 steps on the pediatric set instead of 290): is the
    # U-Net's seed-to-seed spread that of an under-trained model?
    "unet-10ep": ["train.epochs=10"],
    # Without the skips of the finest 1, 2 or all 3 levels: less of the input can be copied.
    **{f"unet-drop{n}": [f"model.unet.dropped_skips={n}"] for n in (1, 2, 3)},
    # A coarser noise grid (4x4: opacities the size of a lung lobe), half the amplitude, a
    # third of the learning rate, half the channels.
    "unet-noise4": ["model.unet.noise_resolution=4"],
    "unet-std0.1": ["model.unet.noise_std=0.1"],
    "unet-lr3e-4": ["model.unet.learning_rate=3e-4"],
    "unet-narrow": ["model.unet.widths=[16,32,64,128]"],
}
"""U-Net option variants: name -> ``--set`` overrides over the U-Net with :data:`COARSE`, the
noise they were measured on (rows keep reproducing under their names)."""

RA_OPTIONS: dict[str, list[str]] = {
    # The paper's form of the map: the residual times a saliency (here the encoder's).
    "ra-saliency": ["model.ra.anomaly_map=saliency"],
    # Ten times the paper's learning rate, as the U-Net's and AE's 1e-3 for CPU-sized budgets.
    "ra-lr5e-4": ["model.ra.learning_rate=5e-4"],
    # Three times the paper's learning rate: between the paper's 5e-5 and the diverging 5e-4.
    "ra-lr1.5e-4": ["model.ra.learning_rate=1.5e-4"],
    # Half the paper's rate: faster rates and longer budgets both degrade the RA.
    "ra-lr2.5e-5": ["model.ra.learning_rate=2.5e-5"],
    # The paper's rate for twice the default budget: is the RA at 5 epochs under-trained?
    "ra-10ep": ["train.epochs=10"],
    # Four times the KL weight of the real images: a latent held closer to the prior, so that
    # the decoder keeps to the normal images' manifold as training goes on (the RA's validation
    # AUROC peaks after 1-2 epochs and falls while its loss keeps falling).
    "ra-kl4": ["model.ra.beta_kl=4.0"],
    # The authors' balance of the KL terms against the pixel error carried from their 128 px to
    # 64 px: every loss is scaled by 1 / (H * W), so at 64 px a KL weighs 4 times as much
    # against the per-pixel error as in their runs; a quarter of beta_kl and beta_neg undoes it.
    "ra-kl-64px": ["model.ra.beta_kl=0.25", "model.ra.beta_neg=32.0"],
    # The authors' batch of 8 images (the benchmark's default is 16): twice the updates per epoch.
    "ra-batch8": ["train.batch_size=8"],
}
"""RA option variants: name -> ``--set`` overrides over the RA with :data:`RA_VAL1`, the
validation cadence they were measured with (rows keep reproducing under their names)."""

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "unet": ("unet", []),
    "ra": ("ra", []),
    **{name: ("ra", [*MEASURED_WITH["ra"], *opts]) for name, opts in RA_OPTIONS.items()},
    "ae": ("ae", []),
    # The exported model is the epoch of best validation AUROC (what auto, the default, does
    # where validation has both classes), or the model after the last step; the U-Net's with
    # the coarse noise alone, the RA's with one validation point per epoch.
    **{
        f"{family}-{mode}": (
            family,
            [*MEASURED_WITH[family], f"train.select_checkpoint={value}"],
        )
        for family in ("unet", "ra", "ae")
        for mode, value in (("select", "val_auroc"), ("last", "last"))
    },
    # The RA with one validation point per epoch (its default until 2026-12-04); the U-Net and
    # the AE with four (theirs is one): the export is the best of 20 models instead of 5.
    "ra-val1": ("ra", [RA_VAL1]),
    "unet-val4": ("unet", ["model.unet.validations_per_epoch=4"]),
    # The U-Net's default foreign patches until 2026-12-05: one weaker patch per image.
    "unet-patch1": ("unet", PATCH1),
    "ae-val4": ("ae", ["model.ae.validations_per_epoch=4"]),
    **{name: ("unet", [*MEASURED_WITH["unet"], *opts]) for name, opts in UNET_OPTIONS.items()},
    # The plain AE (MSE, map = residual): the baseline of Mao et al. and of the targets.
    "ae-mse": ("ae", ["model.ae.uncertainty=false"]),
    "ae-constant-lr": ("ae", ["train.lr_schedule=constant"]),
    "ae-no-border": ("ae", ["eval.border=0"]),
    "ae-no-intensity": ("ae", ["data.intensity=none"]),
    "ae-latent4": ("ae", ["model.ae.latent_dim=4"]),
    # Deep ensembles of 4 independently initialised AEs; map: the per-pixel variance of the
    # members' mean images (the default ensemble map), or the average of the members' maps.
    "ae-ensemble": ("ae", ["model.ae.ensemble=4"]),
    "ae-ensemble-mean": ("ae", ["model.ae.ensemble=4", "model.ae.ensemble_map=mean"]),
    "ae-mse-ensemble": ("ae", ["model.ae.uncertainty=false", "model.ae.ensemble=4"]),
}
"""Variant name -> (model family, ``--set`` overrides over the defaults)."""

DEFAULT_VARIANTS = ("unet", "ra", "ae")
SEEDS = (1, 2)
SEEDED = (
    *DEFAULT_VARIANTS,
    "ae-mse",
    "unet-patch1",
    "unet-10ep",
    "unet-lr3e-4",
    "unet-select",
    "ra-select",
    "ra-kl4",
    "ra-kl-64px",
    "ra-batch8",
    "ra-val1",
    "unet-last",
    "ra-last",
    "ae-last",
)
"""Other training seeds of each default model and of the options that might replace a default
(initialisation, batch order, noise; the split stays): ``<variant>-seed<N>`` rows show the
seed-to-seed spread that one row hides."""
VARIANTS.update(
    {
        f"{name}-seed{seed}": (family, [*overrides, f"train.seed={seed}"])
        for name, (family, overrides) in ((v, VARIANTS[v]) for v in SEEDED)
        for seed in SEEDS
    }
)
TEST_FIGURES = (
    "auroc",
    "auroc_ci",
    "auprc",
    "auprc_ci",
    "auroc_patient_weighted",
    "sensitivity",
    "specificity",
    "threshold_source",
    "n_normal",
    "n_abnormal",
)
"""The held-out test figures a row takes from a model's (or the reference's) metrics."""
REFERENCE = "image-statistic"
"""The row of the model-free reference (a raw-image statistic) of each data set and size."""
TABLE_START, TABLE_END = "<!-- quality-table -->", "<!-- /quality-table -->"


def custom_variant(
    variant: str, settings: list[str], tag: str | None
) -> tuple[str, str, list[str]]:
    """The row name, model family and overrides of ``variant`` with ``--set`` ``settings``.

    Without settings, the variant itself. With them, the rows are ``<variant>+<tag>`` and the
    settings come after the variant's own overrides (a later setting of a key wins).

    Raises:
        SystemExit: when there are settings but no tag (or a tag that is not a plain name),
            a tag but no settings, or the settings are not a valid config (the message names
            the key, as ``hatch run train --set`` does).
    """
    family, overrides = VARIANTS[variant]
    if tag and not settings:
        raise SystemExit("--tag names rows measured with --set: give the settings")
    if not settings:
        return variant, family, overrides
    if not tag:
        raise SystemExit(
            "--set needs --tag NAME: the rows are named <variant>+<NAME>, so that they never "
            "replace the row of a named variant"
        )
    if not re.fullmatch(r"[A-Za-z0-9._-]+", tag):
        raise SystemExit(f"--tag {tag!r}: use letters, digits, '.', '_' and '-' (it names rows)")
    try:
        load_config(None, [f"model.name={family}", *overrides, *settings])
    except ConfigError as err:
        raise SystemExit(f"bench-quality: {err}") from None
    return f"{variant}+{tag}", family, [*overrides, *settings]


def run_variant(
    dataset: str,
    variant: tuple[str, str, list[str]],
    size: int,
    epochs: int | None,
    max_steps: int | None,
    workdir: Path,
) -> list[dict[str, Any]]:
    """Train and evaluate one variant in a fresh process; return its row and the reference's.

    ``variant`` is the row name, model family and ``--set`` overrides (:func:`custom_variant`).
    """
    name, family, overrides = variant
    run_dir = workdir / f"{dataset}-{name}-{size}"
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(run_dir),
        "--",
        *DATASETS[dataset],
        "--model",
        family,
        "--image-size",
        str(size),
        "--set",
        "tracking.wandb=disabled",
        "--set",
        f"data.cache_dir={workdir / 'cache'}",
    ]
    for item in overrides:
        command += ["--set", item]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if max_steps is not None:
        command += ["--set", f"train.max_steps={max_steps}"]
    print(f"== {dataset} / {name} / {size} px", flush=True)
    load_before = os.getloadavg()[0]
    result = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{dataset}/{name} failed with exit code {result.returncode}")
    worker = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = max((r.get("step", 0) for r in log), default=0)
    scored = [r for r in log if "val_auroc" in r]  # epochs scored for the export's selection
    scored = [r for r in scored if r["stage"] == scored[-1]["stage"]]  # it restarts per stage
    measured = {
        "date": time.strftime("%Y-%m-%d"),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "device": worker["device"],
        "precision": worker["precision"],
        "cpu": bench.cpu_model(),  # machines of one platform string differ (and round differently)
    }
    row = {
        "dataset": dataset,
        "variant": name,
        "model": family,
        "overrides": overrides,
        "image_size": size,
        **summarise(metrics),
        "reference_difference": metrics["reference"]["difference"],
        "epochs": worker["epochs"],
        "steps": steps,
        "export": "val_auroc" if scored else "last",
        **({"exported_step": max(scored, key=lambda r: r["val_auroc"])["step"]} if scored else {}),
        "train_s": round(worker["train_s"], 1),
        "eval_s": round(worker["eval_s"], 1),
        # When and how loaded: train times compare only between rows of an idle machine.
        "measured": measured,
    }
    return [row, reference_row(dataset, size, metrics["reference"], measured)]


def reference_row(
    dataset: str, size: int, reference: dict[str, Any], measured: dict[str, Any]
) -> dict[str, Any]:
    """The row of the model-free reference that a variant's evaluation scored beside it.

    The raw-image statistic with the best validation AUROC
    (:func:`imgae_dx_jax.evaluation.evaluate_reference`): the same on every variant of a data
    set and image size, as they share the split.
    """
    return {
        "dataset": dataset,
        "variant": REFERENCE,
        "model": None,
        "overrides": [],
        "image_size": size,
        **{key: reference[key] for key in TEST_FIGURES},
        "score": reference["statistic"],
        "val_auroc": reference["val_auroc"],
        "epochs": 0,
        "steps": 0,
        "export": "none",
        "train_s": 0.0,
        "measured": measured,
    }


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's figures out of an evaluation's ``metrics.json``."""
    keys = (*TEST_FIGURES, "threshold_rule", "target_specificity", "score", "split_counts")
    figures = {key: metrics[key] for key in keys if key in metrics}
    # The validation AUROC of the chosen score: the figure that options and defaults are
    # compared on (the test figures are reported, never used to choose).
    figures["val_auroc"] = metrics["score_val_auroc"][metrics["score"]]
    return figures


def worker(run_dir: Path, train_args: list[str]) -> None:
    """In this process: train (timed), then evaluate (timed); print one JSON line."""
    import jax

    from imgae_dx_jax import logs
    from imgae_dx_jax.cli import overrides_from_args, train_parser
    from imgae_dx_jax.config import load_config
    from imgae_dx_jax.evaluation import evaluate_run
    from imgae_dx_jax.training import train

    args = train_parser().parse_args(train_args)
    config = load_config(args.config, overrides_from_args(args))
    logs.setup_logging(False)
    start = time.perf_counter()
    result = train(config, run_dir, resume="never", overwrite=True)
    trained = time.perf_counter()
    evaluate_run(run_dir)
    done = time.perf_counter()
    device = jax.devices()[0]
    line = {
        "train_s": trained - start,
        "eval_s": done - trained,
        "epochs": config.train.epochs,
        "device": f"{device.platform}: {device.device_kind}",  # where train_s was taken
        "precision": result.precision,  # train.precision auto: bf16 on most GPUs
    }
    print(json.dumps(line), flush=True)


def merge(out: Path, rows: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """Merge ``rows`` into the JSON file ``out`` (same data set, variant and size replaced).

    ``machine`` (CPUs, platform) is that of the CPU rows, whose train times it qualifies: rows
    measured on an accelerator name their device in their own ``measured`` and leave it as is.
    """
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"results": []}
    key = ("dataset", "variant", "image_size")
    fresh = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in data["results"] if tuple(r[k] for k in key) not in fresh]
    # Grouped by data set, then size (the 64 px CPU rows, then the accelerators' 128 px ones).
    order = ("dataset", "image_size", "variant")
    data["results"] = sorted(kept + rows, key=lambda r: tuple(r[k] for k in order))
    if all(r["measured"]["device"].startswith("cpu") for r in rows):
        data["machine"] = machine
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return data


def table(data: dict[str, Any]) -> str:
    """The README table (Markdown) of every result in ``data``."""
    lines = [
        "| data set | variant | px | validation AUROC | AUROC (95% CI) | patient-weighted AUROC "
        "| AUPRC (95% CI) | score | sens / spec | epochs (steps) | export | train s "
        "| measured (load) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        ci, pci = r.get("auroc_ci", [0, 0]), r.get("auprc_ci", [0, 0])
        weighted, val = r.get("auroc_patient_weighted"), r.get("val_auroc")
        when = r.get("measured")
        measured = (
            f"{when['date']} ({when['load_before']:.1f}-{when['load_after']:.1f})" if when else "-"
        )
        if when and not when.get("device", "cpu").startswith("cpu"):
            measured += f", {when['device']}"  # an accelerator's train time is not a CPU's
        if when and when.get("precision", "float32") != "float32":
            measured += f", {when['precision']}"
        lines.append(
            f"| {r['dataset']} | {r['variant']} | {r['image_size']} "
            f"| {'-' if val is None else f'{val:.3f}'} "
            f"| {r['auroc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) "
            f"| {'-' if weighted is None else f'{weighted:.3f}'} "
            f"| {r['auprc']:.3f} ({pci[0]:.3f}-{pci[1]:.3f}) "
            f"| {r.get('score', 'mean')} "
            f"| {r.get('sensitivity', 0):.2f} / {r.get('specificity', 0):.2f} "
            f"| {r['epochs']} ({r['steps']}) | {exported(r)} | {r['train_s']:.0f} | {measured} |"
        )
    return "\n".join(lines)


def exported(row: dict[str, Any]) -> str:
    """Which model a row evaluated: the last, or the epoch of best validation AUROC."""
    if row.get("export") == "val_auroc":
        return f"best validation AUROC (step {row['exported_step']})"
    return "none (no model)" if row.get("export") == "none" else "last"


def write_readme(readme: Path, data: dict[str, Any]) -> None:
    """Replace the text between the quality-table markers of ``readme``."""
    text = readme.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    note = (
        "\n\nIn the last column, rows measured on an accelerator name it, and rows not trained "
        "in float32 their precision"
    )
    if "machine" in data:  # absent while every row is an accelerator's
        machine = data["machine"]
        note += f"; the CPU rows ran on {machine['cpus']} CPUs, {machine['platform']}"
    note += ".\n\n"
    readme.write_text(text[:start] + note + table(data) + "\n" + text[end:])


def main() -> None:
    """Parse the command line and run the benchmark (or, with ``--worker``, one variant)."""
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT_VARIANTS)
    parser.add_argument("--size", type=int, default=64, help="image size (128 on accelerators)")
    parser.add_argument("--epochs", type=int, help="override every variant's epochs")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quality.json")
    parser.add_argument("--readme", type=Path, help="update this README's quality table")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="a config setting for every variant, after its own (repeatable; needs --tag)",
    )
    parser.add_argument("--tag", help="with --set: the rows are named <variant>+<TAG>")
    args = parser.parse_args()
    variants = [custom_variant(v, args.settings, args.tag) for v in args.variants]
    if "pediatric" in args.datasets and not PEDIATRIC.is_file():
        raise SystemExit(f"{PEDIATRIC} is missing: the pediatric set ships with a git checkout")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        for dataset in args.datasets:
            for variant in variants:
                rows = run_variant(
                    dataset, variant, args.size, args.epochs, args.max_steps, workdir
                )
                print(json.dumps(rows[0]), flush=True)
                machine = {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                }
                # Written after every variant, so that an interrupted run keeps what it measured.
                data = merge(args.out, rows, machine)
                if args.readme:
                    write_readme(args.readme, data)
    print(table(data))


if __name__ == "__main__":
    main()
