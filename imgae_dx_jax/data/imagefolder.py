"""A generic labelled image tree (``train/NORMAL/x.jpeg``, ``test/PNEUMONIA/y.png``) -> catalog.

The class of an image is the folder right below the split folder (``train``, ``val``, ``test``)
or, without split folders, the first folder below the tree's common root. Class names are
mapped to normal (label 0) when they match ``normal_classes`` (case and ``-``/``_``/space
insensitive) and to abnormal otherwise. Each file is its own patient unless a
``patient_pattern`` maps file names to patients (:func:`patient_of`). When the tree has
``train/`` and ``test/`` folders (``val/`` optional), the catalog records them in
:attr:`~imgae_dx_jax.data.nih.Catalog.folder_splits` and :func:`~imgae_dx_jax.data.split.
split_catalog` follows them.

An image folder is one stage, :data:`STAGE`: the NIH stage settings do not apply to it.
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


def patient_of(key: str, pattern: re.Pattern[str] | None) -> str | None:
    r"""The patient of the image at ``key`` by ``pattern``, searched in the file name.

    The patient id is the pattern's first capture group when it has one, else the whole
    match: ``^(person\d+|NORMAL2-IM-\d+|IM-\d+)`` maps ``IM-0115-0001.jpeg`` to ``IM-0115``.

    Args:
        key: the image's path in the store.
        pattern: the compiled ``data.patient_pattern``; None: every file is its own patient.

    Returns:
        The patient id, ``key`` itself without a pattern, or None when the name does not match.
    """
    if pattern is None:
        return key
    match = pattern.search(key.rsplit("/", 1)[-1])
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def build_imagefolder_catalog(
    store: Store, normal_classes: tuple[str, ...], patient_pattern: str = ""
) -> Catalog:
    """Catalog every image of a labelled folder tree.

    Args:
        store: the tree (a folder, or a ZIP of one).
        normal_classes: class folder names that are normal.
        patient_pattern: a regex mapping a file name to its patient (:func:`patient_of`);
            empty: every file is its own patient. A file it does not match is its own patient
            (counted and logged).

    Raises:
        DataError: no images in class folders, or no class folder is normal (a tree of
            normal images only is accepted: training needs nothing else).
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
        for name, (split, class_name, _) in _without_copies(by_split, store.description).items():
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
    pattern = re.compile(patient_pattern) if patient_pattern else None
    patients = {name: patient_of(name, pattern) for name in classes}
    unmatched = sorted(name for name, p in patients.items() if p is None)
    if pattern is not None:
        named = len({p for p in patients.values() if p is not None})
        if unmatched:
            # A file the pattern misses is its own patient: if it is another image of a
            # patient the pattern names, that patient can land in two splits.
            log.warning(
                "data.patient_pattern: %d images of %d patients; %d file names do not match it "
                "(e.g. %s) and are each their own patient: widen the pattern if they are "
                "images of its patients",
                len(patients),
                named + len(unmatched),
                len(unmatched),
                unmatched[0],
            )
        else:
            log.info("data.patient_pattern: %d images of %d patients", len(patients), named)
    records = tuple(
        Record(
            key=name,
            member=name,
            stage=STAGE,
            label=0 if normalise_class(c) in normal else 1,
            findings=() if normalise_class(c) in normal else (c,),
            patient=patients[name] or name,
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


def _split_layout(images: list[str]) -> dict[str, tuple[str, str, str]] | None:
    """Map image -> (split, class, its path from the split folder on), given split folders.

    None unless the tree has ``train/`` and ``test/`` split folders.
    """
    out: dict[str, tuple[str, str, str]] = {}
    for name in images:
        parts = name.split("/")
        for i, part in enumerate(parts[:-2]):
            split = _SPLIT_FOLDERS.get(part.lower())
            if split is not None:
                out[name] = (split, parts[i + 1], "/".join(parts[i:]))
                break
    splits = {split for split, _, _ in out.values()}
    return out if {"train", "test"} <= splits else None


def _without_copies(
    layout: dict[str, tuple[str, str, str]], description: str
) -> dict[str, tuple[str, str, str]]:
    """Keep one image of each path from the split folder on (the shortest name).

    A tree holding a second copy of itself below a folder (Kaggle's pediatric pneumonia
    download has ``chest_xray/train/...`` and ``chest_xray/chest_xray/train/...``) would count
    every image twice: as two patients of the bootstrap, and, split by patient, possibly one
    in training and its copy in test.
    """
    first: dict[str, str] = {}
    for name in sorted(layout, key=lambda n: (len(n), n)):
        first.setdefault(layout[name][2], name)
    copies = sorted(set(layout) - set(first.values()))
    if copies:
        log.warning(
            "%s: %d images are copies of others at the same path below another folder (e.g. "
            "%s, a copy of %s); each is used once",
            description,
            len(copies),
            copies[0],
            first[layout[copies[0]][2]],
        )
    return {name: layout[name] for name in first.values()}


def _common_root(images: list[str]) -> int:
    """Number of leading folders shared by every image path."""
    folders = [n.split("/")[:-1] for n in images]
    depth = 0
    while all(len(f) > depth + 1 for f in folders) and len({f[depth] for f in folders}) == 1:
        depth += 1
    return depth
