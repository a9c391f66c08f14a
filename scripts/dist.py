"""Build what a release hands out: the wheel, the sdist and a ready Colab/Kaggle zip.

    hatch run dist                # into dist/
    python scripts/dist.py --out /tmp/dist

``imgae-dx-jax-colab.zip`` is for people without git: ``wheels/imgae_dx_jax-*.whl``, the
generated notebooks and a short ``README.txt``. Unzipped into ``MyDrive/imgae_dx_jax`` on Google
Drive, the Colab notebook's install cell finds the wheel in ``DRIVE_ROOT/wheels``.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

from hatchling.build import build_sdist, build_wheel

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
COLAB_ZIP = "imgae-dx-jax-colab.zip"

README = """\
ImgAE-Dx JAX {version}: the package as a wheel, and the Colab/Kaggle notebooks.

Colab: unzip this into the folder MyDrive/imgae_dx_jax of your Google Drive (so that the
wheel is at MyDrive/imgae_dx_jax/wheels/), open nih_progressive_colab.ipynb in Colab
(File -> Upload notebook, or open it from Drive) and run all cells: Drive is mounted first,
then the install cell installs the newest wheel in DRIVE_ROOT/wheels.

Kaggle: upload {wheel} as a Kaggle dataset, add it to nih_kaggle_notebook.ipynb with
"Add Input": the install cell finds it under /kaggle/input.

Anywhere else: pip install "{wheel}[cuda]" (or without [cuda] for the CPU).
"""


def build(out: Path) -> tuple[Path, Path]:
    """Build the wheel and the sdist of the checkout into ``out``.

    Returns:
        The wheel and the sdist.
    """
    out.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(ROOT)  # the PEP 517 hooks build the project in the working directory
    try:
        wheel = out / build_wheel(str(out))
        sdist = out / build_sdist(str(out))
    finally:
        os.chdir(cwd)
    return wheel, sdist


def colab_zip(wheel: Path, notebooks: list[Path], path: Path) -> Path:
    """Write ``path``: the wheel under ``wheels/``, the notebooks and a README.txt."""
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(wheel, f"wheels/{wheel.name}")
        for notebook in notebooks:
            archive.write(notebook, notebook.name)
        archive.writestr("README.txt", README.format(version=version, wheel=wheel.name))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    wheel, sdist = build(out)
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not notebooks:
        print(f"no notebooks in {NOTEBOOKS}", file=sys.stderr)
        return 1
    archive = colab_zip(wheel, notebooks, out / COLAB_ZIP)
    for path in (wheel, sdist, archive):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
