"""End to end from a class-folder tree: train, evaluate, resume; split by patient."""

from __future__ import annotations

import json
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from imgae_dx_jax.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
PEDIATRIC_ZIP = ROOT / "benchmarks" / "data" / "pediatric-pneumonia-dev.zip"
PATTERN = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"
pytestmark = pytest.mark.skipif(
    not PEDIATRIC_ZIP.is_file(), reason="the development set is in the repository, not the sdist"
)


def _class_tree(root: Path, per_class: int = 32) -> dict[str, str]:
    """Copy pediatric images of patients with several files into ``root/<class>/``.

    Returns:
        file name -> patient, from the name.
    """
    pattern = re.compile(PATTERN)
    patients: dict[str, str] = {}
    with zipfile.ZipFile(PEDIATRIC_ZIP) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".jpeg"))
        for label in ("NORMAL", "PNEUMONIA"):
            files = defaultdict(list)
            for member in members:
                name = member.rsplit("/", 1)[1]
                if f"/{label}/" in member:
                    files[pattern.match(name).group(1)].append(member)  # type: ignore[union-attr]
            # Half the files from patients with several (two each), half from single-file ones.
            several = [ms[:2] for ms in files.values() if len(ms) > 1][: per_class // 4]
            single = [ms for ms in files.values() if len(ms) == 1][: per_class // 2]
            chosen = [m for ms in several + single for m in ms]
            (root / label).mkdir(parents=True)
            for member in chosen[:per_class]:
                name = member.rsplit("/", 1)[1]
                (root / label / name).write_bytes(archive.read(member))
                patients[name] = pattern.match(name).group(1)  # type: ignore[union-attr]
    return patients


@pytest.mark.slow
def test_train_and_evaluate_from_a_class_folder_tree_split_by_patient(tmp_path, capsys):
    tree = tmp_path / "chest_xray"
    patients = _class_tree(tree)
    assert len(set(patients.values())) < len(patients)  # some patients have several files
    run = tmp_path / "run"
    args = [
        "--source",
        "imagefolder",
        "--data",
        str(tree),
        "--stage",
        "images_002",  # an NIH stage: ignored for an image folder
        "--model",
        "ae",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--run-dir",
        str(run),
        "--wandb",
        "disabled",
    ]
    for item in (
        "model.ae.widths=[4,8]",
        "model.ae.latent_dim=4",
        "train.max_steps=3",
        "data.split=[0.5,0.25,0.25]",
        f"data.patient_pattern={PATTERN}",
    ):
        args += ["--set", item]
    assert train_main(args) == 0
    assert "AUROC" in capsys.readouterr().out

    manifest = json.loads((run / "splits.json").read_text())
    where: dict[str, set[str]] = defaultdict(set)
    for split, keys in manifest.items():
        assert keys, split
        for key in keys:
            where[patients[key.rsplit("/", 1)[1]]].add(split)
    assert all(len(splits) == 1 for splits in where.values()), where
    assert any(
        sum(patients[k.rsplit("/", 1)[1]] == p for ks in manifest.values() for k in ks) > 1
        for p in where
    )  # a patient with several files is kept together

    assert train_main(args) == 0  # rerun: resumes its stage, max_steps already reached
    assert "resuming from checkpoint 3 (stage all," in capsys.readouterr().err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in lines if "stage" in r} == {"all"}

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["stages"] == ["all"]
    counts = metrics["split_counts"]["test"]
    assert (metrics["n_normal"], metrics["n_abnormal"]) == (counts["normal"], counts["abnormal"])
    assert counts["normal"] and counts["abnormal"]
    assert 0.0 <= metrics["auroc"] <= 1.0
