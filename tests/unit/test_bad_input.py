"""Bad input built in code: CSVs, archives, kaggle.json permissions (issue 9)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgae_dx_jax.data import kaggle
from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.cache import ensure_caches
from imgae_dx_jax.data.imagefolder import build_imagefolder_catalog
from imgae_dx_jax.data.nih import Catalog, build_catalog, parse_data_entry
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, train_dataset
from imgae_dx_jax.data.stores import DataError, FolderStore
from imgae_dx_jax.training.loop import StopFlag

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
)


def _png(value: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("L", (20, 20), value).save(out, format="PNG")
    return out.getvalue()


# --- metadata CSV --------------------------------------------------------------------------


def test_csv_with_bom_blank_lines_and_extra_columns_is_parsed():
    text = (
        "\ufeff"
        + HEADER
        + ",OriginalImage[Width,Height],Extra\n\n"
        + "a.png,No Finding,0,1,58,M,PA,1024,1024,x,y\n"
        + "   ,  ,\n\n"
        + "b.png,Mass|Effusion,1,2,060Y,F,AP\n\n"
    )
    entries, _ = parse_data_entry(text)
    assert set(entries) == {"a.png", "b.png"}
    assert entries["a.png"].label == 0 and entries["b.png"].findings == ("Effusion", "Mass")
    assert entries["b.png"].age == 60


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("Image Index,Finding Labels,Patient ID\na.png,No Finding,1\n", "missing column(s)"),
        (HEADER.replace("Patient Age,Patient Gender", "Patient Gender,Patient Age"), "order"),
        (HEADER + "\na.png,No Finding,0\n", "line 2: 3 columns, expected at least 7"),
    ],
    ids=["empty", "missing-columns", "swapped-columns", "short-row"],
)
def test_bad_csv_is_rejected_with_a_clear_message(text, fragment):
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv") as err:
        parse_data_entry(text)
    assert fragment in str(err.value)


_cell = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_cell, min_size=0, max_size=10), max_size=8), bom=st.booleans())
def test_csv_parser_never_fails_other_than_with_a_data_error(rows, bom):
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER.split(","))
    writer.writerows(rows)
    text = ("\ufeff" if bom else "") + out.getvalue()
    try:
        entries, _ = parse_data_entry(text)
    except DataError as err:
        assert "Data_Entry_2017.csv" in str(err)
        return
    for row in rows:
        if len(row) >= 7 and row[0].strip() in entries:
            entry = entries[row[0].strip()]
            assert entry.label in (0, 1) and isinstance(entry.age, int)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_csv_parser_on_arbitrary_text(text):
    with contextlib.suppress(DataError):
        parse_data_entry(text)


# --- archives ------------------------------------------------------------------------------


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # bypass zipfile's sanitising: hostile names, as found
            z.writestr(info, data)
    return path


def _csv(names: list[str]) -> bytes:
    rows = [f"{n},No Finding,0,{i},40,M,PA" for i, n in enumerate(names)]
    return ("\n".join([HEADER, *rows]) + "\n").encode()


def test_hostile_member_names_never_write_outside_the_cache(tmp_path, caplog):
    png = _png()
    members = {
        "Data_Entry_2017.csv": _csv(["a.png", "b.png", "c.png", "d.png", "gone.png"]),
        "../images_001/images/a.png": png,
        "/abs/images_001/images/b.png": png,
        "images_001/images/../../../../escape/images_001/images/c.png": png,
        "images_001/images/d.png": png,
        "images_001/images/no_row.png": png,
    }
    (tmp_path / "in").mkdir()
    archive = _archive(tmp_path / "in" / "hostile.zip", members)
    cache = tmp_path / "cache"
    before = {p for p in tmp_path.rglob("*")}
    store = ZipStore(archive, cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax"):
        catalog = build_catalog(store, ("images_001",))
    ensure_caches(store, catalog, 16, 2)
    after = {p for p in tmp_path.rglob("*")}
    assert all(p == cache or cache in p.parents for p in after - before), after - before
    assert not Path("/abs").exists() and not (tmp_path / "escape").exists()
    assert sorted(r.key for r in catalog.records) == ["a.png", "b.png", "c.png", "d.png"]
    # Images without a CSV row and CSV rows without an image: counted and reported, not fatal.
    assert "1 images have no row" in caplog.text and "1 rows of Data_Entry_2017.csv" in caplog.text
    source = ImageSource(catalog.records, store, 16, SkipLog())
    assert all(source[i] is not None for i in range(len(source)))


def test_a_split_too_small_for_a_batch_says_how_many_images_cannot_be_decoded(tmp_path):
    names = ["a.png", "b.png", "c.png", "d.png"]
    members = {"Data_Entry_2017.csv": _csv(names)}
    members |= {f"images_001/images/{n}": b"not an image" for n in names[:3]}
    members["images_001/images/d.png"] = _png()
    store = ZipStore(_archive(tmp_path / "a.zip", members), cache_dir=tmp_path / "cache")
    catalog = build_catalog(store, ("images_001",))
    ensure_caches(store, catalog, 16, 2)
    source = ImageSource(catalog.records, store, 16, SkipLog())
    assert source.undecodable() == {"not_an_image": 3}
    with pytest.raises(DataError) as info:
        train_dataset(source, 8, seed=0, num_threads=1)
    assert "fewer than one batch of 8" in str(info.value)
    assert "(and 3 of them cannot be decoded: 3 not_an_image)" in str(info.value)


def test_a_folder_given_as_an_archive_and_a_file_as_a_folder_say_so(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"tree is a folder, not a ZIP archive \(--source folder"):
        ZipStore(tmp_path / "tree")
    with pytest.raises(DataError, match=r"data.zip is a file, not a folder \(--source archive"):
        FolderStore(tmp_path / "data.zip")


def test_truncated_archive_is_a_clear_error(tmp_path):
    members = {"Data_Entry_2017.csv": _csv(["a.png"]), "images_001/images/a.png": _png()}
    archive = _archive(tmp_path / "a.zip", members)
    data = archive.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable ZIP archive"):
        ZipStore(tmp_path / "cut.zip")


def _cached(store: ZipStore | FolderStore, catalog: Catalog) -> tuple[ImageSource, SkipLog]:
    """The catalog's images at 16 px from its freshly written stage caches, and their skips."""
    ensure_caches(store, catalog, 16, 2)
    skips = SkipLog()
    return ImageSource(catalog.records, store, 16, skips), skips


def test_wrong_crc_is_detected_and_counted(tmp_path):
    good, bad = _png(10), _png(200)
    members = {
        "Data_Entry_2017.csv": _csv(["a.png", "b.png"]),
        "images_001/images/a.png": good,
        "images_001/images/b.png": bad,
    }
    archive = _archive(tmp_path / "a.zip", members)
    raw = bytearray(archive.read_bytes())
    at = raw.index(bad) + len(bad) - 6  # inside the IEND chunk: still a decodable PNG
    raw[at] ^= 0x01
    archive.write_bytes(bytes(raw))
    store = ZipStore(archive, cache_dir=tmp_path / "cache")
    source, skips = _cached(store, build_catalog(store, ("images_001",)))
    assert source[0] is not None and source[1] is None
    assert skips.by_reason() == {"unreadable (CorruptMemberError)": 1}


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_dangling_symlink_in_an_image_folder_is_skipped_and_counted(tmp_path):
    root = tmp_path / "tree"
    for name in ("normal", "pneumonia"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(_png(40 * i))
    (root / "normal" / "gone.png").symlink_to(tmp_path / "deleted.png")
    store = FolderStore(root, cache_dir=tmp_path / "cache")
    source, skips = _cached(store, build_imagefolder_catalog(store, ("normal",)))
    decoded = [source[i] is not None for i in range(len(source))]
    assert decoded.count(False) == 1 and len(decoded) == 7
    assert skips.by_reason() == {"unreadable (FileNotFoundError)": 1}


def test_a_corrupt_local_header_costs_only_its_member(tmp_path):
    members = {
        "Data_Entry_2017.csv": _csv(["a.png", "b.png"]),
        "images_001/images/a.png": _png(10),
        "images_001/images/b.png": _png(200),
    }
    archive = _archive(tmp_path / "a.zip", members)
    with zipfile.ZipFile(archive) as z:
        offset = z.getinfo("images_001/images/b.png").header_offset
    raw = bytearray(archive.read_bytes())
    raw[offset + 8 : offset + 10] = b"\xff\x00"  # the compression method: 255, no such method
    archive.write_bytes(bytes(raw))
    store = ZipStore(archive, cache_dir=tmp_path / "cache")
    source, skips = _cached(store, build_catalog(store, ("images_001",)))
    assert source[0] is not None and source[1] is None
    assert skips.by_reason() == {"unreadable (CorruptMemberError)": 1}


# --- kaggle.json permissions ---------------------------------------------------------------


def test_world_readable_kaggle_json_warns_with_the_fix_and_is_not_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "kaggle.json"
    path.write_text('{"username": "someone", "key": "0123456789abcdef"}')
    path.chmod(0o644)
    warning = kaggle.permission_warning()
    assert warning is not None and f"chmod 600 {path}" in warning and "644" in warning
    status = kaggle.credentials_status()
    assert status.found and str(path) in status.sources
    assert any("chmod 600" in w for w in status.warnings)
    assert "0123456789abcdef" not in repr(status)
    assert os.stat(path).st_mode & 0o777 == 0o644  # never chmod-ed behind the user's back
    path.chmod(0o600)
    assert kaggle.permission_warning() is None


# --- Ctrl-C --------------------------------------------------------------------------------


def test_second_ctrl_c_interrupts_at_once():
    flag = StopFlag()
    flag(signal.SIGINT, None)
    assert flag.signal == signal.SIGINT  # first: save at the next step, then stop
    with pytest.raises(KeyboardInterrupt):
        flag(signal.SIGINT, None)
