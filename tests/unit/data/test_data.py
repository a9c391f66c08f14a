from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from imgae_dx_jax.config import load_config
from imgae_dx_jax.data import DataError, load_splits
from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.images import ImageDecodeError, decode_image
from imgae_dx_jax.data.nih import (
    build_catalog,
    locate_images,
    parse_data_entry,
    stage_of_index,
)
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset, train_dataset
from imgae_dx_jax.data.split import split_catalog
from imgae_dx_jax.data.stores import FolderStore, sample_archive_path

QUIRK_CSV = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
    "00000001_001.png,Emphysema|Cardiomegaly,1,1,058Y,M,PA,2894,2729,0.143,0.143\n"
    "\n"
    "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.168,0.168\n"
)


def test_csv_header_quirk_and_labels():
    entries, others = parse_data_entry(QUIRK_CSV)
    assert others == 0
    assert set(entries) == {"00000001_000.png", "00000001_001.png", "00000002_000.png"}
    first = entries["00000001_001.png"]
    assert first.findings == ("Cardiomegaly", "Emphysema") and first.label == 1
    assert (first.patient, first.age, first.sex, first.view) == ("1", 58, "M", "PA")
    normal = entries["00000002_000.png"]
    assert normal.findings == () and normal.label == 0 and normal.view == "AP"


def test_csv_keeps_only_the_rows_of_the_given_images():
    entries, others = parse_data_entry(QUIRK_CSV, images={"00000002_000.png", "absent.png"})
    assert entries == {"00000002_000.png": parse_data_entry(QUIRK_CSV)[0]["00000002_000.png"]}
    assert others == 2  # the rows of the two images left out
    with pytest.raises(DataError, match="unexpected header"):  # every row is still checked
        parse_data_entry("Image,Labels\nx.png,No Finding\n", images=set())


def test_csv_with_wrong_header_is_rejected():
    with pytest.raises(DataError, match="unexpected header"):
        parse_data_entry("Image,Labels\nx.png,No Finding\n")


def test_sample_catalog_matches_the_csv():
    store = ZipStore(sample_archive_path())
    catalog = build_catalog(store, ("images_001",))
    assert len(catalog.records) == 1000
    labels = [r.label for r in catalog.records]
    # 500 "No Finding" images except one relabelled Pneumonia in the 2020 labels.
    assert labels.count(0) == 499
    pneumonia = next(r for r in catalog.records if r.key == "00000193_019.png")
    assert pneumonia.label == 1 and "Pneumonia" in pneumonia.findings
    assert {r.stage for r in catalog.records} == {"images_001"}
    with pytest.raises(DataError, match="stages present: images_001"):
        build_catalog(store, ("images_002",))


def test_stage_from_flat_layout_follows_nih_file_order():
    assert stage_of_index(0) == "images_001"
    assert stage_of_index(4998) == "images_001"
    assert stage_of_index(4999) == "images_002"
    assert stage_of_index(112_119) == "images_012"
    names = ["images/b.png", "images/a.png", "Data_Entry_2017.csv"]
    assert locate_images(names) == {
        "a.png": ("images/a.png", "images_001"),
        "b.png": ("images/b.png", "images_001"),
    }


def test_folder_store_gives_the_same_catalog(tmp_path):
    with zipfile.ZipFile(sample_archive_path()) as archive:
        members = [n for n in archive.namelist() if n.endswith(".csv")][:2]
        members += [n for n in archive.namelist() if n.endswith(".png")][:50]
        archive.extractall(tmp_path, members)
    folder = build_catalog(FolderStore(tmp_path), ("images_001",))
    zipped = build_catalog(ZipStore(sample_archive_path()), ("images_001",))
    keys = {r.key for r in folder.records}
    assert len(keys) == 50
    assert [r for r in zipped.records if r.key in keys] == [r for r in folder.records]


def test_patient_split_is_disjoint_and_train_is_normal_only():
    config = load_config(overrides=["data.cache=false"])
    _, catalog, splits = load_splits(config.data)
    patients = {name: {r.patient for r in splits[name]} for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert all(r.label == 0 for r in splits.train)
    counts = splits.counts()
    assert counts["val"]["abnormal"] > 0 and counts["test"]["abnormal"] > 0
    # Every image of a val/test patient is kept; train patients' abnormal images are dropped.
    held_out = patients["val"] | patients["test"]
    dropped = [r for r in catalog.records if r.patient not in held_out and r.label == 1]
    total = sum(len(splits[n]) for n in ("train", "val", "test"))
    assert total + len(dropped) == len(catalog.records)
    # Roughly 70/10/20 of patients.
    n = len({r.patient for r in catalog.records})
    assert 0.55 < (n - len(held_out)) / n < 0.85


def test_split_does_not_depend_on_which_stages_are_loaded():
    config = load_config(overrides=["data.cache=false"])
    _, catalog, _ = load_splits(config.data)
    half = type(catalog)(catalog.records[:500], catalog.stages, None)
    full = split_catalog(catalog, (0.7, 0.1, 0.2), 0, True)
    part = split_catalog(half, (0.7, 0.1, 0.2), 0, True)
    where = {r.key: name for name in ("train", "val", "test") for r in full[name]}
    for name in ("train", "val", "test"):
        assert all(where[r.key] == name for r in part[name])


def test_official_test_list_defines_the_test_split():
    config = load_config(overrides=["data.cache=false"])
    _, catalog, _ = load_splits(config.data)
    test_patients = {"1", "2", "3"}
    official = frozenset(r.key for r in catalog.records if r.patient in test_patients)
    with_list = type(catalog)(catalog.records, catalog.stages, official)
    splits = split_catalog(with_list, (0.7, 0.1, 0.2), 0, True)
    assert splits.official
    assert {r.patient for r in splits.test} == test_patients


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_modes_to_one_channel():
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    rgba = Image.fromarray(np.dstack([gradient] * 3 + [np.full_like(gradient, 128)]), "RGBA")
    out = decode_image(_png(rgba), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert out[0, 0] < 10 and out[0, -1] > 240
    sixteen = Image.fromarray(gradient.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    out16 = decode_image(_png(sixteen), 64)
    assert out16.dtype == np.uint8 and out16.min() == 0 and out16.max() == 255
    palette = Image.fromarray(gradient, "L").convert("P")
    assert decode_image(_png(palette), 64).shape == (64, 64)
    jpeg = io.BytesIO()
    Image.fromarray(gradient, "L").save(jpeg, format="JPEG")
    assert abs(int(decode_image(jpeg.getvalue(), 64)[0, -1]) - 252) < 8


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"not an image at all", "not_an_image"),
        (_png(Image.new("L", (64, 64)))[:60], "corrupt"),
    ],
)
def test_bad_bytes_raise_a_counted_reason(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, 32)
    assert info.value.reason == reason


def test_pipeline_batches_shuffles_and_skips():
    config = load_config(overrides=["data.cache=false"])
    store, _, splits = load_splits(config.data)
    skips = SkipLog()
    source = ImageSource(splits.train[:40], store, 32, skips)
    first = [next(iter(train_dataset(source, 8, seed=3, num_threads=2)))["index"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])  # seeded
    it = iter(train_dataset(source, 8, seed=3, num_threads=2))
    seen = np.concatenate([next(it)["index"] for _ in range(5)])
    assert sorted(seen.tolist()) == list(range(40))  # one epoch = every image once
    batch = next(iter(eval_dataset(source, 16, 2)))
    assert batch["image"].shape == (16, 32, 32, 1) and batch["image"].dtype == np.uint8


def test_unreadable_images_are_skipped_and_all_failing_is_an_error(tmp_path):
    config = load_config(overrides=["data.cache=false"])
    store, _, splits = load_splits(config.data)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        for record in splits.test[:5]:
            archive.writestr(record.member, store.read(record.member))
        for record in splits.test[5:8]:
            archive.writestr(record.member, b"garbage")
    bad_store = ZipStore(broken)
    skips = SkipLog()
    source = ImageSource(splits.test[:8], bad_store, 32, skips)
    n = sum(len(b["index"]) for b in eval_dataset(source, 4, 2))
    assert n == 5 and skips.by_reason() == {"not_an_image": 3}
    all_bad = ImageSource(splits.test[5:8], bad_store, 32, SkipLog())
    with pytest.raises(DataError, match="none of the 3 images"):
        list(eval_dataset(all_bad, 4, 1))
