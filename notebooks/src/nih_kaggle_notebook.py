# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # ImgAE-Dx JAX in a Kaggle notebook: NIH ChestX-ray14 from `/kaggle/input`
#
# Trains the chosen models on the normal images of the NIH ChestX-ray14 training
# patients, stage by stage, then evaluates them on the held-out test patients. Inside
# Kaggle the dataset is already extracted under `/kaggle/input/data`, so this notebook
# reads it as a `folder` source: **no credentials and no download**.
#
# **Runtime:** a Kaggle notebook with an accelerator (Settings → Accelerator: GPU T4 x2,
# GPU P100 or TPU VM; all local devices are used), **Internet on** (to pip install the
# package), and the dataset **NIH Chest X-rays** (`nih-chest-xrays/data`) added with
# "Add Input". The cell "Check the runtime" stops on a CPU-only session.
#
# **Resume:** runs go to `/kaggle/working/imgae_dx_jax/runs`, which Kaggle keeps as the
# notebook's output when you "Save Version". Re-running cells in the same session
# continues where training stopped. To continue in a new session, add this
# notebook's previous output as an input and set `RESUME_FROM` to its `runs`
# folder: it is copied to `/kaggle/working` first.
#
# **Full dataset:** set `STAGES = "all"` (12 stages, 112,120 images; NIH's official
# test list defines the test patients). A Kaggle session is limited to 12 hours
# (GPU quota 30 h/week), so train a few stages per session and resume.

# %% [markdown]
# ## Parameters
#
# This cell is tagged `parameters` (papermill). The packaged `nih_kaggle` config sets
# the `folder` source at `/kaggle/input/data`, image size 128, batch size 64 and the
# cache directory. `DATA_DIR = ""` finds the folder holding `Data_Entry_2017.csv`
# under `INPUT_DIR`, where Kaggle puts the notebook's inputs (`/kaggle/input`).
# `SETTINGS` takes any `--set key=value` override.
#
# `PACKAGE` empty (the default): the install cell installs the newest `imgae_dx_jax-*.whl` under
# `INPUT_DIR` (upload it as a dataset and add it with Add Input). Build the wheel with
# `hatch run dist` in a checkout (`dist/imgae_dx_jax-*.whl`, also inside
# `dist/imgae-dx-jax-colab.zip` with these notebooks). Or set `PACKAGE` to what pip should
# install: a git URL of the repository (pip's `git+https://...` form), the path of a source
# checkout, or the path of a wheel. Nothing is installed by name from the package index.

# %% tags=["parameters"]
STAGES = ["images_001", "images_002"]  # NIH stages in training order, or "all"
MODELS = ["unet", "ra"]  # unet, ra, ae: each gets its own run
EPOCHS = 5  # epochs per stage
IMAGE_SIZE = 128
BATCH_SIZE = 0  # 0 = the config's (64)
MAX_STEPS = 0  # stop each model after this many steps; 0 = no limit
CONFIG = "nih_kaggle"  # packaged config name or a YAML path
INPUT_DIR = "/kaggle/input"  # the notebook's inputs: the NIH dataset, the wheel
DATA_DIR = "/kaggle/input/data"  # "" = find Data_Entry_2017.csv under INPUT_DIR
WORK_DIR = "/kaggle/working/imgae_dx_jax"  # runs (kept as the notebook's output)
CACHE_DIR = "/tmp/imgae_dx_jax/cache"  # decoded stage caches (rebuilt quickly)
RUN_NAME = "nih"  # runs go to WORK_DIR/runs/RUN_NAME/<model>
RESUME_FROM = ""  # runs/ folder of a previous version's output
SETTINGS: list[str] = []  # more config overrides, "key=value" as for --set
BOOTSTRAP = 1000  # bootstrap resamples for the 95% CIs
WANDB = "disabled"  # Weights & Biases: disabled | offline | online
ALLOW_CPU = False  # True: run on a CPU session anyway (slow)
PACKAGE = ""  # what pip installs; "" = newest wheel in INPUT_DIR

# %% [markdown]
# ## Install

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

WHEELS = [str(Path(INPUT_DIR) / "*" / "*.whl")]

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
# ## Find the data


# %%
def find_nih(root: Path) -> Path:
    """The attached dataset folder: the one holding Data_Entry_2017.csv."""
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

# %% [markdown]
# ## Weights & Biases (optional; the API key from the Kaggle secret WANDB_API_KEY)

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
# ## Check the runtime

# %%
import jax

from imgae_dx_jax.api import setup_logging

setup_logging(debug=False)  # progress and INFO logs of imgae_dx_jax in the cell outputs
devices = jax.devices()
PLATFORM = devices[0].platform
print(f"JAX {jax.__version__}: {len(devices)} {PLATFORM} device(s): {devices}")
print("Expected runtime: Kaggle GPU (T4 x2 or P100) or TPU VM")
if PLATFORM == "cpu":
    message = (
        "This notebook expects an accelerator: Settings -> Accelerator -> GPU or TPU. "
        "Set ALLOW_CPU = True to run on the CPU anyway (very slow at 128x128)."
    )
    if not ALLOW_CPU:
        raise RuntimeError(message)
    print("WARNING:", message)

# %% [markdown]
# ## Train, stage by stage
#
# Each model trains `EPOCHS` epochs on each stage in `STAGES`, in order; the model and
# optimiser carry over between stages. Re-running resumes from the newest checkpoint
# in `RUN_ROOT/<model>` and skips what is done.

# %%
import shlex

from imgae_dx_jax.api import parse_stages, train_and_evaluate
from imgae_dx_jax.config import load_config

stages = parse_stages(STAGES) if isinstance(STAGES, str) else list(STAGES)
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
# Writes the report to `RUN_ROOT/report/` (`report.html`, `report.md`,
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
