"""Patient-level train/validation/test splits.

Every image of a patient lands in the same split, so no test patient is ever seen in
training. The split of a patient depends only on the seed and the patient id (a hash), not
on which stages are loaded: training progressively on ``images_001`` then ``images_002``
never moves a patient from test into train. NIH's official ``test_list.txt`` defines the
test set when the data has it; validation is then carved from the remaining patients.
An image folder tree with its own ``train/``, ``val/`` and ``test/`` folders keeps them (without
``val/``, validation is carved from ``train/`` by the seed, normal and abnormal images alike);
a patient (``data.patient_pattern``) with images in two of those splits stops with an error.

Training uses only the *normal* images of training patients; validation and test keep
every image of their patients, normal and abnormal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from imgae_dx_jax.data.nih import Catalog, Record
from imgae_dx_jax.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Records of each split (train holds normal images only)."""

    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]
    official: bool
    """Whether the test set is NIH's official ``test_list.txt``."""

    def __getitem__(self, name: str) -> tuple[Record, ...]:
        """Return a split by name (``train``, ``val`` or ``test``)."""
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class, e.g. ``{"val": {"normal": 40, "abnormal": 61}}``."""
        return {name: _count(self[name]) for name in SPLITS}


def _count(records: Iterable[Record]) -> dict[str, int]:
    labels = [r.label for r in records]
    return {"normal": labels.count(0), "abnormal": labels.count(1)}


def _unit_hash(seed: int, patient: str) -> float:
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_catalog(
    catalog: Catalog, fractions: tuple[float, float, float], seed: int, use_official: bool
) -> Splits:
    """Split the catalog by patient.

    Args:
        catalog: the images to split.
        fractions: train/validation/test fractions of patients (used for the test share only
            when no official list is used).
        seed: split seed.
        use_official: take the test set from NIH's ``test_list.txt`` when the catalog has it,
            or all three splits from an image folder's split folders.

    Returns:
        The three splits; train keeps only normal images.

    Raises:
        DataError: when an image folder's split folders put a patient in two splits.
    """
    train_f, val_f, _ = fractions
    if use_official and catalog.folder_splits:
        return _folder_splits(catalog, val_f / (train_f + val_f), seed)
    official = use_official and catalog.official_test is not None
    official_test_patients = (
        {r.patient for r in catalog.records if r.key in catalog.official_test}
        if official and catalog.official_test is not None
        else set()
    )
    assignment: dict[str, str] = {}
    for patient in sorted({r.patient for r in catalog.records}):
        u = _unit_hash(seed, patient)
        if official:
            if patient in official_test_patients:
                assignment[patient] = "test"
            else:
                assignment[patient] = "train" if u < train_f / (train_f + val_f) else "val"
        else:
            assignment[patient] = (
                "train" if u < train_f else "val" if u < train_f + val_f else "test"
            )
    parts: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in catalog.records:
        split = assignment[record.patient]
        if split == "train" and record.label != 0:
            continue
        parts[split].append(record)
    return Splits(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]), official)


def _folder_splits(catalog: Catalog, val_share: float, seed: int) -> Splits:
    """Follow the tree's split folders; carve validation from ``train/`` when there is no val/.

    Raises:
        DataError: when a patient has images in two of the splits (the folders were not made
            by patient, or ``data.patient_pattern`` names patients across them).
    """
    has_val = "val" in catalog.folder_splits.values()
    parts: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in catalog.records:
        split = catalog.folder_splits[record.key]
        if split == "train" and not has_val and _unit_hash(seed, record.patient) < val_share:
            split = "val"
        if split == "train" and record.label != 0:
            continue
        parts[split].append(record)
    _check_patients_disjoint(parts)
    return Splits(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]), True)


def _check_patients_disjoint(parts: dict[str, list[Record]]) -> None:
    """Fail when a patient has images in more than one split.

    Raises:
        DataError: naming how many patients, one of them and its splits.
    """
    where: dict[str, list[str]] = {}
    for name in SPLITS:
        for patient in sorted({r.patient for r in parts[name]}):
            where.setdefault(patient, []).append(name)
    shared = {p: names for p, names in where.items() if len(names) > 1}
    if shared:
        patient, names = next(iter(sorted(shared.items())))
        raise DataError(
            f"{len(shared)} patient(s) have images in more than one of the image folder's split "
            f"folders (e.g. {patient}: {', '.join(names)}), so its splits are not by patient; "
            "split by patient with data.official_split=false, or give a data.patient_pattern "
            "under which the folders hold different patients"
        )
