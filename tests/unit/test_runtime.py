"""Precision ``auto`` and the persistent compilation cache (imgae_dx_jax.runtime)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from types import SimpleNamespace

import pytest

from imgae_dx_jax.config import ConfigError, load_config, user_cache_dir
from imgae_dx_jax.runtime import (
    CACHE_SUBDIR,
    compilation_cache_dir,
    fast_bf16,
    resolve_precision,
    training_precision,
)


@pytest.mark.parametrize(
    ("platform", "kind", "capability", "fast"),
    [
        ("tpu", "TPU v2", None, True),
        ("tpu", "TPU v5 lite", None, True),
        ("gpu", "NVIDIA A100-SXM4-40GB", None, True),
        ("gpu", "NVIDIA H100 80GB HBM3", None, True),
        ("gpu", "NVIDIA H200", None, True),
        ("gpu", "NVIDIA L4", None, True),
        ("gpu", "NVIDIA L40S", None, True),
        ("gpu", "NVIDIA A10G", None, True),
        ("gpu", "NVIDIA GeForce RTX 3090", None, True),
        ("gpu", "NVIDIA GeForce RTX 4070 Ti", None, True),
        ("gpu", "Tesla T4", None, False),
        ("gpu", "Tesla V100-SXM2-16GB", None, False),
        ("gpu", "Tesla P100-PCIE-16GB", None, False),
        ("gpu", "NVIDIA GeForce RTX 2080", None, False),
        ("cpu", "cpu", None, False),
        # The compute capability, when JAX reports it, decides over the name.
        ("gpu", "Some future GPU", "9.0", True),
        ("gpu", "NVIDIA A100-SXM4-40GB", "7.5", False),
        ("cuda", "Tesla T4", "7.5", False),
    ],
)
def test_fast_bf16_by_device_kind(platform, kind, capability, fast):
    assert fast_bf16(platform, kind, capability) is fast


def test_auto_precision_needs_every_device_fast():
    assert resolve_precision("auto", "tpu", ["TPU v3"] * 8, [None] * 8) == "bf16"
    assert resolve_precision("auto", "gpu", ["Tesla T4"] * 2, [None] * 2) == "float32"
    assert resolve_precision("auto", "gpu", ["NVIDIA L4", "Tesla T4"], [None, None]) == "float32"
    assert resolve_precision("auto", "cpu", ["cpu"], [None]) == "float32"
    assert resolve_precision("auto", "gpu", [], []) == "float32"
    # An explicit setting is kept, whatever the devices.
    assert resolve_precision("bf16", "cpu", ["cpu"], [None]) == "bf16"
    assert resolve_precision("float32", "tpu", ["TPU v3"], [None]) == "float32"


def test_training_precision_logs_backend_and_device_kinds(caplog):
    devices = [SimpleNamespace(device_kind="Tesla T4", platform="gpu", compute_capability="7.5")]
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        assert training_precision("auto", devices * 2) == "float32"
    assert "precision float32 (auto); backend gpu, devices: Tesla T4 x2" in caplog.text


def test_precision_defaults_to_auto_and_colab_gpu_uses_it():
    assert load_config().train.precision == "auto"
    assert load_config("colab_gpu").train.precision == "auto"
    with pytest.raises(ConfigError, match=r"train\.precision.*auto"):
        load_config(None, ["train.precision=fp16"])


def test_compilation_cache_dir_follows_the_data_cache(tmp_path):
    config = load_config()
    assert compilation_cache_dir(config) == user_cache_dir() / CACHE_SUBDIR
    data = replace(config.data, cache_dir=str(tmp_path / "data"))
    config = replace(config, data=data)
    assert compilation_cache_dir(config) == tmp_path / "data" / CACHE_SUBDIR
    off = load_config(None, ["train.compilation_cache=none"])
    assert compilation_cache_dir(off) is None
    chosen = load_config(None, [f"train.compilation_cache={tmp_path / 'cc'}"])
    assert compilation_cache_dir(chosen) == tmp_path / "cc"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"train\.compilation_cache"):
        load_config(None, [f"train.compilation_cache={tmp_path / 'file'}"])


COMPILE = """
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from imgae_dx_jax.runtime import enable_compilation_cache

jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()  # compiled before a cache is set
enable_compilation_cache(Path(sys.argv[1]), min_compile_seconds=0.0)
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(4)).block_until_ready()
enable_compilation_cache(Path(sys.argv[2]), min_compile_seconds=0.0)  # another directory
jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5)).block_until_ready()
"""


def test_compiled_functions_land_in_the_cache_directory(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    script = textwrap.dedent(COMPILE)
    subprocess.run(
        [sys.executable, "-c", script, str(first), str(second)],
        check=True,
        timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )

    def lambdas(directory):
        return [p.name for p in directory.iterdir() if p.name.startswith("jit__lambda")]

    # The function compiled before a cache was set is not cached; the next one is, and after
    # the switch the third one goes to the second directory.
    assert len(lambdas(first)) == 1, lambdas(first)
    assert len(lambdas(second)) == 1, lambdas(second)
