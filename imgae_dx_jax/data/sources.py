"""One entry point per data source: ``data.source`` -> a store of bytes and a catalog.

==============  ===============================================================================
``sample``      the bundled 1000-image NIH sample archive
``archive``     a local ZIP with the Kaggle layout (``archive.zip``; ZIP64, stored or deflated)
``folder``      an extracted Kaggle-layout tree, or NIH's Box layout (one ``images/`` folder)
``url``         an http(s) URL of such a ZIP, read with Range requests (central directory, then
                only the members of the requested stages)
``kaggle``      a Kaggle dataset (default ``nih-chest-xrays/data``): the kaggle client's signed
                archive URL, streamed as ``url``; re-requested when it expires
``imagefolder`` a labelled class-folder tree (or a ZIP of one) of any chest X-ray dataset
==============  ===============================================================================

Every source yields the same :class:`~imgae_dx_jax.data.nih.Catalog`, so nothing downstream
knows where the bytes come from. The NIH sources come in stages (``data.stages``); an image
folder is one stage, ``all``, and ignores ``data.stages`` (:func:`source_stages`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from imgae_dx_jax.config import cache_dir_of
from imgae_dx_jax.data import imagefolder, kaggle
from imgae_dx_jax.data.archive import ByteSource, LocalFile, ZipStore
from imgae_dx_jax.data.http import open_url
from imgae_dx_jax.data.nih import Catalog, build_catalog
from imgae_dx_jax.data.stores import FolderStore, Store, sample_archive_path
from imgae_dx_jax.errors import DataError
from imgae_dx_jax.redact import public_url
from imgae_dx_jax.schema import NIH_SOURCES, DataConfig


def open_store(data: DataConfig) -> Store:
    """Open the store the data config names.

    Raises:
        DataError: the archive, folder or URL cannot be opened, or Kaggle refuses.
    """
    cache_dir = cache_dir_of(data) if data.cache else None
    downloads = cache_dir_of(data)
    if data.source == "sample":
        return ZipStore(
            sample_archive_path(),
            description="bundled NIH sample (1000 images)",
            cache_dir=cache_dir,
        )
    if data.source == "archive":
        return ZipStore(Path(data.path).expanduser(), cache_dir=cache_dir)
    if data.source == "folder":
        return FolderStore(Path(data.path), cache_dir=cache_dir)
    if data.source == "imagefolder":
        path = Path(data.path).expanduser()
        if not path.exists():
            raise DataError(f"image folder not found: {path} (give a folder, or a ZIP of one)")
        if path.is_file():
            return ZipStore(path, cache_dir=cache_dir)
        return FolderStore(path, cache_dir=cache_dir)
    if data.source == "url":
        source = open_url(lambda: data.path, downloads, retries=data.retries, timeout=data.timeout)
        return _remote_zip(source, f"url {public_url(data.path)}", cache_dir)
    if data.source == "kaggle":
        dataset = data.path or kaggle.DEFAULT_DATASET
        kaggle.dataset_ref(dataset)
        source = open_url(
            lambda: kaggle.archive_url(dataset),
            downloads,
            retries=data.retries,
            timeout=data.timeout,
            can_refresh=True,
        )
        return _remote_zip(source, f"kaggle {dataset}", cache_dir)
    raise DataError(f"unknown data source {data.source!r}")


def _remote_zip(source: ByteSource, description: str, cache_dir: Path | None) -> ZipStore:
    """The archive of a URL; a whole-file download of it that is no ZIP is deleted.

    A server without Range support is downloaded into the cache once (:func:`open_url`), and
    the download is reused by every later run. When what arrived is no ZIP (an HTML error or
    login page, a file replaced on the server since), keeping it would fail every rerun the
    same way, even after the server is fixed: it is removed, and the error says so.

    Raises:
        DataError: the URL's file is not a readable ZIP archive.
    """
    try:
        return ZipStore(source, description=description, cache_dir=cache_dir)
    except DataError as err:
        if not isinstance(source, LocalFile):
            raise
        source.close()
        try:
            source.path.unlink()
        except OSError:
            raise DataError(f"{err}; delete its download {source.path} to fetch it again") from None
        raise DataError(
            f"{err} (the server sent {source.size} bytes; the download is removed, so the "
            "next run fetches it again)"
        ) from None


LOCAL_SOURCES = ("archive", "folder", "imagefolder")
"""Sources whose ``data.path`` is a local file or folder."""


def with_absolute_path(data: DataConfig) -> DataConfig:
    """``data`` with a local source's relative ``data.path`` made absolute.

    A run records the data it was trained on; with the path as typed (``benchmarks/data/...``)
    the run could be evaluated, resumed or compared only from the directory it started in.
    """
    if data.source not in LOCAL_SOURCES or not data.path:
        return data
    return replace(data, path=str(Path(data.path).expanduser().absolute()))


def source_stages(data: DataConfig) -> tuple[str, ...]:
    """The stages the configured data is trained in.

    ``data.stages`` for the NIH sources; the single stage ``all`` for an image folder, which
    ignores ``data.stages``.
    """
    return data.stages if data.source in NIH_SOURCES else (imagefolder.STAGE,)


def load_catalog(store: Store, data: DataConfig) -> Catalog:
    """Catalog the configured stages (NIH sources) or the whole tree (``imagefolder``)."""
    if data.source == "imagefolder":
        return imagefolder.build_imagefolder_catalog(
            store, data.normal_classes, data.patient_pattern
        )
    return build_catalog(store, data.stages)
