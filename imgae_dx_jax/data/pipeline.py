"""grain input pipelines: read (stage cache or decode), shuffle, batch.

An :class:`ImageSource` reads each image from the stage cache when a complete one holds it
(:mod:`~imgae_dx_jax.data.cache`; built by :func:`~imgae_dx_jax.data.load_splits`), and
otherwise reads and decodes it from the store on the fly, on grain's reader threads.

Elements are dicts ``{"image": uint8[H, W, 1], "index": int32}`` where ``index`` points into
the split's records; batches stack them. Images stay uint8 until they reach the device.
Undecodable images are skipped and counted by reason (:class:`SkipLog`); a split in which
every image fails raises :class:`DataError`, never an empty or endless run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import grain
import numpy as np

from imgae_dx_jax.data.cache import StageCache, find_cache
from imgae_dx_jax.data.images import ImageDecodeError, decode_image
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.data.stores import Store
from imgae_dx_jax.errors import DataError


class SkipLog:
    """Thread-safe record of skipped images: each image counted once, by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skipped: dict[str, str] = {}

    def add(self, key: str, reason: str) -> None:
        """Record that ``key`` was skipped for ``reason``."""
        with self._lock:
            self._skipped.setdefault(key, reason)

    def by_reason(self) -> dict[str, int]:
        """Return the number of skipped images per reason."""
        with self._lock:
            return dict(Counter(self._skipped.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._skipped)


class ImageSource:
    """grain random-access source: record ``i`` -> decoded element, or ``None`` if it fails.

    Thread-safe. Images come from the store's stage caches when complete ones hold the records
    (looked up here, once), else they are decoded from the store on every read.
    """

    def __init__(
        self,
        records: Sequence[Record],
        store: Store,
        image_size: int,
        skips: SkipLog,
        caches: Sequence[StageCache] | None = None,
    ) -> None:
        """Create the source.

        Args:
            records: the images, in the order their ``index`` refers to.
            store: where their bytes are.
            image_size: side of the square output images.
            skips: where unreadable images are counted.
            caches: stage caches to read from; by default the complete caches of the records'
                stages found in ``store.cache_dir``.
        """
        self.records = tuple(records)
        self.store = store
        self.image_size = image_size
        self.skips = skips
        if caches is None:
            stages = sorted({r.stage for r in self.records})
            found = (
                find_cache(store, [r for r in self.records if r.stage == s], s, image_size)
                for s in stages
            )
            caches = [c for c in found if c is not None]
        self.caches = tuple(caches)
        where = {}
        for cache in self.caches:
            if cache.index.image_size == image_size:
                where.update({key: (cache, row) for key, row in cache.rows.items()})
        self._cached = tuple(where.get(r.key) for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def undecodable(self) -> dict[str, int]:
        """Images of the source that its stage caches found undecodable, by reason."""
        reasons = (
            cached[0].index.failed.get(record.key)
            for record, cached in zip(self.records, self._cached, strict=True)
            if cached is not None
        )
        return dict(Counter(r for r in reasons if r is not None))

    def __getitem__(self, index: int) -> dict[str, np.ndarray | np.int32] | None:
        record = self.records[index]
        cached = self._cached[index]
        if cached is not None:
            cache, row = cached
            reason = cache.index.failed.get(record.key)
            if reason is not None:
                self._skip(record.key, reason)
                return None
            return {"image": cache.read(row)[..., None], "index": np.int32(index)}
        try:
            data = self.store.read(record.member)
            image = decode_image(data, self.image_size)
        except ImageDecodeError as err:
            self._skip(record.key, err.reason)
            return None
        except (OSError, KeyError, ValueError, EOFError) as err:
            self._skip(record.key, f"unreadable ({type(err).__name__})")
            return None
        return {"image": image[..., None], "index": np.int32(index)}

    def _skip(self, key: str, reason: str) -> None:
        self.skips.add(key, reason)
        if len(self.skips) >= len(self.records):
            reasons = ", ".join(f"{n} {r}" for r, n in self.skips.by_reason().items())
            raise DataError(f"none of the {len(self.records)} images could be read ({reasons})")

    def __repr__(self) -> str:
        size = f"{self.image_size}px"
        cached = sum(c is not None for c in self._cached)
        return (
            f"ImageSource({len(self.records)} images ({cached} cached), {size}, "
            f"{self.store.description})"
        )


def _read_options(num_threads: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * num_threads)


def train_dataset(
    source: ImageSource,
    batch_size: int,
    seed: int,
    num_threads: int,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Endless stream of shuffled training batches (a new order every epoch).

    Args:
        source: the training images.
        batch_size: images per batch on this process; the last partial batch of the stream
            is never produced (``drop_remainder``) so every step has the same shape.
        seed: shuffle seed; the same seed gives the same stream.
        num_threads: decoding threads.
        shard: (index, count) of this process; each process reads a disjoint part.

    Raises:
        DataError: when the split has fewer images than one batch.
    """
    index, count = shard
    ds = grain.MapDataset.source(source)[index::count]
    if len(ds) < batch_size:
        failed = source.undecodable()
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(failed.items()))
        raise DataError(
            f"the training split has {len(ds)} images on this process, fewer than one batch "
            f"of {batch_size}; lower train.batch_size or add stages"
            + (f" (and {sum(failed.values())} of them cannot be decoded: {why})" if failed else "")
        )
    ds = ds.seed(seed).shuffle().repeat()
    return ds.to_iter_dataset(_read_options(num_threads)).batch(batch_size, drop_remainder=True)


def eval_dataset(
    source: ImageSource, batch_size: int, num_threads: int, shard: tuple[int, int] = (0, 1)
) -> grain.IterDataset:
    """All images of a split (of this process's ``shard``) in catalog order, in batches.

    The last batch may be smaller.
    """
    index, count = shard
    ds = grain.MapDataset.source(source)[index::count]
    return ds.to_iter_dataset(_read_options(num_threads)).batch(batch_size)
