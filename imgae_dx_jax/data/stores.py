"""Byte access to a dataset: the :class:`Store` protocol, and extracted folders.

A *store* lists relative member names (``images_001/images/00000001_000.png``,
``Data_Entry_2017.csv``) and reads their bytes. The same layout can live in a ZIP archive
(:class:`~imgae_dx_jax.data.archive.ZipStore`, over a local file or an HTTP Range URL) or in
an extracted folder (:class:`FolderStore`: ``/kaggle/input/data``). Nothing downstream knows
which. :func:`~imgae_dx_jax.data.sources.open_store` builds the store a config names.

Stores are safe to read from several threads, and picklable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Protocol

from imgae_dx_jax.errors import DataError


class Store(Protocol):
    """Read-only access to the files of a dataset."""

    description: str
    """Human-readable origin, e.g. ``archive file /path/archive.zip`` (never a signed URL)."""
    cache_dir: Path | None
    """Where decoded stages of this store are cached (:mod:`~imgae_dx_jax.data.cache`);
    ``None`` disables the cache."""

    def names(self) -> list[str]:
        """Return every member name, relative, with ``/`` separators."""
        ...

    def read(self, name: str) -> bytes:
        """Return the bytes of one member."""
        ...

    def read_many(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield ``(name, bytes)`` for every name, in whatever order reads them fastest."""
        ...

    def token(self, name: str) -> str:
        """Return a short string that changes whenever the member's content changes."""
        ...


def sample_archive_path() -> Path:
    """Return the path of the bundled NIH sample archive (1000 images, 64x64)."""
    return Path(str(resources.files("imgae_dx_jax") / "assets" / "nih-chest-xrays-sample.zip"))


class FolderStore:
    """Files below an extracted dataset folder."""

    def __init__(
        self, root: Path, description: str | None = None, cache_dir: Path | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.description = description or f"folder {self.root}"
        self.cache_dir = cache_dir
        if self.root.is_file():
            raise DataError(
                f"{self.root} is a file, not a folder (--source archive reads a ZIP of the "
                "NIH layout, --source imagefolder a ZIP of class folders)"
            )
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        self._tokens: dict[str, str] = {}
        for directory, _, files in os.walk(self.root):
            for file in files:
                path = Path(directory, file)
                name = path.relative_to(self.root).as_posix()
                try:
                    stat = path.stat()
                except OSError:
                    # A dangling symlink, or a file gone since the listing: kept, so that
                    # reading it fails and the image is skipped and counted like a corrupt one.
                    self._tokens[name] = "unreadable"
                    continue
                self._tokens[name] = f"{stat.st_size}:{stat.st_mtime_ns}"
        self._names = sorted(self._tokens)

    def names(self) -> list[str]:
        """Return every file below the root, relative."""
        return list(self._names)

    def read(self, name: str) -> bytes:
        """Read one file."""
        return (self.root / name).read_bytes()

    def read_many(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Read files one after another."""
        for name in names:
            yield name, self.read(name)

    def token(self, name: str) -> str:
        """Size and modification time of the file."""
        return self._tokens[name]
