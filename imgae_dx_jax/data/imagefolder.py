"""A generic labelled image tree (``train/NORMAL/x.jpeg``, ``test/PNEUMONIA/y.png``) -> catalog.

The class of an image is the folder right below the split folder (``train``, ``val``, ``test``)
or, without split folders, the first folder below the tree's common root. Class names are
mapped to normal (label 0) when they match ``normal_classes`` (case and ``-``/``_``/space
insensitive) and to abnormal otherwise. Each file is its own patient. When the tree has
``train/`` and ``test/`` folders (``val/`` optional), the catalog records them in
:attr:`~imgae_dx_jax.data.nih.Catalog.folder_splits` and :func:`~imgae_dx_jax.data.split.
split_catalog` follows them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from imgae_dx_jax.data.nih import IMAGE_SUFFIXES, Catalog, Record
from imgae_dx_jax.data.stores import Store
from imgae_dx_jax.errors import DataError

log = logging.getLogger(__name__)

STAGE = "all"
"""The single stage of an image folder (the whole tree is cached as one)."""
_SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def normalise_class(name: str) -> str:
    """Lower-case a class name and unify separators: ``No-Finding`` -> ``no_finding``."""
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


def build_imagefolder_catalog(store: Store, normal_classes: tuple[str, ...]) -> Catalog:
    """Catalog every image of a labelled folder tree.

    Raises:
        DataError: no images in class folders, or only one class in a tree without splits.
    """
    images = [
        n
        for n in store.names()
        if n.lower().endswith(IMAGE_SUFFIXES)
        and not any(p.startswith(".") or p == "__MACOSX" for p in n.split("/"))
    ]
    if not images:
        raise DataError(f"{store.description}: no PNG or JPEG images found")
    normal = {normalise_class(c) for c in normal_classes}
    by_split = _split_layout(images)
    classes: dict[str, str] = {}
    folder_splits: dict[str, str] = {}
    if by_split is not None:
        for name, (split, class_name) in by_split.items():
            classes[name], folder_splits[name] = class_name, split
    else:
        root = _common_root(images)
        for name in images:
            parts = name.split("/")[root:]
            if len(parts) >= 2:
                classes[name] = parts[0]
    if not classes:
        raise DataError(
            f"{store.description}: images must sit in class folders (e.g. NORMAL/, PNEUMONIA/)"
        )
    records = tuple(
        Record(
            key=name,
            member=name,
            stage=STAGE,
            label=0 if normalise_class(c) in normal else 1,
            findings=() if normalise_class(c) in normal else (c,),
            patient=name,
            age=-1,
            sex="",
            view="",
        )
        for name, c in sorted(classes.items())
    )
    counts = Counter(c for c in classes.values())
    log.info(
        "image folder classes: %s (normal: %s)",
        ", ".join(f"{c} {n}" for c, n in sorted(counts.items())),
        ", ".join(sorted(c for c in counts if normalise_class(c) in normal)) or "none",
    )
    if not any(r.label == 0 for r in records):
        raise DataError(
            f"{store.description}: no class folder is normal (classes: {', '.join(sorted(counts))}"
            f"); name the normal classes in data.normal_classes"
        )
    return Catalog(records, (STAGE,), None, folder_splits=folder_splits)


def _split_layout(images: list[str]) -> dict[str, tuple[str, str]] | None:
    """Map image -> (split, class) when the tree has train/ and test/ split folders."""
    out: dict[str, tuple[str, str]] = {}
    for name in images:
        parts = name.split("/")
        for i, part in enumerate(parts[:-2]):
            split = _SPLIT_FOLDERS.get(part.lower())
            if split is not None:
                out[name] = (split, parts[i + 1])
                break
    splits = {split for split, _ in out.values()}
    return out if {"train", "test"} <= splits else None


def _common_root(images: list[str]) -> int:
    """Number of leading folders shared by every image path."""
    folders = [n.split("/")[:-1] for n in images]
    depth = 0
    while all(len(f) > depth + 1 for f in folders) and len({f[depth] for f in folders}) == 1:
        depth += 1
    return depth
