"""JAX runtime settings chosen from the config: the training precision and the compile cache.

``train.precision: auto`` picks bfloat16 where the devices have fast bfloat16 units (TPUs;
NVIDIA GPUs of compute capability 8.0 or newer: A100, A10, L4, L40, H100, H200, RTX 30xx and
40xx) and float32 elsewhere (CPU, T4, V100, P100), where bfloat16 is emulated and slower.

``train.compilation_cache`` points JAX's persistent compilation cache at a directory (by
default ``jax_compilation_cache`` in the data cache directory), so that a second start of the
same config, a resume or a new Colab session loads the compiled steps instead of compiling
them again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from imgae_dx_jax.config import cache_dir_of
from imgae_dx_jax.errors import ConfigError
from imgae_dx_jax.schema import CACHE_OFF, Config

log = logging.getLogger(__name__)

CACHE_SUBDIR = "jax_compilation_cache"
MIN_COMPILE_SECONDS = 1.0
"""Computations that compile faster than this are not written to the cache."""

_FAST_BF16_KINDS = re.compile(
    r"\b(A100|A10G?|A30|A40|A800|H100|H200|H800|GH200|B100|B200|GB200|L4|L40S?)\b"
    r"|RTX ?[34]0\d\d|RTX A\d{4}|RTX \d{4} Ada",
    re.IGNORECASE,
)


def fast_bf16(platform: str, device_kind: str, compute_capability: str | None = None) -> bool:
    """Whether a device computes bfloat16 natively (faster than float32).

    Args:
        platform: ``cpu``, ``gpu``, ``cuda``, ``rocm`` or ``tpu`` (``jax.Device.platform``).
        device_kind: ``jax.Device.device_kind``, e.g. ``Tesla T4`` or ``NVIDIA A100-SXM4-40GB``.
        compute_capability: an NVIDIA GPU's ``major.minor`` when JAX reports it; it decides
            over the name (8.0 and newer have bfloat16 tensor cores).

    Returns:
        True for TPUs and recent NVIDIA GPUs, False otherwise.
    """
    if platform == "tpu":
        return True
    if platform not in ("gpu", "cuda"):
        return False
    if compute_capability:
        return int(compute_capability.split(".")[0]) >= 8
    return _FAST_BF16_KINDS.search(device_kind) is not None


def resolve_precision(
    setting: str, platform: str, device_kinds: Sequence[str], capabilities: Sequence[str | None]
) -> str:
    """Resolve ``train.precision``: ``auto`` becomes ``bf16`` or ``float32``.

    Args:
        setting: ``auto``, ``bf16`` or ``float32``; the latter two are returned unchanged.
        platform: the backend's platform.
        device_kinds: the kind of every device used.
        capabilities: their compute capabilities (None where unknown), in the same order.

    Returns:
        ``bf16`` when every device has fast bfloat16 (and there is at least one), else
        ``float32``.
    """
    if setting != "auto":
        return setting
    fast = [
        fast_bf16(platform, kind, capability)
        for kind, capability in zip(device_kinds, capabilities, strict=True)
    ]
    return "bf16" if fast and all(fast) else "float32"


def training_precision(setting: str, devices: Sequence[jax.Device] | None = None) -> str:
    """Resolve ``train.precision`` for ``devices`` (default: all of them) and log the choice.

    Returns:
        ``bf16`` or ``float32``.
    """
    devices = list(jax.devices() if devices is None else devices)
    kinds = [d.device_kind for d in devices]
    capabilities = [getattr(d, "compute_capability", None) for d in devices]
    platform = devices[0].platform if devices else jax.default_backend()
    precision = resolve_precision(setting, platform, kinds, capabilities)
    log.info(
        "precision %s%s; backend %s, devices: %s",
        precision,
        " (auto)" if setting == "auto" else "",
        platform,
        ", ".join(f"{kind} x{kinds.count(kind)}" for kind in dict.fromkeys(kinds)),
    )
    return precision


def compilation_cache_dir(config: Config) -> Path | None:
    """The directory of ``train.compilation_cache``; None when it is ``none``.

    ``""`` means ``jax_compilation_cache`` in the data cache directory (``data.cache_dir``, or
    the per-user cache directory when that is empty).
    """
    setting = config.train.compilation_cache
    if setting == CACHE_OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    return cache_dir_of(config.data) / CACHE_SUBDIR


def enable_compilation_cache(
    directory: Path | None, min_compile_seconds: float = MIN_COMPILE_SECONDS
) -> None:
    """Point JAX's persistent compilation cache at ``directory`` (None: leave it as it is).

    Safe to call again: the same directory changes nothing, another one replaces it (also
    after computations were compiled without a cache, e.g. earlier cells of a notebook).

    Args:
        directory: created if missing.
        min_compile_seconds: computations compiled faster than this are not cached.

    Raises:
        ConfigError: when ``directory`` cannot be created (a path under a file, or where
            nothing can be written).
    """
    if directory is None:
        return
    path = str(directory)
    current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]  # a flag
    if current == path:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot write the JAX compilation cache in {directory}: {err}; set "
            f"data.cache_dir (--cache-dir) or train.compilation_cache to a writable directory, "
            f"or train.compilation_cache={CACHE_OFF}"
        ) from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # else JAX keeps the cache opened on the previous directory
    log.info("JAX compilation cache: %s", path)


def setup_compilation_cache(config: Config) -> None:
    """Enable the persistent compilation cache that ``config`` asks for."""
    enable_compilation_cache(compilation_cache_dir(config))
