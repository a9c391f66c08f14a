"""Byte access to a dataset laid out like Kaggle's ``nih-chest-xrays/data``.

A *store* lists relative member names (``images_001/images/00000001_000.png``,
``Data_Entry_2017.csv``) and reads their bytes. The same layout can live in a ZIP archive
(:class:`ZipStore`: Kaggle's ``archive.zip``, the bundled sample, a copy on Google Drive) or
in an extracted folder (:class:`FolderStore`: ``/kaggle/input/data``). Nothing downstream
knows which.

Stores are safe to read from several threads, and picklable (they reopen lazily).
"""

from __future__ import annotations

import threading
import zipfile
from importlib import resources
from pathlib import Path
from typing import Protocol

from imgae_dx_jax.config import DataConfig


class DataError(RuntimeError):
    """The data cannot be read or does not look like the NIH layout; the message says why."""


class Store(Protocol):
    """Read-only access to the files of a dataset."""

    description: str
    """Human-readable origin, e.g. ``archive /path/archive.zip``."""

    def names(self) -> list[str]:
        """Return every member name, relative, with ``/`` separators."""
        ...

    def read(self, name: str) -> bytes:
        """Return the bytes of one member."""
        ...


def sample_archive_path() -> Path:
    """Return the path of the bundled NIH sample archive (1000 images, 64x64)."""
    return Path(str(resources.files("imgae_dx_jax") / "assets" / "nih-chest-xrays-sample.zip"))


class ZipStore:
    """Members of a ZIP archive (ZIP64, stored or deflated, any member order)."""

    def __init__(self, path: Path, description: str | None = None) -> None:
        self.path = Path(path)
        self.description = description or f"archive {self.path}"
        if not self.path.is_file():
            raise DataError(f"archive not found: {self.path}")
        self._local = threading.local()
        self._names = [info.filename for info in self._zip().infolist() if not info.is_dir()]

    def _zip(self) -> zipfile.ZipFile:
        archive = getattr(self._local, "zip", None)
        if archive is None:
            try:
                archive = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(f"{self.path} is not a readable ZIP archive: {err}") from None
            self._local.zip = archive
        return archive

    def names(self) -> list[str]:
        """Return the archive's file members."""
        return list(self._names)

    def read(self, name: str) -> bytes:
        """Read one member (one ZipFile handle per thread)."""
        return self._zip().read(name)

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "description": self.description, "_names": self._names}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class FolderStore:
    """Files below an extracted dataset folder."""

    def __init__(self, root: Path, description: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.description = description or f"folder {self.root}"
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        self._names = sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def names(self) -> list[str]:
        """Return every file below the root, relative."""
        return list(self._names)

    def read(self, name: str) -> bytes:
        """Read one file."""
        return (self.root / name).read_bytes()


def open_store(data: DataConfig) -> Store:
    """Open the store the data config names (``sample``, ``archive`` or ``folder``)."""
    if data.source == "sample":
        return ZipStore(sample_archive_path(), description="bundled NIH sample (1000 images)")
    if data.source == "archive":
        return ZipStore(Path(data.path).expanduser())
    if data.source == "folder":
        return FolderStore(Path(data.path))
    raise DataError(f"unknown data source {data.source!r}")
