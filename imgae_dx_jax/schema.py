"""The configuration's schema: one frozen dataclass per section, and the allowed values.

:mod:`imgae_dx_jax.config` builds and validates a :class:`Config` from YAML files and
``--set`` overrides; this module only declares its shape. A new setting is a field here, its
default in ``configs/default.yaml`` and, where it has rules, a check in
:func:`imgae_dx_jax.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

MODELS = ("unet", "ra", "ae")
SOURCES = ("sample", "archive", "folder", "url", "kaggle", "imagefolder")
UNET_MODES = ("denoising", "reconstruction")
UNET_NOISES = ("coarse", "patch", "both")
OPTIMIZERS = ("adam", "adamw", "amsgrad")
LR_SCHEDULES = ("constant", "cosine")
SELECTIONS = ("auto", "last", "val_auroc")
STAGES = tuple(f"images_{i:03d}" for i in range(1, 13))
WANDB_MODES = ("online", "offline", "disabled")
FAST_PATHS = ("auto", "always", "never")
INTENSITIES = ("none", "minmax", "p99")
NIH_SOURCES = ("sample", "archive", "folder", "url", "kaggle")
"""Sources of the NIH layout, which come in stages (``data.stages``); the others are one stage."""
PRECISIONS = ("auto", "float32", "bf16")
SCORES = ("mean", "top25", "top10", "top5", "top1")
"""Candidate image scores (:mod:`imgae_dx_jax.inference`), simplest first: ``mean`` of the
anomaly map, ``top<k>`` the mean of its top k% pixels after a 5x5 median filter."""
THRESHOLD_RULES = ("specificity", "youden", "f1")
CACHE_OFF = "none"
"""``train.compilation_cache`` value that disables the persistent compilation cache."""
RA_MAPS = ("residual", "saliency")
"""Anomaly maps of the RA (``model.ra.anomaly_map``): the plain residual (the default, chosen
on validation patients), or the residual times the encoder saliency (the paper's form, with the
encoder standing in for LPIPS)."""
ENSEMBLE_MAPS = ("variance", "mean")
"""Anomaly maps of an AE ensemble (``model.ae.ensemble`` > 1): the per-pixel variance of the
members' mean images, or the average of the members' own maps."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and prepared."""

    source: str
    """``sample`` (the bundled NIH sample), ``archive`` (a local Kaggle-layout ZIP), ``folder``
    (an extracted Kaggle-layout tree), ``url`` (an http(s) URL of such a ZIP, streamed with Range
    requests), ``kaggle`` (a Kaggle dataset, streamed the same way) or ``imagefolder`` (a
    labelled class-folder tree, or a ZIP of one)."""
    path: str
    """The archive, folder or URL; the Kaggle dataset (default ``nih-chest-xrays/data``) for
    ``kaggle``; empty for ``sample``."""
    stages: tuple[str, ...]
    """NIH stages to use (``images_001`` .. ``images_012``); ignored by ``imagefolder``, whose
    tree is one stage."""
    image_size: int
    """Side of the square, single-channel training images in pixels."""
    split: tuple[float, float, float]
    """Train/validation/test fractions of *patients* when no official split list exists."""
    official_split: bool
    """Use the data's own split when it has one: NIH's ``test_list.txt`` as the test set, an
    image folder's top-level ``train/``, ``val/``, ``test/`` folders as the splits; false
    splits by patient with ``split`` and ``split_seed`` instead."""
    split_seed: int
    """Seed of the patient split."""
    num_threads: int
    """Decoding threads of the input pipeline."""
    cache: bool
    """Decode each stage once into a resized uint8 cache under ``cache_dir`` and train from it."""
    cache_dir: str
    """Directory of stage caches and of downloads from servers without Range support (a Drive
    path works on Colab)."""
    normal_classes: tuple[str, ...]
    """``imagefolder``: class folder names that are normal (case and separators ignored)."""
    patient_pattern: str
    """``imagefolder``: a regex searched in each file name; its first capture group (else the
    whole match) is the file's patient. Empty: every file is its own patient. NIH sources
    ignore it (their metadata names the patients)."""
    intensity: str
    """Per-image intensity normalisation of the model input (:mod:`imgae_dx_jax.data.intensity`):
    ``none``, ``minmax`` (1st..99th percentile to [0, 1]) or ``p99`` (divide by the 99th
    percentile)."""
    retries: int
    """``url``/``kaggle``: retries of each transient network failure (with backoff)."""
    timeout: float
    """``url``/``kaggle``: seconds to wait for a connection or for data."""


@dataclass(frozen=True)
class UNetConfig:
    """U-Net trained as a denoising autoencoder (coarse noise, foreign patches)."""

    widths: tuple[int, ...]
    """Channels per resolution level; the last one is the bottleneck."""
    groups: int
    """GroupNorm groups."""
    mode: str
    """``denoising`` (coarse noise, Kascenas et al. 2022) or ``reconstruction``."""
    noise_resolution: int
    """Side of the low-resolution Gaussian noise grid before bilinear upsampling."""
    noise_std: float
    """Standard deviation of the coarse noise."""
    noise_roll: bool
    """Roll the upsampled coarse noise by a random offset in x and y per batch, as Kascenas
    et al. do, so its grid is not aligned with the image grid."""
    noise: str
    """Denoising corruption: ``coarse`` (coarse noise, as Kascenas et al.), ``patch`` (foreign
    patch interpolation: a rectangle of another image of the batch blended in) or ``both``
    (the patch, then the coarse noise; the default)."""
    patches: int
    """Foreign patches blended into each image, one after the other (``noise`` ``patch`` or
    ``both``)."""
    patch_side: tuple[float, float]
    """Range of a foreign patch's height and width (each drawn uniformly in it), as fractions
    of the image side."""
    patch_alpha: tuple[float, float]
    """Range of a foreign patch's blending weight ``a`` (drawn uniformly in it): inside the
    patch the image becomes ``(1 - a) * x_i + a * x_j``."""
    uncertainty: bool
    """Decode a per-pixel log-variance too, train with the Gaussian NLL against the clean
    image and map ``(x - mu)^2 / exp(logvar)`` (the AE's uncertainty head, Mao et al.)."""
    dropped_skips: int
    """Leave out the skip connections of the finest ``dropped_skips`` resolution levels
    (0: the classic U-Net; ``len(widths) - 1``: no skip at all, a convolutional AE whose
    bottleneck is the last level's feature map)."""
    learning_rate: float
    """Learning rate (optimiser: ``train.optimizer``)."""
    validations_per_epoch: int
    """Validation points per epoch, evenly spaced, the last at the epoch's end: at each, the
    validation loss, with ``train.select_checkpoint`` ``val_auroc`` the validation AUROC (and
    the export when it is the best), and a checkpoint."""

    @property
    def downsamplings(self) -> int:
        """Factor-2 downsamplings: one between each pair of levels."""
        return len(self.widths) - 1


@dataclass(frozen=True)
class RAConfig:
    """Reversed Autoencoder (Bercea et al., MIDL 2023): a Soft-IntroVAE with residual blocks."""

    widths: tuple[int, ...]
    """Encoder channels per level (paper: 64, 128, 256, 512, 512)."""
    zdim: int
    """Latent dimension."""
    beta_rec: float
    beta_kl: float
    beta_neg: float
    gamma_r: float
    embedding_weight: float
    """Weight of the reversed multi-scale embedding loss in the encoder loss."""
    saliency_sigma: float
    """Gaussian smoothing (pixels) of the encoder-discrepancy saliency map."""
    anomaly_map: str
    """One of :data:`RA_MAPS`: ``residual`` (``|x - x_hat|``) or ``saliency`` (``|x - x_hat|``
    times the encoder saliency)."""
    learning_rate: float
    """Learning rate of both the encoder and the decoder optimiser."""
    validations_per_epoch: int
    """Validation points per epoch, evenly spaced, the last at the epoch's end: at each, the
    validation loss, with ``train.select_checkpoint`` ``val_auroc`` the validation AUROC (and
    the export when it is the best), and a checkpoint."""

    @property
    def downsamplings(self) -> int:
        """Factor-2 downsamplings: one after each encoder level."""
        return len(self.widths)


@dataclass(frozen=True)
class AEConfig:
    """Plain convolutional autoencoder with a dense bottleneck."""

    widths: tuple[int, ...]
    """Channels of the strided-conv encoder levels (mirrored by the decoder)."""
    latent_dim: int
    """Size of the dense bottleneck."""
    uncertainty: bool
    """Decode a per-pixel log-variance too, train with the Gaussian NLL and map
    ``(x - mu)^2 / exp(logvar)`` (Mao et al., MICCAI 2020)."""
    ensemble: int
    """Members of a deep ensemble: this many independently initialised autoencoders, trained
    together, each on its own loss; 1 is the single autoencoder."""
    ensemble_map: str
    """Anomaly map of an ensemble (one of :data:`ENSEMBLE_MAPS`): ``variance`` (per pixel, of
    the members' mean images: their disagreement) or ``mean`` (the average of the members'
    maps); unused with one member."""
    learning_rate: float
    """Learning rate (optimiser: ``train.optimizer``)."""
    validations_per_epoch: int
    """Validation points per epoch, evenly spaced, the last at the epoch's end: at each, the
    validation loss, with ``train.select_checkpoint`` ``val_auroc`` the validation AUROC (and
    the export when it is the best), and a checkpoint."""

    @property
    def downsamplings(self) -> int:
        """Factor-2 downsamplings: one strided convolution per level."""
        return len(self.widths)


@dataclass(frozen=True)
class ModelConfig:
    """Which model family to train, and the hyper-parameters of each family."""

    name: str
    unet: UNetConfig
    ra: RAConfig
    ae: AEConfig
    fast_path: str = "auto"
    """Layer implementations that XLA's CPU backend runs faster, same function and parameters
    (:mod:`imgae_dx_jax.models.layers`): ``auto`` (on the CPU backend only), ``always`` or
    ``never``."""

    @property
    def family(self) -> UNetConfig | RAConfig | AEConfig:
        """The section of the selected family (``model.<name>``)."""
        return getattr(self, self.name)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    epochs: int
    batch_size: int
    seed: int
    max_steps: int
    """The step budget: stop after this many optimiser steps in total (a cosine schedule
    decays to 0 at it); 0 means ``epochs`` times the steps per epoch of every stage."""
    log_every: int
    """Write a line to ``metrics.jsonl`` every this many steps."""
    checkpoint_every_steps: int
    """Also checkpoint every this many steps (0: only at the end of epochs and stages)."""
    checkpoint_every_minutes: float
    """Also checkpoint when this many minutes passed since the last save (0: never)."""
    keep_checkpoints: int
    """Keep the newest this many checkpoints (plus the best by validation loss)."""
    shard_params: bool
    """Shard parameters and optimiser state over the devices (FSDP style) instead of
    replicating them: for models too large to hold on every device."""
    optimizer: str
    """``adam``, ``adamw`` (decoupled weight decay) or ``amsgrad``, for every family."""
    weight_decay: float
    """Weight decay (L2 on the gradient for adam/amsgrad, decoupled for adamw)."""
    lr_schedule: str
    """``constant``, or ``cosine``: decay to 0 over the step budget (``max_steps``)."""
    select_checkpoint: str
    """The model that becomes the export (what evaluation and prediction load): ``last``,
    the model after the last step, or ``val_auroc``, the model at the validation point (of the
    last stage; ``model.<name>.validations_per_epoch``) whose validation AUROC is the highest;
    the validation patients' normal and abnormal images are scored at every validation point
    (:mod:`imgae_dx_jax.training.selection`)."""
    precision: str = "auto"
    """Computation dtype of the convolutions and linear layers while training: ``float32``,
    ``bf16`` (bfloat16) with float32 parameters, optimiser state, losses and outputs, or
    ``auto``: ``bf16`` where the devices have fast bfloat16 (TPU, A100, L4, H100, ...),
    ``float32`` elsewhere (CPU, T4, V100); see :mod:`imgae_dx_jax.runtime`."""
    compilation_cache: str = ""
    """Directory of JAX's persistent compilation cache, so that a restart loads the compiled
    steps instead of compiling them again: ``""`` for ``jax_compilation_cache`` in the data
    cache directory, ``none`` to disable it."""
    local_checkpoint_dir: str = ""
    """For a run directory on a slow or lazily synced mount (Google Drive on Colab): write
    checkpoints in a per-run directory under this local directory, and copy each finished one
    into ``<run>/checkpoints`` (a complete directory appears there by one rename). A new
    machine restores from the run directory alone. ``""`` writes them into the run directory
    directly. One process only."""


@dataclass(frozen=True)
class EvalConfig:
    """Scoring of the validation and test splits."""

    batch_size: int
    score: str
    """Image score: one of :data:`SCORES`, or ``auto`` for the candidate with the best
    validation AUROC (ties: the simplest)."""
    threshold: str
    """Operating threshold rule on the validation split: ``specificity``, ``youden``, ``f1``."""
    target_specificity: float
    """Fraction of validation normals below the threshold of the ``specificity`` rule."""
    border: float
    """Fraction of the image side left out at each edge when an image score is taken from its
    anomaly map (burned-in markers, collimation edges); 0 scores the whole map."""


@dataclass(frozen=True)
class RunConfig:
    """Where results go."""

    root: str
    """Directory of the runs: by default a run is ``<root>/<model>``, so that the same
    command continues the same run (``--run-dir`` names another)."""


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with Weights & Biases (the local ``metrics.jsonl`` is always written)."""

    wandb: str
    """``offline`` (write a local W&B run, no network), ``online`` (needs ``wandb login``) or
    ``disabled``."""
    project: str
    """W&B project name."""
    entity: str
    """W&B entity (user or team); empty for the account's default."""
    dir: str
    """Directory under which W&B writes ``wandb/``; empty for the run (or report) directory."""
    images_every: int
    """Log sample reconstructions every this many training steps (0: never)."""


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    run: RunConfig
    tracking: TrackingConfig
