# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
# ---

# %% [markdown]
# # ImgAE-Dx JAX on Colab: progressive training on NIH ChestX-ray14 (GPU or TPU)
#
# Trains the chosen models (denoising U-Net, Reversed Autoencoder, plain AE) on the
# normal images of the NIH ChestX-ray14 training patients, **stage by stage**
# (`images_001` .. `images_012`, about 10,000 images each), then evaluates them on the
# held-out test patients and shows the report.
#
# **Runtime:** Colab with a **GPU** (T4, L4 or A100) or a **TPU** (Runtime → Change
# runtime type). The cell "Check the runtime" stops on a CPU runtime. All local
# devices are used (the batch is split over the TPU cores).
#
# **Data:** streamed from Kaggle's `nih-chest-xrays/data` with HTTP Range requests:
# only the images of the chosen stages are read, never the whole 42 GB archive. Each
# stage is decoded once into a resized cache on Google Drive, so later epochs and
# later sessions read the cache. You need a Kaggle account that has accepted the
# dataset's terms, and its API credentials: either the Colab secrets (key icon)
# `KAGGLE_USERNAME` and `KAGGLE_KEY` with notebook access granted, or a `kaggle.json`
# (kaggle.com → Settings → API → Create New Token) uploaded when asked or placed at
# `DRIVE_ROOT/kaggle.json`.
#
# **Resume after a disconnect:** the run directories and the stage cache live on Google
# Drive, and the trainer checkpoints every few minutes (written on the VM's disk, then
# copied to Drive whole, so Drive never holds half a checkpoint; the `colab_*`
# configs' `train.local_checkpoint_dir`). When Colab disconnects, just
# **run all cells again**: training continues from the last checkpoint (the trainer's
# `--resume auto` with the same `--run-dir`), stages already done are skipped. To
# train more stages later, add them to `STAGES` and run again: the model carries over.
#
# **Full dataset:** set `STAGES = "all"` (12 stages, 112,120 images; the official
# NIH test list defines the test patients), keep `IMAGE_SIZE = 128` (or 256 on an
# A100/TPU with a smaller `BATCH_SIZE`), and let the notebook resume across sessions.
# Expect the first pass over each stage to be bound by the download (about 3.5 GB per
# stage); the cache takes about 165 MB per stage at 128x128.

# %% [markdown]
# ## Parameters
#
# This cell is tagged `parameters` (papermill). `CONFIG = "auto"` picks the packaged
# `colab_tpu` config on a TPU and `colab_gpu` otherwise (image size 128, batch sizes,
# Drive cache); `BATCH_SIZE = 0` keeps the config's. `SETTINGS` takes any
# `--set key=value` override. Do not change `IMAGE_SIZE`, `BATCH_SIZE` or model
# widths of an existing run: resuming refuses different shapes (use another
# `RUN_NAME`).
#
# `PACKAGE` empty (the default): the install cell installs the newest `imgae_dx_jax-*.whl` in
# `DRIVE_ROOT/wheels/` on your Google Drive (it survives disconnects). Build the wheel with
# `hatch run dist` in a checkout (`dist/imgae_dx_jax-*.whl`, also inside
# `dist/imgae-dx-jax-colab.zip` with these notebooks). Or set `PACKAGE` to what pip should
# install: a git URL of the repository (pip's `git+https://...` form), the path of a source
# checkout, or the path of a wheel. Nothing is installed by name from the package index.

# %% tags=["parameters"]
STAGES = ["images_001", "images_002"]  # NIH stages in training order, or "all"
MODELS = ["unet", "ra"]  # unet, ra, ae: each gets its own run
EPOCHS = 5  # epochs per stage
IMAGE_SIZE = 128
BATCH_SIZE = 0  # 0 = the config's (GPU 64, TPU 128)
MAX_STEPS = 0  # stop each model after this many steps; 0 = no limit
CONFIG = "auto"  # auto | colab_gpu | colab_tpu | a YAML path
SOURCE = "kaggle"  # kaggle (streamed) | archive | folder | url
DATA = ""  # kaggle: "" = nih-chest-xrays/data; else a path or URL
DRIVE_ROOT = "/content/drive/MyDrive/imgae_dx_jax"  # runs, cache (and kaggle.json)
RUN_NAME = "nih"  # runs go to DRIVE_ROOT/runs/RUN_NAME/<model>
SETTINGS: list[str] = []  # more config overrides, "key=value" as for --set
BOOTSTRAP = 1000  # bootstrap resamples for the 95% CIs
WANDB = "disabled"  # Weights & Biases: disabled | offline | online
ALLOW_CPU = False  # True: run on a CPU runtime anyway (slow)
PACKAGE = ""  # what pip installs; "" = newest DRIVE_ROOT/wheels/*.whl

# %% [markdown]
# ## Google Drive
#
# Run directories, stage caches, the compilation cache and the package's wheel
# (`DRIVE_ROOT/wheels/`) live in `DRIVE_ROOT` on your Drive so that they survive a
# disconnect. Outside Colab, `DRIVE_ROOT` is used as a local directory.

# %%
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

if IN_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
ROOT = Path(DRIVE_ROOT).expanduser()
ROOT.mkdir(parents=True, exist_ok=True)
RUN_ROOT = ROOT / "runs" / RUN_NAME
CACHE_DIR = ROOT / "cache"
print("runs:", RUN_ROOT, " stage cache:", CACHE_DIR)

# %% [markdown]
# ## Install

# %%
WHEELS = [str(ROOT / "wheels" / "*.whl")]

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
    jax_plugin = {"gpu": ["jax[cuda12]>=0.8.1"], "tpu": ["jax[tpu]>=0.8.1"], "cpu": []}
    requirements = [package_requirement(PACKAGE, WHEELS), *jax_plugin[machine_accelerator()]]
    print("pip install", *requirements)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *requirements], check=True)
    importlib.invalidate_caches()

import imgae_dx_jax

print("imgae_dx_jax", imgae_dx_jax.__version__)


# %% [markdown]
# ## Kaggle credentials
#
# Looked up in this order: `KAGGLE_USERNAME`/`KAGGLE_KEY` (or `KAGGLE_API_TOKEN`)
# already in the environment; the Colab secrets `KAGGLE_USERNAME` and `KAGGLE_KEY`;
# an existing `~/.kaggle/kaggle.json`; `DRIVE_ROOT/kaggle.json`; finally an upload
# prompt for `kaggle.json`. The file is stored with permission 0o600 (owner only).
# Nothing is printed or logged.


# %%
def save_kaggle_json(data: bytes) -> Path:
    """Write kaggle.json where the kaggle client looks, owner-only (0o600)."""
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)
    return path


def kaggle_credentials() -> str:
    """Give the kaggle client credentials; return where they came from."""
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

# %% [markdown]
# ## Weights & Biases (optional)

# %%
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

# %% [markdown]
# ## Check the runtime and choose the config

# %%
import jax

from imgae_dx_jax.api import setup_logging

setup_logging(debug=False)  # progress and INFO logs of imgae_dx_jax in the cell outputs
devices = jax.devices()
PLATFORM = devices[0].platform
print(f"JAX {jax.__version__}: {len(devices)} {PLATFORM} device(s): {devices}")
print("Expected runtime: Colab GPU or TPU")
if PLATFORM == "cpu":
    message = (
        "This notebook expects a GPU or TPU runtime: Runtime -> Change runtime type. "
        "Set ALLOW_CPU = True to run on the CPU anyway (very slow at 128x128)."
    )
    if not ALLOW_CPU:
        raise RuntimeError(message)
    print("WARNING:", message)
if CONFIG == "auto":
    CONFIG = "colab_tpu" if PLATFORM == "tpu" else "colab_gpu"
print("config:", CONFIG)

# %% [markdown]
# ## Train, stage by stage
#
# Each model trains `EPOCHS` epochs on each stage in `STAGES`, in order, carrying
# the model and optimiser from one stage to the next. Re-running this cell (or the
# whole notebook after a disconnect) resumes from the newest checkpoint in
# `RUN_ROOT/<model>`; completed models and stages are skipped. An interrupt (■)
# saves a checkpoint first.

# %%
import shlex

from imgae_dx_jax.api import parse_stages, train_and_evaluate
from imgae_dx_jax.config import load_config

stages = parse_stages(STAGES) if isinstance(STAGES, str) else list(STAGES)
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


def cli_args(name: str, run_dir: Path) -> list[str]:
    """The imgae-train arguments that train the same run from a terminal."""
    config_args = [] if CONFIG_FILE is None else ["--config", str(CONFIG_FILE)]
    set_args = [arg for item in settings for arg in ("--set", item)]
    return [*config_args, "--model", name, "--run-dir", str(run_dir), *set_args]


run_dirs = {}
for name in MODELS:
    config = load_config(CONFIG_FILE, [f"model.name={name}", *settings])
    run_dir = RUN_ROOT / name
    run_dirs[name] = run_dir
    print(f"\n=== {name} -> {run_dir}")
    print("CLI equivalent:", shlex.join(["imgae-train", *cli_args(name, run_dir)]))
    train_and_evaluate(config, run_dir, resume="auto", evaluate=False)

# %% [markdown]
# ## Evaluate and compare
#
# Scores the held-out test patients of the trained stages with every model, writes
# the report to `RUN_ROOT/report/` on Drive (`report.html`, `report.md`,
# `metrics.json`, `scores.csv`, figures) and shows the main results here.

# %%
from imgae_dx_jax.api import compare_runs, print_comparison

report_dir = RUN_ROOT / "report"
comparison = compare_runs(list(run_dirs.values()), report_dir, n_bootstrap=BOOTSTRAP)
print_comparison(comparison)
run_args = [arg for path in run_dirs.values() for arg in ("--run", str(path))]
print("CLI equivalent:", shlex.join(["imgae-evaluate", *run_args, "--out", str(report_dir)]))

# %%
from IPython.display import Image, Markdown, display

from imgae_dx_jax.report.tables import file_stem, headline_rows, markdown_table, paired_rows

display(Markdown("### Held-out test results\n\n" + markdown_table(headline_rows(comparison))))
if comparison.paired:
    display(Markdown("### Paired bootstrap\n\n" + markdown_table(paired_rows(comparison))))
display(Markdown("### ROC curves (95% bootstrap bands)"))
display(Image(filename=str(comparison.files["roc"])))
for model in comparison.models:
    display(Markdown(f"### Reconstructions and anomaly maps: {model.name}"))
    display(Image(filename=str(comparison.files[f"reconstructions_{file_stem(model.name)}"])))
print("Full report (tables, PR curves, histograms, per-finding and subgroup AUROC):")
print(" ", comparison.files["report_html"])

# %% [markdown]
# ## Finish the upload to Drive
#
# Training returns once its last checkpoint is copied into the run directory on
# Drive, but Colab uploads Drive files in the background. Run this cell before you
# close the notebook: it waits until everything is uploaded, then unmounts Drive
# (run the "Google Drive" cell again to use it).

# %%
if IN_COLAB:
    from google.colab import drive

    drive.flush_and_unmount()
    print("Drive is up to date and unmounted")
