"""Data: sources (where bytes are) -> catalog -> patient split -> stage cache -> grain pipeline."""

from __future__ import annotations

from imgae_dx_jax.data.cache import ensure_caches
from imgae_dx_jax.data.nih import Catalog
from imgae_dx_jax.data.sources import load_catalog, open_store
from imgae_dx_jax.data.split import Splits, split_catalog
from imgae_dx_jax.data.stores import Store
from imgae_dx_jax.errors import DataError
from imgae_dx_jax.schema import DataConfig

__all__ = ["Catalog", "DataError", "Splits", "Store", "load_splits"]


def load_splits(data: DataConfig) -> tuple[Store, Catalog, Splits]:
    """Open the configured data, catalog it, split it by patient and cache its stages.

    With ``data.cache`` (the default), every stage without a complete cache at
    ``data.image_size`` is decoded once into ``data.cache_dir`` here; the pipeline's
    :class:`~imgae_dx_jax.data.pipeline.ImageSource` then reads the cache.
    """
    store = open_store(data)
    catalog = load_catalog(store, data)
    splits = split_catalog(catalog, data.split, data.split_seed, data.official_split)
    ensure_caches(store, catalog, data.image_size, data.num_threads)
    return store, catalog, splits
