"""ZIP archives read over any random-access byte source (a local file, an HTTP Range URL).

Only the central directory is parsed with :mod:`zipfile` (through a small seekable view of the
source, a handful of reads at the end of the archive). Members are then read by their byte
extent -- from their local header to the next member's header -- so that any set of members
costs exactly their own bytes, and members that lie next to each other are fetched in one
large read (:meth:`ZipStore.read_many`). ZIP64, stored and deflated members and any member
order are supported; a member whose CRC does not match raises :class:`CorruptMemberError`.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imgae_dx_jax.errors import DataError

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_MAX_READ = 16 * 2**20
"""Largest coalesced read of adjacent members, in bytes."""


class CorruptMemberError(ValueError):
    """A member's bytes do not decompress or do not match their CRC."""


class ByteSource(Protocol):
    """Random access to the bytes of one file; ``read_range`` is safe from several threads."""

    description: str
    """Where the bytes are, e.g. ``file /data/archive.zip``."""
    size: int
    """Total length in bytes."""

    def read_range(self, start: int, end: int) -> bytes:
        """Return the bytes ``[start, end)``."""
        ...


class LocalFile:
    """A local file read with ``pread`` (no shared file position, so thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise DataError(
                f"{self.path} is a folder, not a ZIP archive (--source folder reads an "
                "extracted NIH tree, --source imagefolder a tree of class folders)"
            )
        if not self.path.is_file():
            raise DataError(f"archive not found: {self.path}")
        self.size = self.path.stat().st_size
        self.description = f"file {self.path}"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def read_range(self, start: int, end: int) -> bytes:
        """Read ``[start, end)``; fewer bytes only at the end of the file."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        parts = []
        while start < end:
            chunk = os.pread(self._fd, end - start, start)
            if not chunk:
                break
            parts.append(chunk)
            start += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the file (a later read opens it again)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "description": self.description}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._fd = None
        self._lock = threading.Lock()

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # os.close is bound at definition: at interpreter exit the module global may be gone.
        if getattr(self, "_fd", None) is not None:
            _close(self._fd)  # type: ignore[arg-type]


class _SeekableView(io.RawIOBase):
    """A read-only, seekable file object over a :class:`ByteSource` (for :mod:`zipfile`)."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._pos + len(buffer), self._source.size)
        if end <= self._pos:
            return 0
        data = self._source.read_range(self._pos, end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    start: int
    """Offset of the local header."""
    end: int
    """Offset of the next member's header (or of the central directory)."""


class ZipStore:
    """Members of a ZIP archive over a local file or any other :class:`ByteSource`."""

    def __init__(
        self,
        source: ByteSource | Path | str,
        description: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.source: ByteSource = (
            LocalFile(Path(source)) if isinstance(source, str | Path) else source
        )
        self.description = description or f"archive {self.source.description}"
        self.cache_dir = cache_dir
        try:
            with zipfile.ZipFile(_SeekableView(self.source)) as archive:
                infos = [i for i in archive.infolist() if not i.is_dir()]
                directory = archive.start_dir
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"{self.description} is not a readable ZIP archive: {err}") from None
        infos.sort(key=lambda i: i.header_offset)
        ends = [i.header_offset for i in infos[1:]] + [directory]
        self._members = {
            i.filename: _Member(i, i.header_offset, end) for i, end in zip(infos, ends, strict=True)
        }

    def names(self) -> list[str]:
        """Return the archive's file members."""
        return list(self._members)

    def token(self, name: str) -> str:
        """Content token of a member (CRC and sizes from the central directory)."""
        info = self._members[name].info
        return f"{info.CRC:08x}:{info.compress_size}:{info.file_size}"

    def read(self, name: str) -> bytes:
        """Read and decompress one member (one read of exactly its bytes)."""
        member = self._members[name]
        return _extract(member, self.source.read_range(member.start, member.end))

    def read_many(self, names: Iterable[str], workers: int = 4) -> Iterator[tuple[str, bytes]]:
        """Yield ``(name, bytes)`` for ``names`` in archive order, reading adjacent members at once.

        Runs of members with no other member between them are fetched in single reads of up to
        16 MiB; up to ``workers`` runs are in flight, so memory stays bounded.
        """
        runs = _coalesce(sorted((self._members[n] for n in names), key=lambda m: m.start))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: list[tuple[list[_Member], Future[bytes]]] = []
            for run in runs:
                future = pool.submit(self.source.read_range, run[0].start, run[-1].end)
                pending.append((run, future))
                if len(pending) > workers:
                    yield from _split(*pending.pop(0))
            for run, future in pending:
                yield from _split(run, future)


def _coalesce(members: list[_Member]) -> list[list[_Member]]:
    runs: list[list[_Member]] = []
    for member in members:
        last = runs[-1] if runs else None
        if last and last[-1].end == member.start and member.end - last[0].start <= _MAX_READ:
            last.append(member)
        else:
            runs.append([member])
    return runs


def _split(run: list[_Member], future: Future[bytes]) -> Iterator[tuple[str, bytes]]:
    data = memoryview(future.result())
    base = run[0].start
    for member in run:
        yield member.info.filename, _extract(member, data[member.start - base : member.end - base])


def _extract(member: _Member, data: bytes | memoryview) -> bytes:
    info = member.info
    if len(data) < _LOCAL_HEADER.size:
        raise CorruptMemberError(f"{info.filename}: truncated local header")
    fields = _LOCAL_HEADER.unpack(data[: _LOCAL_HEADER.size])
    signature, flags, method, name_length, extra_length = (
        fields[0],
        fields[2],
        fields[3],
        fields[9],
        fields[10],
    )
    if signature != _LOCAL_SIGNATURE:
        raise CorruptMemberError(f"{info.filename}: bad local header signature")
    # The central directory says what the member is; a local header that disagrees is corrupt
    # (that member is skipped), not an archive this reader does not support (which stops).
    if info.flag_bits & 0x1:
        raise DataError(f"{info.filename}: encrypted ZIP members are not supported")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(
            f"{info.filename}: ZIP compression method {info.compress_type} is not supported "
            "(only stored and deflated)"
        )
    if method != info.compress_type or flags & 0x1:
        raise CorruptMemberError(f"{info.filename}: local header disagrees with the directory")
    start = _LOCAL_HEADER.size + name_length + extra_length
    payload = data[start : start + info.compress_size]
    if len(payload) != info.compress_size:
        raise CorruptMemberError(f"{info.filename}: truncated member data")
    if method == zipfile.ZIP_STORED:
        out = bytes(payload)
    else:
        try:
            out = zlib.decompress(payload, -15)
        except zlib.error as err:
            raise CorruptMemberError(f"{info.filename}: {err}") from None
    if zlib.crc32(out) != info.CRC:
        raise CorruptMemberError(f"{info.filename}: CRC mismatch")
    return out
