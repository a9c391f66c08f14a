"""Generate the Colab and Kaggle notebooks in ``notebooks/`` from code (nbformat).

The notebooks are the single output of this script, so they follow the package's API: edit
the cells here, never the ``.ipynb`` files, then run

    python scripts/generate_notebooks.py          # rewrite notebooks/*.ipynb
    python scripts/generate_notebooks.py --check  # exit 1 when a committed notebook differs

``tests/integration/test_notebooks.py`` fails when a committed notebook differs from what this
script produces, and executes the notebooks headlessly with tiny settings injected after their
``parameters`` cell (the papermill convention): the Colab and Kaggle ones in a fresh venv, from
their install cell on.

Generation is deterministic: no timestamps, no outputs, and cell ids derived from the
notebook name and the cell position.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
PARAMETERS_TAG = "parameters"

# ---------------------------------------------------------------------------------------------
# Cell helpers


def _text(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def md(*parts: str) -> NotebookNode:
    """A Markdown cell of one or more paragraphs (each dedented on its own)."""
    return nbformat.v4.new_markdown_cell("\n\n".join(_text(part) for part in parts))


def code(source: str, *tags: str) -> NotebookNode:
    """A code cell, optionally tagged (e.g. ``parameters``)."""
    cell = nbformat.v4.new_code_cell(_text(source))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(
    name: str, cells: list[NotebookNode], extra_metadata: dict | None = None
) -> NotebookNode:
    """A v4.5 notebook with stable cell ids and no run-specific metadata."""
    nb = nbformat.v4.new_notebook()
    nb.nbformat, nb.nbformat_minor = 4, 5
    for index, cell in enumerate(cells):
        cell.id = f"{name}-{index:02d}"
    nb.cells = cells
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            **(extra_metadata or {}),
        }
    )
    nbformat.validate(nb)
    return nb


def serialize(nb: NotebookNode) -> str:
    """The exact text written to disk (sorted keys, one-space indent, final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Cells shared by the notebooks


def package_note(where: str) -> str:
    """The parameters cell's note on ``PACKAGE``; ``where`` says where wheels are looked for."""
    return f"""
`PACKAGE` empty (the default): the install cell installs the newest `imgae_dx_jax-*.whl`
{where}. Build the wheel with `hatch run dist` in a checkout (`dist/imgae_dx_jax-*.whl`, also
inside `dist/imgae-dx-jax-colab.zip` with these notebooks). Or set `PACKAGE` to what pip should
install: a git URL of the repository (pip's `git+https://...` form), the path of a source
checkout, or the path of a wheel. Nothing is installed by name from the package index.
"""


ENVIRONMENT = """
# Where this notebook runs.
import glob
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
IN_KAGGLE = "KAGGLE_KERNEL_RUN_TYPE" in os.environ
"""

INSTALL = '''
# Install the package (and the JAX plugin of the accelerator) unless it is already installed,
# e.g. in a checkout of the repository or after a first run of this cell: from PACKAGE when it
# is set, else from the newest imgae_dx_jax wheel matching WHEELS.


class InstallError(Exception):
    """Stops the notebook with one message instead of a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"InstallError: {self}"]


def machine_accelerator() -> str:
    """gpu, tpu or cpu, read from the machine before JAX is imported."""
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/gpus").is_dir():
        return "gpu"
    tpu_devices = list(Path("/dev").glob("accel*")) + list(Path("/dev/vfio").glob("[0-9]*"))
    if tpu_devices or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return "tpu"
    return "cpu"


def newest_wheel(patterns: list[str]) -> Path | None:
    """The most recently modified imgae_dx_jax wheel matching the glob patterns, if any."""
    wheels = [Path(p) for pattern in patterns for p in glob.glob(pattern)]
    wheels = [w for w in wheels if w.name.startswith("imgae_dx_jax-") and w.is_file()]
    return max(wheels, key=lambda w: (w.stat().st_mtime, w.name), default=None)


def package_requirement(package: str, patterns: list[str]) -> str:
    """What pip installs: PACKAGE if set, else the newest wheel; InstallError without either."""
    if package:
        return package
    wheel = newest_wheel(patterns)
    if wheel is None:
        raise InstallError(
            "imgae_dx_jax is not installed and no wheel was found in "
            + " or ".join(patterns)
            + ". Put the wheel built with `hatch run dist` (imgae_dx_jax-*.whl) there, "
            "or set PACKAGE in the parameters cell to a git URL of the repository, "
            "a source checkout or a wheel path, then run this cell again."
        )
    return str(wheel)


if importlib.util.find_spec("imgae_dx_jax") is None:
    jax_plugin = {"gpu": ["jax[cuda12]>=0.7"], "tpu": ["jax[tpu]>=0.7"], "cpu": []}
    requirements = [package_requirement(PACKAGE, WHEELS), *jax_plugin[machine_accelerator()]]
    print("pip install", *requirements)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *requirements], check=True)
    importlib.invalidate_caches()

import imgae_dx_jax

print("imgae_dx_jax", imgae_dx_jax.__version__)
'''


def install_cell(wheels: str, environment: bool = True) -> str:
    """The install cell: ``wheels`` assigns the glob patterns ``WHEELS``; ``environment``
    puts the :data:`ENVIRONMENT` lines first (when no earlier cell has them)."""
    head = _text(ENVIRONMENT) + "\n\n" if environment else ""
    return head + _text(wheels) + "\n\n" + _text(INSTALL)


def runtime_check(expected: str, on_cpu: str) -> str:
    """The ``jax.devices()`` check; ``on_cpu`` is the code run on a CPU-only runtime."""
    return _text(
        f"""
    import jax

    from imgae_dx_jax.api import setup_logging

    setup_logging(debug=False)  # progress and INFO logs of imgae_dx_jax in the cell outputs
    devices = jax.devices()
    PLATFORM = devices[0].platform
    print(f"JAX {{jax.__version__}}: {{len(devices)}} {{PLATFORM}} device(s): {{devices}}")
    print("Expected runtime: {expected}")
    if PLATFORM == "cpu":
{textwrap.indent(_text(on_cpu), " " * 8)}
    """
    )


WANDB_LOGIN = """
# Optional: Weights & Biases. WANDB = "online" logs to wandb.ai; the API key comes from the
# WANDB_API_KEY environment variable, a notebook secret of that name, or a login prompt.
# "offline" writes local W&B runs (upload later with `wandb sync`), "disabled" turns it off.
if WANDB == "online":
    from imgae_dx_jax.api import wandb_login

    key = os.environ.get("WANDB_API_KEY")
    if not key and IN_COLAB:
        from google.colab import userdata

        try:
            key = userdata.get("WANDB_API_KEY")
        except Exception:  # secret missing or notebook access not granted
            key = None
    if not key and IN_KAGGLE:
        try:
            from kaggle_secrets import UserSecretsClient

            key = UserSecretsClient().get_secret("WANDB_API_KEY")
        except Exception:  # secret not attached to this notebook
            key = None
    wandb_login(key)  # prompts for the key when there is none
"""


def train_cell(setup: str, resume: str) -> str:
    """Training loop over ``MODELS``: ``setup`` defines ``CONFIG_FILE`` and the ``--set`` list
    ``settings``; ``resume`` is the call of ``train_and_evaluate`` (evaluation is left to the
    comparison of every run)."""
    body = textwrap.indent(_text(setup), " " * 4)
    return _text(
        f"""
    import shlex

    from imgae_dx_jax.api import parse_stages, train_and_evaluate
    from imgae_dx_jax.config import load_config

    stages = parse_stages(STAGES) if isinstance(STAGES, str) else list(STAGES)
{body}


    def cli_args(name: str, run_dir: Path) -> list[str]:
        \"\"\"The imgae-train arguments that train the same run from a terminal.\"\"\"
        config_args = [] if CONFIG_FILE is None else ["--config", str(CONFIG_FILE)]
        set_args = [arg for item in settings for arg in ("--set", item)]
        return [*config_args, "--model", name, "--run-dir", str(run_dir), *set_args]


    run_dirs = {{}}
    for name in MODELS:
        config = load_config(CONFIG_FILE, [f"model.name={{name}}", *settings])
        run_dir = RUN_ROOT / name
        run_dirs[name] = run_dir
        print(f"\\n=== {{name}} -> {{run_dir}}")
        print("CLI equivalent:", shlex.join(["imgae-train", *cli_args(name, run_dir)]))
        {resume}
    """
    )


EVALUATE = """
from imgae_dx_jax.api import compare_runs, print_comparison

report_dir = RUN_ROOT / "report"
comparison = compare_runs(list(run_dirs.values()), report_dir, n_bootstrap=BOOTSTRAP)
print_comparison(comparison)
run_args = [arg for path in run_dirs.values() for arg in ("--run", str(path))]
print("CLI equivalent:", shlex.join(["imgae-evaluate", *run_args, "--out", str(report_dir)]))
"""

SHOW = """
from IPython.display import Image, Markdown, display

from imgae_dx_jax.report.tables import file_stem, headline_rows, markdown_table, paired_rows

display(Markdown("### Held-out test results\\n\\n" + markdown_table(headline_rows(comparison))))
if comparison.paired:
    display(Markdown("### Paired bootstrap\\n\\n" + markdown_table(paired_rows(comparison))))
display(Markdown("### ROC curves (95% bootstrap bands)"))
display(Image(filename=str(comparison.files["roc"])))
for model in comparison.models:
    display(Markdown(f"### Reconstructions and anomaly maps: {model.name}"))
    display(Image(filename=str(comparison.files[f"reconstructions_{file_stem(model.name)}"])))
print("Full report (tables, PR curves, histograms, per-finding and subgroup AUROC):")
print(" ", comparison.files["report_html"])
"""


# ---------------------------------------------------------------------------------------------
# quickstart.ipynb


def quickstart() -> list[NotebookNode]:
    """Train the U-Net and the RA on the bundled sample and compare them."""
    return [
        md(
            """
            # ImgAE-Dx JAX quick start: U-Net vs. Reversed Autoencoder on the bundled sample

            Unsupervised anomaly detection in chest X-rays: each model is trained on **normal**
            images only, and images it reconstructs badly are flagged as abnormal. This notebook
            installs the package, trains the denoising **U-Net** and the **RA** (Reversed
            Autoencoder) on the 1000-image NIH ChestX-ray14 sample bundled with the package
            (64x64), evaluates both on the same held-out test patients and shows the metrics
            table, the ROC curves and the reconstructions.

            **Runtime:** any. A CPU runtime is enough (a few minutes with the defaults); a GPU or
            TPU runtime is used automatically. No account, no credentials, no download beyond the
            Python packages.

            **Full dataset:** the sample is NIH stage `images_001` only, downscaled to 64x64.
            For the whole NIH ChestX-ray14 (112,120 images in 12 stages) use
            `nih_progressive_colab.ipynb` (Colab GPU/TPU, data streamed from Kaggle, runs on
            Google Drive) or `nih_kaggle_notebook.ipynb` (a Kaggle notebook with the dataset
            attached): they set `--source kaggle` / `--source folder`, `IMAGE_SIZE = 128` and
            the stages to train.
            """
        ),
        md(
            """
            ## Parameters

            Change them here (or inject them with papermill: this cell is tagged `parameters`).
            `SETTINGS` takes any config override in the `--set key=value` form of the CLI, e.g.
            `"model.unet.mode=reconstruction"` or `"model.ra.widths=[16,32,64,64,64]"`.
            """,
            package_note(
                "in the working directory or its `wheels/` folder (upload it there on Colab), or "
                "under `/kaggle/input` on Kaggle"
            ),
        ),
        code(
            """
            MODELS = ["unet", "ra"]        # model families to train and compare: unet, ra, ae
            STAGES = ["images_001"]        # the bundled sample is NIH stage images_001
            EPOCHS = 5                     # passes over the training images
            IMAGE_SIZE = 64                # pixels; the sample's images are 64x64
            BATCH_SIZE = 16
            MAX_STEPS = 0                  # stop each model after this many steps; 0 = no limit
            SETTINGS = []                  # more config overrides, "key=value" as for --set
            RUN_ROOT = "runs/quickstart"   # one run directory per model below it, and report/
            RESUME = False                 # True: continue the runs in RUN_ROOT; False: afresh
            BOOTSTRAP = 1000               # patient-level bootstrap resamples for the 95% CIs
            WANDB = "disabled"             # Weights & Biases: disabled | offline | online
            PACKAGE = ""                   # what pip installs; "" = the newest wheel found
            """,
            PARAMETERS_TAG,
        ),
        md("## Install and check the runtime"),
        code(
            install_cell(
                """
                WHEELS = ["*.whl", "wheels/*.whl", "/kaggle/input/*/*.whl"]
                """
            )
        ),
        code(
            runtime_check(
                "any (CPU, GPU or TPU)",
                'print("CPU runtime: fine for the sample. All local devices are used when there '
                'are several.")',
            )
        ),
        code(WANDB_LOGIN),
        md(
            """
            ## Train

            Each model gets its own run directory (`RUN_ROOT/<model>`) with its config,
            patient split, `metrics.jsonl`, Orbax checkpoints and the inference export. The
            trainer checkpoints regularly; with `RESUME = True` (or `imgae-train` with the same
            `--run-dir`) an interrupted run continues where it stopped.
            """
        ),
        code(
            train_cell(
                """
                RUN_ROOT = Path(RUN_ROOT)
                CONFIG_FILE = None  # the packaged defaults (configs/default.yaml)
                RESUME_MODE = "auto" if RESUME else "never"  # never + overwrite: start afresh
                settings = [
                    "data.source=sample",
                    f"data.stages=[{','.join(stages)}]",
                    f"data.image_size={IMAGE_SIZE}",
                    f"train.epochs={EPOCHS}",
                    f"train.batch_size={BATCH_SIZE}",
                    f"train.max_steps={MAX_STEPS}",
                    f"tracking.wandb={WANDB}",
                    *SETTINGS,
                ]
                """,
                "train_and_evaluate(config, run_dir, resume=RESUME_MODE, overwrite=not RESUME, "
                "evaluate=False)",
            )
        ),
        md(
            """
            ## Evaluate both models with one comparison

            Both runs are scored on the same held-out test patients. The operating threshold of
            each model is chosen on its validation patients; AUROC and AUPRC come with 95%
            patient-level bootstrap intervals, and a paired patient bootstrap compares the models.
            """
        ),
        code(EVALUATE),
        code(SHOW),
        md(
            """
            ## Next steps

            - Score your own images with a trained run:
              `imgae-predict xray.png --run runs/quickstart/unet --out predictions`
              (a heatmap overlay per image and `predictions.csv`).
            - Train on the full NIH ChestX-ray14: `nih_progressive_colab.ipynb` (Colab GPU/TPU)
              or `nih_kaggle_notebook.ipynb` (Kaggle). From a terminal:
              `imgae-train --config colab_gpu --model unet --stage images_001,images_002`.
            """
        ),
    ]


# ---------------------------------------------------------------------------------------------
# nih_progressive_colab.ipynb


def nih_progressive_colab() -> list[NotebookNode]:
    """Progressive NIH training on Colab, resumable from Google Drive."""
    return [
        md(
            """
            # ImgAE-Dx JAX on Colab: progressive training on NIH ChestX-ray14 (GPU or TPU)

            Trains the chosen models (denoising U-Net, Reversed Autoencoder, plain AE) on the
            normal images of the NIH ChestX-ray14 training patients, **stage by stage**
            (`images_001` .. `images_012`, about 10,000 images each), then evaluates them on the
            held-out test patients and shows the report.

            **Runtime:** Colab with a **GPU** (T4, L4 or A100) or a **TPU** (Runtime → Change
            runtime type). The cell "Check the runtime" stops on a CPU runtime. All local
            devices are used (the batch is split over the TPU cores).

            **Data:** streamed from Kaggle's `nih-chest-xrays/data` with HTTP Range requests:
            only the images of the chosen stages are read, never the whole 42 GB archive. Each
            stage is decoded once into a resized cache on Google Drive, so later epochs and
            later sessions read the cache. You need a Kaggle account that has accepted the
            dataset's terms, and its API credentials: either the Colab secrets (key icon)
            `KAGGLE_USERNAME` and `KAGGLE_KEY` with notebook access granted, or a `kaggle.json`
            (kaggle.com → Settings → API → Create New Token) uploaded when asked or placed at
            `DRIVE_ROOT/kaggle.json`.

            **Resume after a disconnect:** the run directories and the stage cache live on Google
            Drive, and the trainer checkpoints every few minutes (written on the VM's disk, then
            copied to Drive whole, so Drive never holds half a checkpoint; the `colab_*`
            configs' `train.local_checkpoint_dir`). When Colab disconnects, just
            **run all cells again**: training continues from the last checkpoint (the trainer's
            `--resume auto` with the same `--run-dir`), stages already done are skipped. To
            train more stages later, add them to `STAGES` and run again: the model carries over.

            **Full dataset:** set `STAGES = "all"` (12 stages, 112,120 images; the official
            NIH test list defines the test patients), keep `IMAGE_SIZE = 128` (or 256 on an
            A100/TPU with a smaller `BATCH_SIZE`), and let the notebook resume across sessions.
            Expect the first pass over each stage to be bound by the download (about 3.5 GB per
            stage); the cache takes about 165 MB per stage at 128x128.
            """
        ),
        md(
            """
            ## Parameters

            This cell is tagged `parameters` (papermill). `CONFIG = "auto"` picks the packaged
            `colab_tpu` config on a TPU and `colab_gpu` otherwise (image size 128, batch sizes,
            Drive cache); `BATCH_SIZE = 0` keeps the config's. `SETTINGS` takes any
            `--set key=value` override. Do not change `IMAGE_SIZE`, `BATCH_SIZE` or model
            widths of an existing run: resuming refuses different shapes (use another
            `RUN_NAME`).
            """,
            package_note("in `DRIVE_ROOT/wheels/` on your Google Drive (it survives disconnects)"),
        ),
        code(
            """
            STAGES = ["images_001", "images_002"]  # NIH stages in training order, or "all"
            MODELS = ["unet", "ra"]        # unet, ra, ae: each gets its own run
            EPOCHS = 5                     # epochs per stage
            IMAGE_SIZE = 128
            BATCH_SIZE = 0                 # 0 = the config's (GPU 64, TPU 128)
            MAX_STEPS = 0                  # stop each model after this many steps; 0 = no limit
            CONFIG = "auto"                # auto | colab_gpu | colab_tpu | a YAML path
            SOURCE = "kaggle"              # kaggle (streamed) | archive | folder | url
            DATA = ""                      # kaggle: "" = nih-chest-xrays/data; else a path or URL
            DRIVE_ROOT = "/content/drive/MyDrive/imgae_dx_jax"  # runs, cache (and kaggle.json)
            RUN_NAME = "nih"               # runs go to DRIVE_ROOT/runs/RUN_NAME/<model>
            SETTINGS = []                  # more config overrides, "key=value" as for --set
            BOOTSTRAP = 1000               # bootstrap resamples for the 95% CIs
            WANDB = "disabled"             # Weights & Biases: disabled | offline | online
            ALLOW_CPU = False              # True: run on a CPU runtime anyway (slow)
            PACKAGE = ""                   # what pip installs; "" = newest DRIVE_ROOT/wheels/*.whl
            """,
            PARAMETERS_TAG,
        ),
        md(
            """
            ## Google Drive

            Run directories, stage caches, the compilation cache and the package's wheel
            (`DRIVE_ROOT/wheels/`) live in `DRIVE_ROOT` on your Drive so that they survive a
            disconnect. Outside Colab, `DRIVE_ROOT` is used as a local directory.
            """
        ),
        code(
            _text(ENVIRONMENT)
            + "\n\n"
            + _text(
                """
            if IN_COLAB:
                from google.colab import drive

                drive.mount("/content/drive")
            ROOT = Path(DRIVE_ROOT).expanduser()
            ROOT.mkdir(parents=True, exist_ok=True)
            RUN_ROOT = ROOT / "runs" / RUN_NAME
            CACHE_DIR = ROOT / "cache"
            print("runs:", RUN_ROOT, " stage cache:", CACHE_DIR)
            """
            )
        ),
        md("## Install"),
        code(
            install_cell(
                """
                WHEELS = [str(ROOT / "wheels" / "*.whl")]
                """,
                environment=False,
            )
        ),
        md(
            """
            ## Kaggle credentials

            Looked up in this order: `KAGGLE_USERNAME`/`KAGGLE_KEY` (or `KAGGLE_API_TOKEN`)
            already in the environment; the Colab secrets `KAGGLE_USERNAME` and `KAGGLE_KEY`;
            an existing `~/.kaggle/kaggle.json`; `DRIVE_ROOT/kaggle.json`; finally an upload
            prompt for `kaggle.json`. The file is stored with permission 0o600 (owner only).
            Nothing is printed or logged.
            """
        ),
        code(
            """
            def save_kaggle_json(data: bytes) -> Path:
                \"\"\"Write kaggle.json where the kaggle client looks, owner-only (0o600).\"\"\"
                folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / "kaggle.json"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                path.chmod(0o600)
                return path


            def kaggle_credentials() -> str:
                \"\"\"Give the kaggle client credentials; return where they came from.\"\"\"
                if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
                    return "environment"
                if os.environ.get("KAGGLE_API_TOKEN"):
                    return "environment (KAGGLE_API_TOKEN)"
                if IN_COLAB:
                    from google.colab import userdata

                    try:
                        username, key = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
                    except Exception:  # secrets missing or notebook access not granted
                        username = key = None
                    if username and key:
                        os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = username, key
                        return "Colab secrets"
                folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
                if (folder / "kaggle.json").is_file():
                    (folder / "kaggle.json").chmod(0o600)
                    return str(folder / "kaggle.json")
                on_drive = Path(DRIVE_ROOT).expanduser() / "kaggle.json"
                if on_drive.is_file():
                    save_kaggle_json(on_drive.read_bytes())
                    return str(on_drive)
                if IN_COLAB:
                    from google.colab import files

                    print("Upload kaggle.json (kaggle.com -> Settings -> API -> Create New Token)")
                    uploaded = files.upload()
                    if uploaded:
                        data = uploaded.get("kaggle.json") or next(iter(uploaded.values()))
                        save_kaggle_json(data)
                        for name in uploaded:  # files.upload() also saved it in the working dir
                            Path(name).unlink(missing_ok=True)
                        return "uploaded kaggle.json"
                raise RuntimeError(
                    "No Kaggle credentials: add the Colab secrets KAGGLE_USERNAME and KAGGLE_KEY, "
                    "or put kaggle.json in DRIVE_ROOT, or upload it when asked."
                )


            if SOURCE == "kaggle":
                print("Kaggle credentials:", kaggle_credentials())
            """
        ),
        md("## Weights & Biases (optional)"),
        code(WANDB_LOGIN),
        md("## Check the runtime and choose the config"),
        code(
            runtime_check(
                "Colab GPU or TPU",
                """
                message = (
                    "This notebook expects a GPU or TPU runtime: Runtime -> Change runtime type. "
                    "Set ALLOW_CPU = True to run on the CPU anyway (very slow at 128x128)."
                )
                if not ALLOW_CPU:
                    raise RuntimeError(message)
                print("WARNING:", message)
                """,
            )
            + "\n"
            + _text(
                """
                if CONFIG == "auto":
                    CONFIG = "colab_tpu" if PLATFORM == "tpu" else "colab_gpu"
                print("config:", CONFIG)
                """
            )
        ),
        md(
            """
            ## Train, stage by stage

            Each model trains `EPOCHS` epochs on each stage in `STAGES`, in order, carrying
            the model and optimiser from one stage to the next. Re-running this cell (or the
            whole notebook after a disconnect) resumes from the newest checkpoint in
            `RUN_ROOT/<model>`; completed models and stages are skipped. An interrupt (■)
            saves a checkpoint first.
            """
        ),
        code(
            train_cell(
                """
                CONFIG_FILE = CONFIG
                settings = [
                    f"data.source={SOURCE}",
                    f"data.path={DATA}",
                    f"data.cache_dir={CACHE_DIR}",
                    f"data.stages=[{','.join(stages)}]",
                    f"data.image_size={IMAGE_SIZE}",
                    f"train.epochs={EPOCHS}",
                    f"train.max_steps={MAX_STEPS}",
                    f"tracking.wandb={WANDB}",
                    *([f"train.batch_size={BATCH_SIZE}"] if BATCH_SIZE else []),
                    *SETTINGS,
                ]
                """,
                'train_and_evaluate(config, run_dir, resume="auto", evaluate=False)',
            )
        ),
        md(
            """
            ## Evaluate and compare

            Scores the held-out test patients of the trained stages with every model, writes
            the report to `RUN_ROOT/report/` on Drive (`report.html`, `report.md`,
            `metrics.json`, `scores.csv`, figures) and shows the main results here.
            """
        ),
        code(EVALUATE),
        code(SHOW),
        md(
            """
            ## Finish the upload to Drive

            Training returns once its last checkpoint is copied into the run directory on
            Drive, but Colab uploads Drive files in the background. Run this cell before you
            close the notebook: it waits until everything is uploaded, then unmounts Drive
            (run the "Google Drive" cell again to use it).
            """
        ),
        code(
            """
            if IN_COLAB:
                from google.colab import drive

                drive.flush_and_unmount()
                print("Drive is up to date and unmounted")
            """
        ),
    ]


# ---------------------------------------------------------------------------------------------
# nih_kaggle_notebook.ipynb


def nih_kaggle_notebook() -> list[NotebookNode]:
    """NIH training inside a Kaggle notebook, reading the attached dataset."""
    return [
        md(
            """
            # ImgAE-Dx JAX in a Kaggle notebook: NIH ChestX-ray14 from `/kaggle/input`

            Trains the chosen models on the normal images of the NIH ChestX-ray14 training
            patients, stage by stage, then evaluates them on the held-out test patients. Inside
            Kaggle the dataset is already extracted under `/kaggle/input/data`, so this notebook
            reads it as a `folder` source: **no credentials and no download**.

            **Runtime:** a Kaggle notebook with an accelerator (Settings → Accelerator: GPU T4 x2,
            GPU P100 or TPU VM; all local devices are used), **Internet on** (to pip install the
            package), and the dataset **NIH Chest X-rays** (`nih-chest-xrays/data`) added with
            "Add Input". The cell "Check the runtime" stops on a CPU-only session.

            **Resume:** runs go to `/kaggle/working/imgae_dx_jax/runs`, which Kaggle keeps as the
            notebook's output when you "Save Version". Re-running cells in the same session
            continues where training stopped. To continue in a new session, add this
            notebook's previous output as an input and set `RESUME_FROM` to its `runs`
            folder: it is copied to `/kaggle/working` first.

            **Full dataset:** set `STAGES = "all"` (12 stages, 112,120 images; NIH's official
            test list defines the test patients). A Kaggle session is limited to 12 hours
            (GPU quota 30 h/week), so train a few stages per session and resume.
            """
        ),
        md(
            """
            ## Parameters

            This cell is tagged `parameters` (papermill). The packaged `nih_kaggle` config sets
            the `folder` source at `/kaggle/input/data`, image size 128, batch size 64 and the
            cache directory. `DATA_DIR = ""` finds the folder holding `Data_Entry_2017.csv`
            under `INPUT_DIR`, where Kaggle puts the notebook's inputs (`/kaggle/input`).
            `SETTINGS` takes any `--set key=value` override.
            """,
            package_note("under `INPUT_DIR` (upload it as a dataset and add it with Add Input)"),
        ),
        code(
            """
            STAGES = ["images_001", "images_002"]  # NIH stages in training order, or "all"
            MODELS = ["unet", "ra"]        # unet, ra, ae: each gets its own run
            EPOCHS = 5                     # epochs per stage
            IMAGE_SIZE = 128
            BATCH_SIZE = 0                 # 0 = the config's (64)
            MAX_STEPS = 0                  # stop each model after this many steps; 0 = no limit
            CONFIG = "nih_kaggle"          # packaged config name or a YAML path
            INPUT_DIR = "/kaggle/input"    # the notebook's inputs: the NIH dataset, the wheel
            DATA_DIR = "/kaggle/input/data"  # "" = find Data_Entry_2017.csv under INPUT_DIR
            WORK_DIR = "/kaggle/working/imgae_dx_jax"  # runs (kept as the notebook's output)
            CACHE_DIR = "/tmp/imgae_dx_jax/cache"      # decoded stage caches (rebuilt quickly)
            RUN_NAME = "nih"               # runs go to WORK_DIR/runs/RUN_NAME/<model>
            RESUME_FROM = ""               # runs/ folder of a previous version's output
            SETTINGS = []                  # more config overrides, "key=value" as for --set
            BOOTSTRAP = 1000               # bootstrap resamples for the 95% CIs
            WANDB = "disabled"             # Weights & Biases: disabled | offline | online
            ALLOW_CPU = False              # True: run on a CPU session anyway (slow)
            PACKAGE = ""                   # what pip installs; "" = newest wheel in INPUT_DIR
            """,
            PARAMETERS_TAG,
        ),
        md("## Install"),
        code(
            install_cell(
                """
                WHEELS = [str(Path(INPUT_DIR) / "*" / "*.whl")]
                """
            )
        ),
        md("## Find the data"),
        code(
            """
            def find_nih(root: Path) -> Path:
                \"\"\"The attached dataset folder: the one holding Data_Entry_2017.csv.\"\"\"
                found = [*root.glob("*/Data_Entry_2017.csv"), *root.glob("*/*/Data_Entry_2017.csv")]
                if found:
                    return sorted(found)[0].parent
                raise RuntimeError(
                    f"Data_Entry_2017.csv not found under {root}: add the dataset NIH Chest X-rays "
                    "(nih-chest-xrays/data) with 'Add Input', or set DATA_DIR."
                )


            DATA_DIR = Path(DATA_DIR) if DATA_DIR else find_nih(Path(INPUT_DIR))
            if not (DATA_DIR / "Data_Entry_2017.csv").is_file():
                raise RuntimeError(f"{DATA_DIR} has no Data_Entry_2017.csv: is the dataset added?")
            print("NIH data:", DATA_DIR, sorted(p.name for p in DATA_DIR.glob("images_*")))

            RUN_ROOT = Path(WORK_DIR) / "runs" / RUN_NAME
            if RESUME_FROM and not RUN_ROOT.exists():
                shutil.copytree(Path(RESUME_FROM) / RUN_NAME, RUN_ROOT)
                print("copied the previous runs from", RESUME_FROM)
            RUN_ROOT.mkdir(parents=True, exist_ok=True)
            print("runs:", RUN_ROOT, " stage cache:", CACHE_DIR)
            """
        ),
        md("## Weights & Biases (optional; the API key from the Kaggle secret WANDB_API_KEY)"),
        code(WANDB_LOGIN),
        md("## Check the runtime"),
        code(
            runtime_check(
                "Kaggle GPU (T4 x2 or P100) or TPU VM",
                """
                message = (
                    "This notebook expects an accelerator: Settings -> Accelerator -> GPU or TPU. "
                    "Set ALLOW_CPU = True to run on the CPU anyway (very slow at 128x128)."
                )
                if not ALLOW_CPU:
                    raise RuntimeError(message)
                print("WARNING:", message)
                """,
            )
        ),
        md(
            """
            ## Train, stage by stage

            Each model trains `EPOCHS` epochs on each stage in `STAGES`, in order; the model and
            optimiser carry over between stages. Re-running resumes from the newest checkpoint
            in `RUN_ROOT/<model>` and skips what is done.
            """
        ),
        code(
            train_cell(
                """
                CONFIG_FILE = CONFIG
                settings = [
                    "data.source=folder",
                    f"data.path={DATA_DIR}",
                    f"data.cache_dir={CACHE_DIR}",
                    f"data.stages=[{','.join(stages)}]",
                    f"data.image_size={IMAGE_SIZE}",
                    f"train.epochs={EPOCHS}",
                    f"train.max_steps={MAX_STEPS}",
                    f"tracking.wandb={WANDB}",
                    *([f"train.batch_size={BATCH_SIZE}"] if BATCH_SIZE else []),
                    *SETTINGS,
                ]
                """,
                'train_and_evaluate(config, run_dir, resume="auto", evaluate=False)',
            )
        ),
        md(
            """
            ## Evaluate and compare

            Writes the report to `RUN_ROOT/report/` (`report.html`, `report.md`,
            `metrics.json`, `scores.csv`, figures) and shows the main results here.
            """
        ),
        code(EVALUATE),
        code(SHOW),
    ]


# ---------------------------------------------------------------------------------------------
# Building and writing

COLAB_METADATA = {
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
}

NOTEBOOKS: dict[str, tuple[Callable[[], list[NotebookNode]], dict]] = {
    "quickstart": (quickstart, {"colab": {"provenance": []}}),
    "nih_progressive_colab": (nih_progressive_colab, COLAB_METADATA),
    "nih_kaggle_notebook": (nih_kaggle_notebook, {}),
}


def build_all() -> dict[str, NotebookNode]:
    """Every notebook, by file name (``quickstart.ipynb`` ...)."""
    return {
        f"{name}.ipynb": notebook(name, cells(), metadata)
        for name, (cells, metadata) in NOTEBOOKS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare with the committed notebooks"
    )
    parser.add_argument("--out", type=Path, default=NOTEBOOK_DIR, help="output directory")
    args = parser.parse_args(argv)
    stale = []
    for filename, nb in build_all().items():
        path = args.out / filename
        text = serialize(nb)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print("wrote", path)
    if stale:
        print(
            "out of date (run python scripts/generate_notebooks.py):",
            *map(str, stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
