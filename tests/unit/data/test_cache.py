"""Stage cache: decode once, reuse across epochs and runs, rebuild on change, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.cache import build_cache, ensure_caches, find_cache
from imgae_dx_jax.data.images import decode_image
from imgae_dx_jax.data.nih import build_catalog
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, train_dataset
from imgae_dx_jax.data.stores import sample_archive_path


class CountingStore(ZipStore):
    """The sample archive, counting every member it reads."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(sample_archive_path(), cache_dir=cache_dir)
        self.reads = 0
        self._lock = threading.Lock()

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self.reads += n

    def read(self, name: str) -> bytes:
        self._count()
        return super().read(name)

    def read_many(self, names: Iterable[str], workers: int = 4) -> Iterator[tuple[str, bytes]]:
        for item in super().read_many(names, workers):
            self._count()
            yield item


@pytest.fixture(scope="module")
def catalog():
    full = build_catalog(ZipStore(sample_archive_path()), ("images_001",))
    return type(full)(full.records[:200], full.stages, None)


def test_second_epoch_reads_only_the_cache(tmp_path, catalog):
    store = CountingStore(tmp_path)
    ensure_caches(store, catalog, 32, 2)
    assert store.reads == len(catalog.records)  # one decode per image
    normals = [r for r in catalog.records if r.label == 0][:60]
    source = ImageSource(normals, store, 32, SkipLog())
    it = iter(train_dataset(source, 10, seed=0, num_threads=2))
    epoch = len(normals) // 10
    seen = [next(it)["index"] for _ in range(2 * epoch)]
    assert store.reads == len(catalog.records)  # both epochs from the cache
    assert sorted(np.concatenate(seen[:epoch]).tolist()) == list(range(60))
    record = normals[3]
    np.testing.assert_array_equal(
        source[3]["image"][..., 0], decode_image(store.read(record.member), 32)
    )
    ensure_caches(store, catalog, 32, 2)  # a later run: nothing to do
    assert store.reads == len(catalog.records) + 1


def test_changed_size_or_source_rebuilds(tmp_path, catalog):
    store = CountingStore(tmp_path)
    ensure_caches(store, catalog, 32, 2)
    ensure_caches(store, catalog, 64, 2)
    assert store.reads == 2 * len(catalog.records)
    assert len(list(tmp_path.glob("images_001-32px-*.npy"))) == 1
    assert find_cache(store, catalog.records, "images_001", 64) is not None
    changed = type(catalog)(catalog.records[:150], catalog.stages, None)  # other images
    assert find_cache(store, changed.records, "images_001", 32) is not None  # a subset is held
    renamed = [type(r)(**{**r.__dict__, "key": "x" + r.key}) for r in catalog.records[:5]]
    assert find_cache(store, renamed, "images_001", 32) is None
    other = type(catalog)(catalog.records[50:], catalog.stages, None)
    ensure_caches(store, other, 32, 2)  # a different stage content: a new cache replaces the old
    assert len(list(tmp_path.glob("images_001-32px-*.npy"))) == 1


def test_decode_failures_are_remembered(tmp_path, catalog):
    class Broken(CountingStore):
        def read_many(self, names, workers=4):
            for name, data in super().read_many(names, workers):
                yield name, (b"garbage" if name == catalog.records[1].member else data)

    store = Broken(tmp_path)
    build_cache(store, catalog.records[:4], "images_001", 32, 2)
    skips = SkipLog()
    source = ImageSource(catalog.records[:4], store, 32, skips)
    assert source[1] is None and source[2] is not None
    assert skips.by_reason() == {"not_an_image": 1} and store.reads == 4


def test_building_shows_images_and_megabytes_per_second(tmp_path, catalog, bars):
    build_cache(CountingStore(tmp_path), catalog.records[:37], "images_001", 32, 2)
    (bar,) = bars
    assert (bar.desc, bar.total, bar.n, bar.unit) == ("caching images_001", 37, 37, "img")
    assert bar.postfix.endswith(" MB/s")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from imgae_dx_jax.data.archive import ZipStore
    from imgae_dx_jax.data.cache import ensure_caches
    from imgae_dx_jax.data.nih import build_catalog
    from imgae_dx_jax.data.stores import sample_archive_path

    class Killing(ZipStore):
        def read_many(self, names, workers=4):
            for n, (name, data) in enumerate(super().read_many(names, workers)):
                if n == 300:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield name, data

    store = Killing(sample_archive_path(), cache_dir=Path(sys.argv[1]))
    ensure_caches(store, build_catalog(store, ("images_001",)), 32, 2)
    """
)


def test_a_run_killed_while_caching_leaves_no_usable_cache(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path)], capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(".tmp-" in name for name in leftovers)
    store = CountingStore(tmp_path)
    catalog = build_catalog(store, ("images_001",))
    assert find_cache(store, catalog.records, "images_001", 32) is None
    before = store.reads
    source = ImageSource(catalog.records[:5], store, 32, SkipLog())
    assert source[0] is not None and store.reads == before + 1  # decoded on the fly
    ensure_caches(store, catalog, 32, 2)  # the next run builds it and clears the debris
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]
    assert os.path.getsize(next(tmp_path.glob("*.npy"))) > 1000 * 32 * 32
