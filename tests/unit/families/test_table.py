"""The family table is the one place that knows the families."""

from __future__ import annotations

import dataclasses

from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import FAMILIES, compiler_options
from imgae_dx_jax.families.base import LOW_MEMORY_CPU
from imgae_dx_jax.schema import MODELS


def test_every_configurable_family_has_a_table_entry():
    assert set(FAMILIES) == set(MODELS)


def test_each_family_config_knows_its_downsamplings():
    model = load_config().model
    depths = {name: dataclasses.replace(model, name=name).family.downsamplings for name in MODELS}
    assert depths == {
        "unet": len(model.unet.widths) - 1,
        "ra": len(model.ra.widths),
        "ae": len(model.ae.widths),
    }


def test_compiler_options_apply_on_the_cpu_only():
    model = load_config().model
    options = {
        (name, platform): compiler_options(dataclasses.replace(model, name=name), platform)
        for name in MODELS
        for platform in ("cpu", "gpu", "tpu")
    }
    assert options == {
        ("unet", "cpu"): dict(LOW_MEMORY_CPU),
        ("ae", "cpu"): dict(LOW_MEMORY_CPU),
        **{key: None for key in options if key[0] == "ra" or key[1] != "cpu"},
    }
