# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
#   colab:
#     provenance: []
# ---

# %% [markdown]
# # ImgAE-Dx JAX quick start: U-Net vs. Reversed Autoencoder on the bundled sample
#
# Unsupervised anomaly detection in chest X-rays: each model is trained on **normal**
# images only, and images it reconstructs badly are flagged as abnormal. This notebook
# installs the package, trains the denoising **U-Net** and the **RA** (Reversed
# Autoencoder) on the 1000-image NIH ChestX-ray14 sample bundled with the package
# (64x64), evaluates both on the same held-out test patients and shows the metrics
# table, the ROC curves and the reconstructions.
#
# **Runtime:** any. A CPU runtime is enough (a few minutes with the defaults); a GPU or
# TPU runtime is used automatically. No account, no credentials, no download beyond the
# Python packages.
#
# **Full dataset:** the sample is NIH stage `images_001` only, downscaled to 64x64.
# For the whole NIH ChestX-ray14 (112,120 images in 12 stages) use
# `nih_progressive_colab.ipynb` (Colab GPU/TPU, data streamed from Kaggle, runs on
# Google Drive) or `nih_kaggle_notebook.ipynb` (a Kaggle notebook with the dataset
# attached): they set `--source kaggle` / `--source folder`, `IMAGE_SIZE = 128` and
# the stages to train.

# %% [markdown]
# ## Parameters
#
# Change them here (or inject them with papermill: this cell is tagged `parameters`).
# `SETTINGS` takes any config override in the `--set key=value` form of the CLI, e.g.
# `"model.unet.mode=reconstruction"` or `"model.ra.widths=[16,32,64,64,64]"`.
#
# `PACKAGE` empty (the default): the install cell installs the newest `imgae_dx_jax-*.whl` in
# the working directory or its `wheels/` folder (upload it there on Colab), or under
# `/kaggle/input` on Kaggle. Build the wheel with `hatch run dist` in a checkout
# (`dist/imgae_dx_jax-*.whl`, also inside `dist/imgae-dx-jax-colab.zip` with these notebooks).
# Or set `PACKAGE` to what pip should install: a git URL of the repository (pip's
# `git+https://...` form), the path of a source checkout, or the path of a wheel. Nothing is
# installed by name from the package index.

# %% tags=["parameters"]
MODELS = ["unet", "ra"]  # model families to train and compare: unet, ra, ae
STAGES = ["images_001"]  # the bundled sample is NIH stage images_001
EPOCHS = 5  # passes over the training images
IMAGE_SIZE = 64  # pixels; the sample's images are 64x64
BATCH_SIZE = 16
MAX_STEPS = 0  # stop each model after this many steps; 0 = no limit
SETTINGS: list[str] = []  # more config overrides, "key=value" as for --set
RUN_ROOT = "runs/quickstart"  # one run directory per model below it, and report/
RESUME = False  # True: continue the runs in RUN_ROOT; False: afresh
BOOTSTRAP = 1000  # patient-level bootstrap resamples for the 95% CIs
WANDB = "disabled"  # Weights & Biases: disabled | offline | online
PACKAGE = ""  # what pip installs; "" = the newest wheel found

# %% [markdown]
# ## Install and check the runtime

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

WHEELS = ["*.whl", "wheels/*.whl", "/kaggle/input/*/*.whl"]

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

# %%
import jax

from imgae_dx_jax.api import setup_logging

setup_logging(debug=False)  # progress and INFO logs of imgae_dx_jax in the cell outputs
devices = jax.devices()
PLATFORM = devices[0].platform
print(f"JAX {jax.__version__}: {len(devices)} {PLATFORM} device(s): {devices}")
print("Expected runtime: any (CPU, GPU or TPU)")
if PLATFORM == "cpu":
    print("CPU runtime: fine for the sample. All local devices are used when there are several.")

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
# ## Train
#
# Each model gets its own run directory (`RUN_ROOT/<model>`) with its config,
# patient split, `metrics.jsonl`, Orbax checkpoints and the inference export. The
# trainer checkpoints regularly; with `RESUME = True` (or `imgae-train` with the same
# `--run-dir`) an interrupted run continues where it stopped.

# %%
import shlex

from imgae_dx_jax.api import parse_stages, train_and_evaluate
from imgae_dx_jax.config import load_config

stages = parse_stages(STAGES) if isinstance(STAGES, str) else list(STAGES)
RUN_ROOT = Path(RUN_ROOT)
CONFIG_FILE: str | None = None  # the packaged defaults (configs/default.yaml)
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
    train_and_evaluate(config, run_dir, resume=RESUME_MODE, overwrite=not RESUME, evaluate=False)

# %% [markdown]
# ## Evaluate both models with one comparison
#
# Both runs are scored on the same held-out test patients. The operating threshold of
# each model is chosen on its validation patients; AUROC and AUPRC come with 95%
# patient-level bootstrap intervals, and a paired patient bootstrap compares the models.

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
# ## Next steps
#
# - Score your own images with a trained run:
#   `imgae-predict xray.png --run runs/quickstart/unet --out predictions`
#   (a heatmap overlay per image and `predictions.csv`).
# - Train on the full NIH ChestX-ray14: `nih_progressive_colab.ipynb` (Colab GPU/TPU)
#   or `nih_kaggle_notebook.ipynb` (Kaggle). From a terminal:
#   `imgae-train --config colab_gpu --model unet --stage images_001,images_002`.
