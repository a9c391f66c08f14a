"""Every local source gives the same catalog and the same pixels for the same images."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from imgae_dx_jax.cli import overrides_from_args, train_parser
from imgae_dx_jax.config import ConfigError, load_config
from imgae_dx_jax.data import DataError, load_splits, sources
from imgae_dx_jax.data.archive import LocalFile, ZipStore
from imgae_dx_jax.data.imagefolder import build_imagefolder_catalog, patient_of
from imgae_dx_jax.data.nih import build_catalog, parse_data_entry
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog
from imgae_dx_jax.data.sources import open_store, source_stages
from imgae_dx_jax.data.split import split_catalog
from imgae_dx_jax.data.stores import FolderStore, sample_archive_path

N = 60


@pytest.fixture(scope="module")
def subset() -> dict[str, bytes]:
    """CSV trimmed to N images (half normal) and those images, by member name."""
    with zipfile.ZipFile(sample_archive_path()) as src:
        entries, _ = parse_data_entry(src.read("Data_Entry_2017.csv").decode())
        pngs = sorted(n for n in src.namelist() if n.endswith(".png"))
        normal = [n for n in pngs if entries[n.rsplit("/", 1)[1]].label == 0][: N // 2]
        abnormal = [n for n in pngs if entries[n.rsplit("/", 1)[1]].label == 1][: N // 2]
        keys = {n.rsplit("/", 1)[1] for n in normal + abnormal}
        lines = src.read("Data_Entry_2017.csv").decode().splitlines(keepends=True)
        csv = "".join(lines[:1] + [x for x in lines[1:] if x.split(",", 1)[0] in keys])
        members = {n: src.read(n) for n in sorted(normal + abnormal)}
    return {"Data_Entry_2017.csv": csv.encode(), **members}


def _zip(path: Path, members: dict[str, bytes], **options: object) -> Path:
    with zipfile.ZipFile(path, "w") as out:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0))
            info.compress_type = options.get("compression", zipfile.ZIP_STORED)  # type: ignore[assignment]
            with out.open(info, "w", force_zip64=bool(options.get("zip64"))) as f:
                f.write(data)
    return path


def _pixels(store, records) -> np.ndarray:
    source = ImageSource(records, store, 32, SkipLog())
    return np.stack([source[i]["image"] for i in range(len(records))])


def test_zip64_deflated_reordered_archives_and_folders_agree(tmp_path, subset):
    reference = ZipStore(_zip(tmp_path / "stored.zip", subset))
    variants = {
        "zip64": ZipStore(_zip(tmp_path / "zip64.zip", subset, zip64=True)),
        "deflated": ZipStore(
            _zip(tmp_path / "deflated.zip", subset, compression=zipfile.ZIP_DEFLATED)
        ),
        "reversed": ZipStore(_zip(tmp_path / "rev.zip", dict(reversed(list(subset.items()))))),
    }
    folder = tmp_path / "folder"
    for name, data in subset.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    variants["folder"] = FolderStore(folder)
    expected = build_catalog(reference, ("images_001",))
    assert len(expected.records) == N
    pixels = _pixels(reference, expected.records)
    for name, store in variants.items():
        catalog = build_catalog(store, ("images_001",))
        assert catalog.records == expected.records, name
        np.testing.assert_array_equal(_pixels(store, catalog.records), pixels, err_msg=name)
    many = dict(variants["deflated"].read_many(r.member for r in expected.records))
    assert many == {r.member: subset[r.member] for r in expected.records}


def test_a_stage_the_data_lacks_is_refused_before_any_stage_is_read(tmp_path, subset):
    store = ZipStore(_zip(tmp_path / "one-stage.zip", subset))
    with pytest.raises(DataError) as info:
        build_catalog(store, ("images_001", "images_002", "images_003"))
    message = str(info.value)
    assert "no images of images_002, images_003 found" in message
    assert f"stages present: images_001 ({N})" in message


def test_zip64_members_really_are_zip64(tmp_path, subset):
    path = _zip(tmp_path / "zip64.zip", subset, zip64=True)
    raw = path.read_bytes()
    # Each local header carries the ZIP64 extra field (id 0x0001) with 0xFFFFFFFF sizes.
    assert raw.count(b"\xff\xff\xff\xff\xff\xff\xff\xff") >= len(subset)


def test_imagefolder_tree_gives_the_same_pixels_and_labels(tmp_path, subset):
    reference = ZipStore(_zip(tmp_path / "stored.zip", subset))
    nih = build_catalog(reference, ("images_001",))
    root = tmp_path / "tree"
    for record in nih.records:
        target = root / ("No Finding" if record.label == 0 else "Disease") / record.key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subset[record.member])
    store = FolderStore(root)
    catalog = build_imagefolder_catalog(store, ("normal", "no_finding"))
    by_key = {r.key.rsplit("/", 1)[1]: r for r in catalog.records}
    assert [by_key[r.key].label for r in nih.records] == [r.label for r in nih.records]
    ordered = [by_key[r.key] for r in nih.records]
    np.testing.assert_array_equal(_pixels(store, ordered), _pixels(reference, nih.records))
    splits = split_catalog(catalog, (0.7, 0.1, 0.2), 0, True)  # no split folders: by "patient"
    assert not splits.official and all(r.label == 0 for r in splits.train)


def _tree(root: Path, layout: dict[str, int], png: bytes) -> None:
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            (root / folder / f"img{i:03d}.png").write_bytes(png)


def test_imagefolder_split_folders_are_the_splits(tmp_path, subset):
    png = next(v for k, v in subset.items() if k.endswith(".png"))
    root = tmp_path / "chest_xray"
    _tree(
        root,
        {"train/NORMAL": 40, "train/PNEUMONIA": 40, "test/NORMAL": 5, "test/PNEUMONIA": 7},
        png,
    )
    catalog = build_imagefolder_catalog(FolderStore(root), ("normal",))
    splits = split_catalog(catalog, (0.7, 0.1, 0.2), 3, True)
    assert splits.official
    assert splits.counts()["test"] == {"normal": 5, "abnormal": 7}
    val = splits.counts()["val"]
    assert val["normal"] > 0 and val["abnormal"] > 0  # carved from train/, both classes
    assert all(r.label == 0 and r.key.startswith("train/") for r in splits.train)
    assert splits.counts()["train"]["normal"] + val["normal"] == 40
    assert split_catalog(catalog, (0.7, 0.1, 0.2), 3, True) == splits  # seeded
    _tree(root, {"val/NORMAL": 2, "val/PNEUMONIA": 3}, png)
    with_val = split_catalog(
        build_imagefolder_catalog(FolderStore(root), ("normal",)), (0.7, 0.1, 0.2), 3, True
    )
    assert with_val.counts() == {
        "train": {"normal": 40, "abnormal": 0},
        "val": {"normal": 2, "abnormal": 3},
        "test": {"normal": 5, "abnormal": 7},
    }


def test_split_folders_that_share_a_patient_are_refused(tmp_path, subset):
    png = next(v for k, v in subset.items() if k.endswith(".png"))
    root = tmp_path / "chest_xray"
    names = {
        "train/NORMAL": ["IM-0001-0001.png", "IM-0002-0001.png", "IM-0003-0001.png"],
        "test/NORMAL": ["IM-0004-0001.png"],
        "test/PNEUMONIA": ["IM-0001-0002.png", "IM-0005-0001.png"],  # IM-0001 trains too
    }
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            (root / folder / name).write_bytes(png)
    catalog = build_imagefolder_catalog(FolderStore(root), ("normal",), r"^(IM-\d+)")
    with pytest.raises(DataError, match=r"1 patient\(s\) .* \(e\.g\. IM-0001: train, test\)"):
        split_catalog(catalog, (0.7, 0.1, 0.2), 0, True)
    by_patient = split_catalog(catalog, (0.7, 0.1, 0.2), 0, False)  # the way out it names
    assert (
        len({s for s in ("train", "val", "test") for r in by_patient[s] if r.patient == "IM-0001"})
        == 1
    )
    # Without a pattern every file is its own patient: the folders are kept.
    plain = build_imagefolder_catalog(FolderStore(root), ("normal",))
    assert split_catalog(plain, (0.7, 0.1, 0.2), 0, True).counts()["test"] == {
        "normal": 1,
        "abnormal": 2,
    }


def test_a_copy_of_the_tree_inside_it_is_used_once(tmp_path, subset, caplog):
    # Kaggle's pediatric pneumonia download holds chest_xray/train/... and, again,
    # chest_xray/chest_xray/train/...: without care every image is counted twice, as two
    # patients that a split by patient can put in training and in test.
    png = next(v for k, v in subset.items() if k.endswith(".png"))
    root = tmp_path / "chest_xray"
    for top in (root, root / "chest_xray"):
        for folder, n in (("train/NORMAL", 6), ("test/NORMAL", 2), ("test/PNEUMONIA", 3)):
            (top / folder).mkdir(parents=True)
            for i in range(n):
                (top / folder / f"{i}.png").write_bytes(png)
    (root / "other" / "train" / "NORMAL").mkdir(parents=True)  # another image: kept
    (root / "other" / "train" / "NORMAL" / "6.png").write_bytes(png)
    with caplog.at_level("WARNING", logger="imgae_dx_jax"):
        catalog = build_imagefolder_catalog(FolderStore(root), ("normal",))
    assert sorted(r.key for r in catalog.records) == sorted(
        [f"train/NORMAL/{i}.png" for i in range(6)]
        + ["test/NORMAL/0.png", "test/NORMAL/1.png", "other/train/NORMAL/6.png"]
        + [f"test/PNEUMONIA/{i}.png" for i in range(3)]
    )
    assert "11 images are copies of others at the same path below another folder" in caplog.text
    assert "(e.g. chest_xray/test/NORMAL/0.png, a copy of test/NORMAL/0.png)" in caplog.text


def test_imagefolder_source_end_to_end_and_errors(tmp_path, subset):
    png = next(v for k, v in subset.items() if k.endswith(".png"))
    _tree(
        tmp_path / "t",
        {"train/normal": 20, "train/covid": 4, "test/normal": 4, "test/covid": 4},
        png,
    )
    config = load_config(
        overrides=[
            "data.source=imagefolder",
            f"data.path={tmp_path / 't'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ]
    )
    store, catalog, splits = load_splits(config.data)
    assert catalog.stages == ("all",) and len(splits.test) == 8
    assert ImageSource(splits.train, store, 64, SkipLog())[0]["image"].shape == (64, 64, 1)
    _tree(tmp_path / "only", {"a/PNEUMONIA": 3}, png)
    with pytest.raises(DataError, match="no class folder is normal"):
        build_imagefolder_catalog(FolderStore(tmp_path / "only"), ("normal",))


def test_corrupt_member_is_skipped_not_fatal(tmp_path, subset):
    path = _zip(tmp_path / "stored.zip", subset)
    store = ZipStore(path)
    catalog = build_catalog(store, ("images_001",))
    victim = catalog.records[0].member
    raw = bytearray(path.read_bytes())
    at = raw.index(subset[victim]) + 100
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    skips = SkipLog()
    source = ImageSource(catalog.records[:3], ZipStore(path), 32, skips)
    assert source[0] is None and source[1] is not None
    assert skips.by_reason() == {"unreadable (CorruptMemberError)": 1}


def test_bad_archives_and_configs_are_clear(tmp_path):
    (tmp_path / "not.zip").write_bytes(b"hello")
    with pytest.raises(DataError, match="not a readable ZIP"):
        ZipStore(tmp_path / "not.zip")
    missing = load_config(overrides=["data.source=imagefolder", f"data.path={tmp_path / 'x.zip'}"])
    with pytest.raises(DataError, match=r"image folder not found: .*x\.zip \(give a folder"):
        open_store(missing.data)
    with pytest.raises(ConfigError, match="http"):
        load_config(overrides=["data.source=url", "data.path=/local/file.zip"])
    assert load_config(overrides=["data.source=kaggle"]).data.path == ""  # default dataset
    with pytest.raises(ConfigError, match=r"data\.retries"):
        load_config(overrides=["data.retries=-1"])
    args = train_parser().parse_args(["--cache-dir", "/drive/cache", "--source", "kaggle"])
    overrides = overrides_from_args(args)
    assert "data.cache_dir=/drive/cache" in overrides
    assert load_config(overrides=overrides).data.cache_dir == "/drive/cache"


PEDIATRIC = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("top/NORMAL/NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
        ("PNEUMONIA/person1000_bacteria_2931.jpeg", "person1000"),
        ("PNEUMONIA/other.jpeg", None),
    ],
)
def test_pediatric_pattern_maps_file_names_to_patients(name, patient):
    assert patient_of(name, re.compile(PEDIATRIC)) == patient
    assert patient_of(name, None) == name  # no pattern: each file its own patient


def test_pattern_without_group_uses_the_whole_match():
    assert patient_of("a/pat17-scan3.png", re.compile(r"pat\d+")) == "pat17"


def test_patient_pattern_groups_the_split_and_counts_strays(tmp_path, subset, caplog):
    png = next(v for k, v in subset.items() if k.endswith(".png"))
    root = tmp_path / "kids" / "top"  # class folders nested under one top folder
    for patient in range(12):
        for image in range(3):
            label = "NORMAL" if patient % 3 else "PNEUMONIA"
            path = root / label / f"IM-{patient:04d}-{image:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
    (root / "NORMAL" / "stray.png").write_bytes(png)
    config = load_config(
        overrides=[
            "data.source=imagefolder",
            f"data.path={tmp_path / 'kids'}",
            f"data.patient_pattern={PEDIATRIC}",
            "data.cache=false",
        ]
    )
    with caplog.at_level("INFO", logger="imgae_dx_jax"):
        _, catalog, splits = load_splits(config.data)
    (stray,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "37 images of 13 patients; 1 file names do not match it (e.g. top/NORMAL/stray.png)" in (
        stray.getMessage()
    )
    assert {r.patient for r in catalog.records} == {f"IM-{p:04d}" for p in range(12)} | {
        "top/NORMAL/stray.png"
    }
    # Every file of a patient (read from its name, not from the catalog) is in one split.
    pattern = re.compile(PEDIATRIC)
    where: dict[str | None, set[str]] = {}
    for name in ("train", "val", "test"):
        for record in splits[name]:
            where.setdefault(patient_of(record.key, pattern), set()).add(name)
    assert len(where) > 6 and all(len(names) == 1 for names in where.values()), where


def test_image_folder_is_one_stage_and_ignores_nih_stages():
    nih = load_config(overrides=["data.stages=[images_002,images_003]"])
    assert source_stages(nih.data) == ("images_002", "images_003")
    folder = load_config(
        overrides=["data.source=imagefolder", "data.path=x", "data.stages=[images_002]"]
    )
    assert source_stages(folder.data) == ("all",)


def test_bad_patient_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.patient_pattern: not a valid regular expression"):
        load_config(overrides=["data.source=imagefolder", "data.path=x", "data.patient_pattern=(a"])
    with pytest.raises(ConfigError, match=r"data\.intensity: unknown mode 'zscore'"):
        load_config(overrides=["data.intensity=zscore"])


DEV_SET = Path(__file__).parents[3] / "benchmarks" / "data" / "pediatric-pneumonia-dev.zip"


@pytest.mark.skipif(not DEV_SET.is_file(), reason="in the repository, not the sdist")
def test_packaged_pediatric_config_reads_the_development_set():
    config = load_config("pediatric")
    assert config.data.source == "imagefolder" and config.data.patient_pattern == PEDIATRIC
    path = Path(__file__).parents[3] / config.data.path
    assert path == DEV_SET
    catalog = build_imagefolder_catalog(
        ZipStore(path), config.data.normal_classes, config.data.patient_pattern
    )
    assert len(catalog.records) == 2341
    assert sum(r.label == 0 for r in catalog.records) == 1341
    assert len({r.patient for r in catalog.records}) == 1953


def test_a_downloaded_url_file_that_is_no_zip_is_removed(tmp_path, monkeypatch):
    # A server without Range support is downloaded whole into the cache (open_url); an HTML
    # page that arrived instead of the archive must not fail every later run too.
    download = tmp_path / "downloads" / "0123-archive.zip"
    download.parent.mkdir()
    download.write_bytes(b"<html>sign in</html>")
    monkeypatch.setattr(sources, "open_url", lambda *args, **kwargs: LocalFile(download))
    data = load_config(
        overrides=["data.source=url", "data.path=https://host.example/archive.zip?sig=1"]
    ).data
    with pytest.raises(DataError) as info:
        open_store(data)
    assert "url https://host.example/archive.zip is not a readable ZIP archive" in str(info.value)
    assert "the server sent 20 bytes; the download is removed" in str(info.value)
    assert not download.exists()
