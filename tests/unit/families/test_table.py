"""The family table is the one place that knows the families."""

from __future__ import annotations

import dataclasses

import jax

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
    lean = compiler_options(dataclasses.replace(model, name="ae"), "cpu")
    assert lean is None or lean == dict(LOW_MEMORY_CPU)
    assert options == {
        ("unet", "cpu"): lean,
        ("ae", "cpu"): lean,
        **{key: None for key in options if key[0] == "ra" or key[1] != "cpu"},
    }


def test_options_the_installed_xla_does_not_know_are_left_out(monkeypatch):
    """jaxlib releases drop options (jax 0.12: ``xla_cpu_use_fusion_emitters``); a step must
    still compile there, with the options that remain."""
    known = {"xla_cpu_parallel_codegen_split_count": 2}
    family = dataclasses.replace(
        FAMILIES["ae"], cpu_compiler_options={**known, "xla_cpu_no_such_option": True}
    )
    monkeypatch.setitem(FAMILIES, "ae", family)
    model = dataclasses.replace(load_config().model, name="ae")
    options = compiler_options(model, "cpu")
    assert options == known
    assert jax.jit(lambda x: 2 * x, compiler_options=options)(1.0) == 2.0
