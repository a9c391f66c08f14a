"""Typed run configuration: YAML files, ``--set key=value`` overrides and validation.

One :class:`Config` is built once per run by :func:`load_config` and passed down. Every value
comes from the packaged ``configs/default.yaml`` (the single source of defaults), then an
optional user file, then ``--set`` overrides, in that order. Any problem -- an unknown key, a
value of the wrong type, an impossible setting -- raises :class:`ConfigError` naming the key,
the file (or ``--set``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imgae_dx_jax.errors import ConfigError
from imgae_dx_jax.schema import (
    CACHE_OFF,
    ENSEMBLE_MAPS,
    FAST_PATHS,
    INTENSITIES,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
    RA_MAPS,
    SCORES,
    SELECTIONS,
    SOURCES,
    STAGES,
    THRESHOLD_RULES,
    UNET_MODES,
    UNET_NOISES,
    WANDB_MODES,
    Config,
    DataConfig,
)


def parse_stages(text: str) -> list[str]:
    """``images_001,images_002`` or ``all`` -> stage names (validated by the config)."""
    if text.strip().lower() == "all":
        return list(STAGES)
    return [s.strip() for s in text.split(",") if s.strip()]


def user_cache_dir() -> Path:
    """The per-user cache directory: ``$XDG_CACHE_HOME/imgae_dx_jax`` or ``~/.cache/...``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "imgae_dx_jax"


def cluster_detected() -> bool:
    """Whether this process is one of several launched by SLURM or on a multi-host TPU slice."""
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return slurm or len(tpu_hosts) > 1


def cache_dir_of(data: DataConfig) -> Path:
    """The cache directory: ``data.cache_dir`` expanded, or :func:`user_cache_dir` if empty.

    It holds the stage caches, downloads and (by default) the compiled steps.
    """
    return Path(data.cache_dir).expanduser() if data.cache_dir else user_cache_dir()


def default_config_path() -> Path:
    """Return the path of the packaged ``default.yaml``."""
    return Path(str(resources.files("imgae_dx_jax") / "configs" / "default.yaml"))


def resolve_config_file(name: str) -> Path:
    """Find a config file by path, or by the name of a packaged config (``colab_gpu``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    packaged = Path(str(resources.files("imgae_dx_jax") / "configs"))
    for candidate in (packaged / name, packaged / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in packaged.rglob("*.yaml"))
    if path.is_dir():
        raise ConfigError(f"config file {name!r} is a directory; give a YAML file")
    raise ConfigError(f"config file {name!r} not found (packaged configs: {', '.join(available)})")


def load_config(file: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build the run configuration.

    Args:
        file: optional YAML file (path or packaged config name) layered over the defaults.
        overrides: ``key=value`` strings with dotted keys, applied last.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the key, the file or ``--set``, and what is allowed.
    """
    default = default_config_path()
    tree = _read_yaml(default)
    origins = _origins(tree, str(default))
    if file is not None:
        path = resolve_config_file(file)
        user = _read_yaml(path)
        _merge(tree, user, origins, str(path), prefix="")
    for item in overrides:
        key, value = parse_override(item)
        _merge(tree, _nest(key, value), origins, "--set", prefix="")
    config = _build(Config, tree, origins, prefix="")
    validate(config, origins)
    return config


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the YAML-parsed value."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(
            f"--set {item!r}: expected key=value with a dotted key, e.g. train.epochs=3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    return key, value


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Return ``config`` with dotted-key overrides applied and validated again."""
    tree = to_dict(config)
    origins = _origins(tree, "defaults")
    for key, value in overrides.items():
        _merge(tree, _nest(key, value), origins, "--set", prefix="")
    new = _build(Config, tree, origins, prefix="")
    validate(new, origins)
    return new


def to_dict(config: Any) -> dict[str, Any]:
    """Convert a config dataclass to plain YAML-friendly dicts and lists."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out[field.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out


def from_dict(tree: Mapping[str, Any], origin: str) -> Config:
    """Rebuild and validate a :class:`Config` from :func:`to_dict` output (e.g. a run's YAML)."""
    tree = dict(tree)
    origins = _origins(tree, origin)
    config = _build(Config, tree, origins, prefix="")
    validate(config, origins)
    return config


def validate(config: Config, origins: Mapping[str, str] | None = None) -> None:
    """Check the settings that types alone cannot; raise :class:`ConfigError` on the first."""
    origins = origins or {}

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{origins.get(key, 'config')}: {key}: {message}")

    def one_of(key: str, value: str, choices: Sequence[str], noun: str) -> None:
        if value not in choices:
            fail(key, f"unknown {noun} {value!r}; choose one of {', '.join(choices)}")

    d, m, t = config.data, config.model, config.train
    one_of("model.name", m.name, MODELS, "model")
    one_of("data.source", d.source, SOURCES, "source")
    if d.source not in ("sample", "kaggle") and not d.path:
        fail("data.source", f"source {d.source!r} needs data.path (--data) to be set")
    if d.source == "url" and not re.match(r"https?://", d.path):
        fail("data.path", f"source 'url' needs an http(s) URL, got {d.path!r}")
    if d.source == "imagefolder" and not d.normal_classes:
        fail("data.normal_classes", "name at least one normal class folder")
    try:
        re.compile(d.patient_pattern)
    except re.error as err:
        fail("data.patient_pattern", f"not a valid regular expression {d.patient_pattern!r}: {err}")
    one_of("data.intensity", d.intensity, INTENSITIES, "mode")
    if d.retries < 0:
        fail("data.retries", "must be >= 0")
    if d.timeout <= 0:
        fail("data.timeout", "must be > 0 seconds")
    if not d.stages:
        fail("data.stages", "at least one stage is needed (e.g. [images_001])")
    for stage in d.stages:
        if stage not in STAGES:
            hint = " (all twelve: list them, or --stage all on the command line)"
            fail(
                "data.stages",
                f"unknown stage {stage!r}; stages are images_001 .. images_012"
                + (hint if stage == "all" else ""),
            )
    if len(d.split) != 3 or any(f < 0 for f in d.split) or abs(sum(d.split) - 1) > 1e-6:
        fail("data.split", f"three non-negative fractions summing to 1 expected, got {d.split}")
    if min(d.split) <= 0:
        fail("data.split", "every split needs a positive fraction of patients")
    if d.num_threads < 1:
        fail("data.num_threads", "must be >= 1")
    depth = m.family.downsamplings
    if d.image_size < 16 or d.image_size % (2**depth):
        fail(
            "data.image_size",
            f"{d.image_size} must be >= 16 and divisible by 2^{depth} = {2**depth} "
            f"(the {m.name} model downsamples {depth} times)",
        )
    for family in MODELS:
        widths = getattr(m, family).widths
        if not widths or any(w < 1 for w in widths):
            fail(f"model.{family}.widths", "a non-empty list of positive channel counts expected")
        if getattr(m, family).learning_rate <= 0:
            fail(f"model.{family}.learning_rate", "must be > 0")
        if getattr(m, family).validations_per_epoch < 1:
            fail(f"model.{family}.validations_per_epoch", "must be >= 1")
    one_of("model.fast_path", m.fast_path, FAST_PATHS, "value")
    one_of("model.unet.mode", m.unet.mode, UNET_MODES, "mode")
    if m.unet.groups < 1:
        fail("model.unet.groups", f"must be >= 1 (GroupNorm groups), got {m.unet.groups}")
    for w in m.unet.widths:
        if w % m.unet.groups:
            fail("model.unet.groups", f"{m.unet.groups} groups do not divide {w} channels")
    if not 1 <= m.unet.noise_resolution <= d.image_size:
        fail("model.unet.noise_resolution", f"must be between 1 and the image size {d.image_size}")
    one_of("model.unet.noise", m.unet.noise, UNET_NOISES, "noise")
    if m.unet.patches < 1:
        fail("model.unet.patches", "must be at least 1")
    if not 0 < m.unet.patch_side[0] <= m.unet.patch_side[1] <= 1:
        fail("model.unet.patch_side", "must be [low, high] with 0 < low <= high <= 1")
    if not 0 <= m.unet.patch_alpha[0] <= m.unet.patch_alpha[1] <= 1:
        fail("model.unet.patch_alpha", "must be [low, high] with 0 <= low <= high <= 1")
    if not 0 <= m.unet.dropped_skips < len(m.unet.widths):
        fail(
            "model.unet.dropped_skips",
            f"must be between 0 and {len(m.unet.widths) - 1} (the U-Net's skip connections)",
        )
    if m.ae.latent_dim < 1 or m.ra.zdim < 1:
        fail("model.ae.latent_dim" if m.ae.latent_dim < 1 else "model.ra.zdim", "must be >= 1")
    if m.ae.ensemble < 1:
        fail("model.ae.ensemble", "must be >= 1 (1 = a single autoencoder)")
    one_of("model.ra.anomaly_map", m.ra.anomaly_map, RA_MAPS, "map")
    one_of("model.ae.ensemble_map", m.ae.ensemble_map, ENSEMBLE_MAPS, "map")
    for key, value in (
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.log_every", t.log_every),
        ("eval.batch_size", config.eval.batch_size),
    ):
        if value < 1:
            fail(key, "must be >= 1")
    if t.max_steps < 0:
        fail("train.max_steps", "must be >= 0 (0 = no limit)")
    if t.checkpoint_every_steps < 0 or t.checkpoint_every_minutes < 0:
        key = "train.checkpoint_every_" + ("steps" if t.checkpoint_every_steps < 0 else "minutes")
        fail(key, "must be >= 0 (0 = off)")
    if t.keep_checkpoints < 1:
        fail("train.keep_checkpoints", "must be >= 1")
    one_of("train.optimizer", t.optimizer, OPTIMIZERS, "optimizer")
    if t.weight_decay < 0:
        fail("train.weight_decay", "must be >= 0")
    one_of("train.lr_schedule", t.lr_schedule, LR_SCHEDULES, "schedule")
    one_of("train.select_checkpoint", t.select_checkpoint, SELECTIONS, "value")
    one_of("train.precision", t.precision, PRECISIONS, "precision")
    cache = t.compilation_cache
    if cache not in ("", CACHE_OFF) and Path(cache).expanduser().is_file():
        fail(
            "train.compilation_cache",
            f'{cache!r} is a file; give a directory, "" (the default) or {CACHE_OFF}',
        )
    if t.local_checkpoint_dir and Path(t.local_checkpoint_dir).expanduser().is_file():
        fail(
            "train.local_checkpoint_dir",
            f'{t.local_checkpoint_dir!r} is a file; give a directory, or "" (the default) for none',
        )
    e = config.eval
    one_of("eval.score", e.score, ("auto", *SCORES), "score")
    one_of("eval.threshold", e.threshold, THRESHOLD_RULES, "rule")
    if not 0.0 < e.target_specificity < 1.0:
        fail("eval.target_specificity", f"must be in (0, 1), got {e.target_specificity}")
    if not 0.0 <= e.border < 0.5:
        fail("eval.border", f"must be in [0, 0.5), got {e.border}")
    one_of("tracking.wandb", config.tracking.wandb, WANDB_MODES, "mode")
    if not config.tracking.project:
        fail("tracking.project", "a W&B project name is needed")
    if config.tracking.images_every < 0:
        fail("tracking.images_every", "must be >= 0 (0 = never)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last value of a repeated key: a second ``train:`` section would drop the
    whole first one without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return loaded


def _origins(tree: Mapping[str, Any], origin: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out[dotted] = origin
        if isinstance(value, Mapping):
            out.update(_origins(value, origin, f"{dotted}."))
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _merge(
    tree: dict[str, Any],
    update: Mapping[str, Any],
    origins: dict[str, str],
    origin: str,
    prefix: str,
) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in tree:
            section = prefix.rstrip(".") or "the top level"
            allowed = ", ".join(sorted(tree))
            raise ConfigError(f"{origin}: unknown key {dotted!r} (allowed in {section}: {allowed})")
        if isinstance(tree[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{origin}: {dotted}: expected a section (mapping), got {value!r}"
                )
            _merge(tree[key], value, origins, origin, f"{dotted}.")
        else:
            tree[key] = value
            origins[dotted] = origin


def _build(cls: type, tree: Mapping[str, Any], origins: Mapping[str, str], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            origin = origins.get(f"{prefix}{key}", "config")
            raise ConfigError(
                f"{origin}: unknown key {prefix}{key!r} (allowed: {', '.join(sorted(names))})"
            )
    for field in dataclasses.fields(cls):
        dotted = f"{prefix}{field.name}"
        if field.name not in tree:
            raise ConfigError(
                f"{origins.get(prefix.rstrip('.'), 'config')}: missing key {dotted!r}"
            )
        value = tree[field.name]
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origins.get(dotted, 'config')}: {dotted}: expected a section")
            kwargs[field.name] = _build(hint, value, origins, f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[field.name] = _coerce(value, hint, dotted, origins.get(dotted, "config"))
    return cls(**kwargs)


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{origin}: {key}: expected {expected}, got {value!r}")

    origin_type = typing.get_origin(hint)
    if origin_type is tuple:
        args = typing.get_args(hint)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, origin) for v in value)
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, key, origin) for v, a in zip(value, args, strict=True))
    if isinstance(hint, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise bad("an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan and .inf
                raise bad("a finite number")
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        raise bad("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    raise TypeError(f"unsupported config type {hint}")
