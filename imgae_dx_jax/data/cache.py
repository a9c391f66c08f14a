"""Decoded, resized stage cache: one uint8 ``.npy`` array per stage and image size, plus an index.

The first pass over a stage reads its members in store order (for an archive: adjacent members
in large reads), decodes each image once on a thread pool, resizes it to the training size and
writes it into ``<cache_dir>/<stage>-<size>px-<fingerprint>.npy`` (shape ``[n, size, size]``,
memory-mappable with ``np.load(path, mmap_mode="r")``). The index next to it (``.json``) holds
the image keys, their content tokens, labels, the source, the fingerprint, the image size and
the images that failed to decode.

The fingerprint hashes every image's key, member name and content token (a ZIP member's CRC and
sizes, a file's size and mtime): a changed source gives a new fingerprint, and a changed image
size a new file, so either is rebuilt rather than reused. Writes are atomic: the array and the
index are written to temporary names and renamed, the index last, and only a cache with its
index counts -- a run killed while caching leaves nothing that reads as complete.

Rows are read with ``pread`` into fresh arrays rather than through a memory map, so resident
memory does not grow with the number of images read (mapped pages would count towards RSS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgae_dx_jax.data.images import ImageDecodeError, decode_image
from imgae_dx_jax.data.nih import Catalog, Record
from imgae_dx_jax.data.stores import Store
from imgae_dx_jax.errors import DataError
from imgae_dx_jax.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped whenever decoding or the file format changes, which invalidates every cache."""
_PROGRESS_SECONDS = 10.0


def fingerprint(store: Store, records: Sequence[Record], image_size: int) -> str:
    """Hash of what a cache of ``records`` depends on: keys, members, their content, size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{image_size}\n".encode())
    for record in sorted(records, key=lambda r: r.key):
        digest.update(f"{record.key}\t{record.member}\t{store.token(record.member)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheIndex:
    """What a stage cache holds (the ``.json`` next to the array)."""

    stage: str
    image_size: int
    fingerprint: str
    source: str
    keys: tuple[str, ...]
    tokens: tuple[str, ...]
    labels: tuple[int, ...]
    failed: dict[str, str]
    """Images that could not be decoded, with the reason."""

    def to_json(self) -> str:
        """Serialise to JSON (with the format version)."""
        return json.dumps(
            {
                "version": CACHE_VERSION,
                "stage": self.stage,
                "image_size": self.image_size,
                "fingerprint": self.fingerprint,
                "source": self.source,
                "keys": self.keys,
                "tokens": self.tokens,
                "labels": self.labels,
                "failed": self.failed,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CacheIndex | None:
        """Parse an index; ``None`` when it is of another version or malformed."""
        try:
            raw = json.loads(text)
            if raw.get("version") != CACHE_VERSION:
                return None
            return cls(
                raw["stage"],
                int(raw["image_size"]),
                raw["fingerprint"],
                raw["source"],
                tuple(raw["keys"]),
                tuple(raw["tokens"]),
                tuple(raw["labels"]),
                dict(raw["failed"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class StageCache:
    """A complete stage cache opened for reading rows (thread-safe, picklable)."""

    def __init__(self, path: Path, index: CacheIndex) -> None:
        self.path = path
        self.index = index
        self.rows = {key: row for row, key in enumerate(index.keys)}
        self._row_bytes = index.image_size**2
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(f)
            self._offset = f.tell()
        expected = (len(index.keys), index.image_size, index.image_size)
        if tuple(shape) != expected or path.stat().st_size != self._offset + np.prod(expected):
            raise ValueError(f"{path}: shape {shape} does not match its index {expected}")
        self._fd: int | None = None
        self._lock = threading.Lock()

    def read(self, row: int) -> np.ndarray:
        """Return image ``row`` as a new ``[size, size]`` uint8 array."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, self._row_bytes, self._offset + row * self._row_bytes)
        size = self.index.image_size
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size).copy()

    def covers(self, store: Store, records: Sequence[Record]) -> bool:
        """Whether every record is in this cache with unchanged content."""
        tokens = self.index.tokens
        for record in records:
            row = self.rows.get(record.key)
            if row is None or tokens[row] != store.token(record.member):
                return False
        return True

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_fd"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]


def _paths(cache_dir: Path, stage: str, image_size: int, digest: str) -> tuple[Path, Path]:
    stem = f"{stage}-{image_size}px-{digest[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _open(index_path: Path) -> StageCache | None:
    try:
        index = CacheIndex.from_json(index_path.read_text())
        if index is None:
            return None
        return StageCache(index_path.with_suffix(".npy"), index)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable stage cache %s: %s", index_path, err)
        return None


def find_cache(
    store: Store, records: Sequence[Record], stage: str, image_size: int
) -> StageCache | None:
    """Return a complete cache of ``stage`` at ``image_size`` that holds all ``records``."""
    if store.cache_dir is None or not records:
        return None
    for index_path in sorted(store.cache_dir.glob(f"{stage}-{image_size}px-*.json")):
        cache = _open(index_path)
        if cache is not None and cache.covers(store, records):
            return cache
    return None


def ensure_caches(store: Store, catalog: Catalog, image_size: int, threads: int) -> None:
    """Build the cache of every stage of the catalog that has no complete one yet."""
    if store.cache_dir is None:
        return
    for stage in catalog.stages:
        records = [r for r in catalog.records if r.stage == stage]
        if records and find_cache(store, records, stage, image_size) is None:
            build_cache(store, records, stage, image_size, threads)


def build_cache(
    store: Store, records: Sequence[Record], stage: str, image_size: int, threads: int
) -> StageCache:
    """Decode ``records`` once into a new stage cache (atomically) and return it.

    Raises:
        DataError: the cache directory cannot be written, or the store fails.
    """
    if store.cache_dir is None:
        raise DataError("no cache directory configured")
    cache_dir = store.cache_dir
    records = sorted(records, key=lambda r: r.key)
    digest = fingerprint(store, records, image_size)
    array_path, index_path = _paths(cache_dir, stage, image_size, digest)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(cache_dir)
        suffix = f".tmp-{socket.gethostname()}-{os.getpid()}"
        tmp_array = array_path.with_name(array_path.name + suffix)
        tmp_index = index_path.with_name(index_path.name + suffix)
        log.info(
            "caching %s: %d images at %dpx from %s into %s",
            stage,
            len(records),
            image_size,
            store.description,
            cache_dir,
        )
        failed = _write_array(store, records, stage, image_size, threads, tmp_array)
        os.replace(tmp_array, array_path)
        index = CacheIndex(
            stage,
            image_size,
            digest,
            store.description,
            tuple(r.key for r in records),
            tuple(store.token(r.member) for r in records),
            tuple(r.label for r in records),
            failed,
        )
        tmp_index.write_text(index.to_json())
        os.replace(tmp_index, index_path)
    except OSError as err:
        raise DataError(f"cannot write the stage cache in {cache_dir}: {err}") from None
    _remove_replaced(cache_dir, stage, image_size, store.description, index_path)
    return StageCache(array_path, index)


def _write_array(
    store: Store, records: Sequence[Record], stage: str, image_size: int, threads: int, path: Path
) -> dict[str, str]:
    row_bytes = image_size**2
    rows = {r.member: row for row, r in enumerate(records)}
    keys = {r.member: r.key for r in records}
    failed: dict[str, str] = {}
    with path.open("wb") as f:
        header = {
            "descr": "|u1",
            "fortran_order": False,
            "shape": (len(records),) + (image_size,) * 2,
        }
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + len(records) * row_bytes)
        fd = f.fileno()

        def decode_and_write(member: str, data: bytes) -> None:
            try:
                image = decode_image(data, image_size)
            except ImageDecodeError as err:
                failed[keys[member]] = err.reason
                return
            os.pwrite(fd, image.tobytes(), offset + rows[member] * row_bytes)

        start, last_report = time.monotonic(), 0.0
        pending: deque[Future[None]] = deque()
        done = read = 0
        with (
            ThreadPoolExecutor(max_workers=threads) as pool,
            progress_bar(f"caching {stage}", len(records), "img") as bar,
        ):
            try:
                for member, data in _read_all(store, list(rows), failed, keys):
                    read += len(data)
                    pending.append(pool.submit(decode_and_write, member, data))
                    while len(pending) > 4 * threads or (pending and pending[0].done()):
                        pending.popleft().result()
                        done += 1
                        bar.update()
                    elapsed = max(time.monotonic() - start, 1e-9)
                    bar.set_postfix_str(f"{read / 1e6 / elapsed:.1f} MB/s", refresh=False)
                    # Without a bar (stderr is a file), a log line every _PROGRESS_SECONDS.
                    if bar.disable and elapsed - last_report > _PROGRESS_SECONDS:
                        last_report = elapsed
                        log.info(
                            "  %d/%d images (%.0f images/s, %.1f MB/s read)",
                            done,
                            len(records),
                            done / elapsed,
                            read / 1e6 / elapsed,
                        )
                for future in pending:
                    future.result()
                    bar.update()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        os.fsync(fd)
    if failed:
        log.warning("%d images of the stage could not be decoded and are skipped", len(failed))
    return failed


def _read_all(
    store: Store, members: Sequence[str], failed: dict[str, str], keys: dict[str, str]
) -> Iterator[tuple[str, bytes]]:
    """Read every member in the store's fastest order; a corrupt member is recorded in ``failed``.

    After the first corrupt or unreadable member (a dangling symlink in a folder) the rest
    are read one by one, so that one bad member costs only itself.
    """
    seen: set[str] = set()
    try:
        for member, data in store.read_many(members):
            seen.add(member)
            yield member, data
    except (KeyError, ValueError, OSError):
        for member in members:
            if member in seen:
                continue
            try:
                data = store.read(member)
            except (KeyError, ValueError, OSError, EOFError) as err:
                failed[keys[member]] = f"unreadable ({type(err).__name__})"
                continue
            yield member, data


def _remove_stale_temporaries(cache_dir: Path) -> None:
    host = socket.gethostname()
    for path in cache_dir.glob(f"*.tmp-{host}-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_replaced(cache_dir: Path, stage: str, image_size: int, source: str, keep: Path) -> None:
    """Delete older caches of the same source, stage and size (their source changed)."""
    for index_path in cache_dir.glob(f"{stage}-{image_size}px-*.json"):
        if index_path == keep:
            continue
        index = CacheIndex.from_json(index_path.read_text())
        if index is not None and index.source == source:
            index_path.unlink(missing_ok=True)
            index_path.with_suffix(".npy").unlink(missing_ok=True)
