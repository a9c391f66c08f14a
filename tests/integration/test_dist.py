"""``hatch run dist`` (scripts/dist.py): wheel, sdist and the Colab zip, built in a temp dir."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import imgae_dx_jax

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dist.py"


def test_dist_builds_wheel_sdist_and_colab_zip(tmp_path):
    if not SCRIPT.is_file():
        pytest.skip("needs the project's source tree")
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling builds the wheel")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=tmp_path,  # the script builds the checkout wherever it is started
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    version = imgae_dx_jax.__version__
    wheel = out / f"imgae_dx_jax-{version}-py3-none-any.whl"
    assert wheel.is_file()
    assert (out / f"imgae_dx_jax-{version}.tar.gz").is_file()
    assert "imgae_dx_jax/py.typed" in zipfile.ZipFile(wheel).namelist()

    names = set(zipfile.ZipFile(out / "imgae-dx-jax-colab.zip").namelist())
    notebooks = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert names == {f"wheels/{wheel.name}", "README.txt", *notebooks}
    with zipfile.ZipFile(out / "imgae-dx-jax-colab.zip") as archive:
        assert archive.read(f"wheels/{wheel.name}") == wheel.read_bytes()
        assert "MyDrive/imgae_dx_jax" in archive.read("README.txt").decode()
