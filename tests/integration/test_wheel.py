"""The built wheel is the whole product: install it in a fresh venv, away from the checkout.

Builds the wheel with hatchling, installs it with uv into a new virtual environment (uv's cache
makes the jax install fast; the first run fills it from the package index), and runs the
console scripts from another working directory, so nothing can come from the source tree.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from venvs import ROOT, build, fresh_venv, uv_install, venv_environment

import imgae_dx_jax

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the wheel installed, and where to run things from."""

    wheel: Path
    bin: Path
    work: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv in the scratch working directory; fail with its output."""
        exe = args[0] if args[0].startswith("/") else str(self.bin / args[0])
        start = time.perf_counter()
        proc = subprocess.run(
            [exe, *args[1:]],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        print(f"{Path(exe).name} {' '.join(args[1:3])}: {time.perf_counter() - start:.1f} s")
        assert proc.returncode == 0, (
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
        return proc


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    venv, work = base / "venv", base / "work"
    work.mkdir()
    uv_install(fresh_venv(venv), str(wheel))
    env = venv_environment(venv, base / "xdg-cache")
    return Installed(wheel=wheel, bin=venv / "bin", work=work, env=env)


def test_wheel_contents(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert len(names) == len(set(names)), "duplicate entries in the wheel"
    assert "imgae_dx_jax/assets/nih-chest-xrays-sample.zip" in names
    assert "imgae_dx_jax/configs/default.yaml" in names
    assert "imgae_dx_jax/py.typed" in names  # PEP 561: type checkers use the inline hints
    packaged_configs = sorted(p.name for p in (ROOT / "imgae_dx_jax" / "configs").rglob("*.yaml"))
    wheel_configs = sorted(
        Path(n).name for n in names if n.startswith("imgae_dx_jax/configs/") and n.endswith(".yaml")
    )
    assert wheel_configs == packaged_configs
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks == sorted(
        Path(n).name for n in names if n.startswith("imgae_dx_jax/notebooks/")
    )
    dist_info = f"imgae_dx_jax-{imgae_dx_jax.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert f"{dist_info}/licenses/NOTICE" in names


def test_sdist_builds_the_same_wheel(installed: Installed, tmp_path: Path) -> None:
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "src", **safe)
    top = f"imgae_dx_jax-{imgae_dx_jax.__version__}"
    assert len(names) == len(set(names)), "duplicate entries in the sdist"
    assert f"{top}/imgae_dx_jax/configs/default.yaml" in names
    for required in ("LICENSE", "NOTICE", "README.md", "CHANGELOG.md", "pyproject.toml"):
        assert f"{top}/{required}" in names

    rebuilt = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, hatchling.build as b; print(b.build_wheel(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=tmp_path / "src" / top,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    wheel = tmp_path / "dist" / rebuilt.stdout.strip().splitlines()[-1]
    assert set(zipfile.ZipFile(wheel).namelist()) == set(
        zipfile.ZipFile(installed.wheel).namelist()
    )


def test_installed_wheel_trains_evaluates_and_predicts(installed: Installed) -> None:
    work = installed.work
    run = work / "run ae"  # a space, as in Google Drive paths
    out = installed.run(
        "imgae-train",
        "--stage",
        "images_001",
        "--epochs",
        "1",
        "--model",
        "ae",
        "--set",
        "model.ae.widths=[8,16,32]",
        "--image-size",
        "32",
        "--set",
        "train.max_steps=2",
        "--wandb",
        "disabled",
        "--run-dir",
        str(run),
    ).stdout
    assert "Held-out test" in out and "AUROC" in out
    config_yaml = (run / "config.yaml").read_text()
    assert config_yaml.startswith(f"# imgae-dx-jax {imgae_dx_jax.__version__}\n")

    out = installed.run("imgae-evaluate", "--run", str(run), "--wandb", "disabled").stdout
    assert "AUROC" in out
    assert (run / "eval" / "metrics.json").is_file()
    assert (run / "eval" / "report.html").is_file()

    with zipfile.ZipFile(ROOT / "imgae_dx_jax" / "assets" / "nih-chest-xrays-sample.zip") as z:
        member = next(n for n in z.namelist() if n.endswith(".png"))
        png = work / "xray.png"
        png.write_bytes(z.read(member))
    predictions = work / "predictions"
    installed.run("imgae-predict", str(png), "--run", str(run), "--out", str(predictions))
    assert (predictions / "predictions.csv").is_file()
    assert (predictions / "xray_overlay.png").is_file()


def test_installed_wheel_entry_points(installed: Installed) -> None:
    version = installed.run("imgae-train", "--version").stdout
    assert version.strip() == f"imgae-train {imgae_dx_jax.__version__}"
    helped = installed.run(str(installed.bin / "python"), "-m", "imgae_dx_jax.evaluate", "--help")
    assert "--run" in helped.stdout
    assert installed.run("imgae", "--version").stdout.strip() == (
        f"imgae {imgae_dx_jax.__version__}"
    )
    shown = installed.run("imgae", "config", "show", "--set", "train.max_steps=7").stdout
    assert "max_steps: 7" in shown
    # The package comes from the venv, not from the checkout.
    where = installed.run(
        str(installed.bin / "python"), "-c", "import imgae_dx_jax; print(imgae_dx_jax.__file__)"
    ).stdout
    assert "site-packages" in where and str(ROOT) not in where


def test_installed_wheel_config_show(installed: Installed) -> None:
    if not (installed.bin / "imgae-config").exists():
        pytest.skip("imgae-config is not a console script of this version")
    out = installed.run("imgae-config", "show").stdout
    assert "model" in out and "data" in out
