"""Data: stores (where bytes are) -> NIH catalog -> patient split -> grain pipeline."""

from __future__ import annotations

from imgae_dx_jax.config import DataConfig
from imgae_dx_jax.data.nih import Catalog, build_catalog
from imgae_dx_jax.data.split import Splits, split_catalog
from imgae_dx_jax.data.stores import DataError, Store, open_store

__all__ = ["Catalog", "DataError", "Splits", "Store", "load_splits"]


def load_splits(data: DataConfig) -> tuple[Store, Catalog, Splits]:
    """Open the configured data, catalog its stages and split it by patient."""
    store = open_store(data)
    catalog = build_catalog(store, data.stages)
    splits = split_catalog(catalog, data.split, data.split_seed, data.official_split)
    return store, catalog, splits
