"""NIH ChestX-ray14 metadata: labels, patients, stages and boxes -> one catalog.

Labels come from ``Data_Entry_2017.csv`` only (never from folder names): an image is normal
iff its ``Finding Labels`` is exactly ``No Finding``. Stage membership comes from where the
image lives (``images_0XX/images/<name>.png``); in the NIH Box layout, where all images sit
in one ``images/`` folder, the stage follows NIH's file order (sorted names, consecutive
chunks of 4999, then 10 x 10000, then 7121 images).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field

from imgae_dx_jax.data.stores import Store
from imgae_dx_jax.errors import DataError

log = logging.getLogger(__name__)

NORMAL_LABEL = "No Finding"
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
STAGE_SIZES = (4999,) + (10000,) * 10 + (7121,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_STAGE_MEMBER = re.compile(r"(?:^|/)(images_\d{3})/images/([^/]+)$")
_FLAT_MEMBER = re.compile(r"(?:^|/)images/([^/]+)$")
_CSV_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


@dataclass(frozen=True)
class Entry:
    """One row of ``Data_Entry_2017.csv``."""

    image: str
    findings: tuple[str, ...]
    """The ``|``-separated labels; empty for ``No Finding``."""
    patient: str
    age: int
    """Age in years, -1 when missing or unparsable."""
    sex: str
    view: str

    @property
    def label(self) -> int:
        """1 if abnormal (any finding), 0 if ``No Finding``."""
        return int(bool(self.findings))


@dataclass(frozen=True)
class Record:
    """One image of the catalog: where its bytes are and what the CSV says about it."""

    key: str
    """Image name, e.g. ``00000001_000.png``."""
    member: str
    """Its name in the store."""
    stage: str
    label: int
    findings: tuple[str, ...]
    patient: str
    age: int
    sex: str
    view: str


@dataclass(frozen=True)
class Catalog:
    """The images of the selected stages with their metadata, sorted by key."""

    records: tuple[Record, ...]
    stages: tuple[str, ...]
    official_test: frozenset[str] | None
    """Image names of NIH's ``test_list.txt`` when the store has it."""
    boxes: dict[str, tuple[tuple[str, float, float, float, float], ...]] = field(
        default_factory=dict
    )
    """Per image: (finding, x, y, w, h) boxes in 1024-pixel coordinates."""
    folder_splits: dict[str, str] = field(default_factory=dict)
    """Per image key: ``train``/``val``/``test`` when the data comes with its own split folders
    (an image folder tree); empty otherwise."""


def parse_data_entry(
    text: str, images: Container[str] | None = None
) -> tuple[dict[str, Entry], int]:
    """Parse ``Data_Entry_2017.csv``.

    The real header names ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]``
    as one field each although each spans two columns, so rows have more fields than the
    header: the first seven columns are read by position after checking their names.

    Args:
        text: the file's text.
        images: keep only the rows of these image names (every row is still checked); None
            keeps all. The whole file has 112,120 rows: parsed into entries they take ~60 MB
            for a moment, which a catalog of a few stages does not need.

    Returns:
        The entries (of ``images``) by image name, and the number of other images that have
        rows.

    Raises:
        DataError: when the file is empty or not a readable CSV file, or its header does not
            start with the expected columns.
    """
    try:
        return _parse_data_entry(text, images)
    except csv.Error as err:
        raise DataError(f"Data_Entry_2017.csv is not a readable CSV file: {err}") from None


def _parse_data_entry(text: str, images: Container[str] | None) -> tuple[dict[str, Entry], int]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError("Data_Entry_2017.csv is empty")
    names = tuple(h.strip() for h in header[: len(_CSV_COLUMNS)])
    if names != _CSV_COLUMNS:
        present = {h.strip() for h in header}
        missing = [c for c in _CSV_COLUMNS if c not in present]
        problem = (
            f"missing column(s) {', '.join(missing)}"
            if missing
            else f"columns out of order: {', '.join(names)}"
        )
        raise DataError(
            f"Data_Entry_2017.csv: unexpected header ({problem}); it must start with "
            f"{', '.join(_CSV_COLUMNS)}"
        )
    entries: dict[str, Entry] = {}
    others: set[str] = set()
    for line, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < len(_CSV_COLUMNS):
            raise DataError(
                f"Data_Entry_2017.csv line {line}: {len(row)} columns, expected at least "
                f"{len(_CSV_COLUMNS)} ({', '.join(_CSV_COLUMNS)})"
            )
        image, labels, _, patient, age, sex, view = (c.strip() for c in row[:7])
        if images is not None and image not in images:
            others.add(image)
            continue
        findings = () if labels == NORMAL_LABEL else tuple(sorted(labels.split("|")))
        entries[image] = Entry(image, findings, patient, _parse_age(age), sex, view)
    return entries, len(others)


def _parse_age(text: str) -> int:
    match = re.fullmatch(r"0*(\d+)\s*[Yy]?", text)
    return int(match.group(1)) if match else -1


def parse_boxes(text: str) -> dict[str, tuple[tuple[str, float, float, float, float], ...]]:
    """Parse ``BBox_List_2017.csv`` into per-image (finding, x, y, w, h) boxes."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    next(reader, None)
    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for row in reader:
        if len(row) < 6 or not row[0].strip():
            continue
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError:
            continue
        boxes.setdefault(row[0].strip(), []).append((row[1].strip(), x, y, w, h))
    return {k: tuple(v) for k, v in boxes.items()}


def stage_of_index(index: int) -> str:
    """Stage of the ``index``-th image in NIH's sorted file order (flat ``images/`` layout)."""
    for stage, size in enumerate(STAGE_SIZES, start=1):
        if index < size:
            return f"images_{stage:03d}"
        index -= size
    raise DataError(f"image index {index} is past the 112,120 images of NIH ChestX-ray14")


def locate_images(names: list[str]) -> dict[str, tuple[str, str]]:
    """Map image name -> (member, stage) from store member names.

    Uses ``images_0XX/images/<name>`` paths; when there are none, falls back to the NIH Box
    layout (all images in one ``images/`` folder, stage from the sorted file order).
    """
    located: dict[str, tuple[str, str]] = {}
    flat: list[tuple[str, str]] = []
    for name in names:
        if not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        match = _STAGE_MEMBER.search(name)
        if match:
            located[match.group(2)] = (name, match.group(1))
            continue
        match = _FLAT_MEMBER.search(name)
        if match:
            flat.append((match.group(1), name))
    if not located and flat:
        for index, (image, member) in enumerate(sorted(flat)):
            located[image] = (member, stage_of_index(index))
    return located


def _find(names: list[str], basename: str) -> str | None:
    candidates = [n for n in names if n == basename or n.endswith("/" + basename)]
    return min(candidates, key=len) if candidates else None


def build_catalog(store: Store, stages: tuple[str, ...]) -> Catalog:
    """Build the catalog of ``stages`` from a store with the Kaggle NIH layout.

    Raises:
        DataError: when the CSV is missing, or a stage has no image.
    """
    names = store.names()
    csv_name = _find(names, "Data_Entry_2017.csv")
    if csv_name is None:
        raise DataError(f"{store.description}: Data_Entry_2017.csv not found")
    located = locate_images(names)
    text = store.read(csv_name).decode("utf-8-sig")
    entries, rows_without_images = parse_data_entry(text, located)
    present = Counter(stage for _, stage in located.values())
    wanted = set(stages)
    records = []
    unmatched = 0
    for image, (member, stage) in sorted(located.items()):
        if stage not in wanted:
            continue
        entry = entries.get(image)
        if entry is None:
            unmatched += 1
            continue
        records.append(
            Record(
                image,
                member,
                stage,
                entry.label,
                entry.findings,
                entry.patient,
                entry.age,
                entry.sex,
                entry.view,
            )
        )
    missing = [s for s in stages if s not in {r.stage for r in records}]
    if missing:
        # Before any training: a stage list the data cannot serve would train the stages before
        # the first missing one and then stop.
        found = ", ".join(f"{s} ({n})" for s, n in sorted(present.items())) or "none"
        raise DataError(
            f"{store.description}: no images of {', '.join(missing)} found (stages present: "
            f"{found}); train the stages the data has"
        )
    if unmatched:
        log.warning("%d images have no row in Data_Entry_2017.csv and are left out", unmatched)
    if rows_without_images:
        log.info(
            "%d rows of Data_Entry_2017.csv have no image in %s (expected when only some "
            "stages are present)",
            rows_without_images,
            store.description,
        )
    test_name = _find(names, "test_list.txt")
    official = frozenset(store.read(test_name).decode().split()) if test_name is not None else None
    box_name = _find(names, "BBox_List_2017.csv")
    boxes = parse_boxes(store.read(box_name).decode("utf-8-sig")) if box_name else {}
    return Catalog(tuple(records), tuple(stages), official, boxes)
