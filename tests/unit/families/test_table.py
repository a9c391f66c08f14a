"""The family table is the one place that knows the families."""

from __future__ import annotations

import dataclasses

from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import FAMILIES
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
