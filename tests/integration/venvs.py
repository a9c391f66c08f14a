"""The built wheel and fresh virtual environments, for the tests that install the package.

``test_wheel.py`` installs the wheel into a fresh venv and runs its console scripts;
``test_notebooks.py`` makes a venv holding only the wheel's dependencies and lets the notebooks'
install cells pip-install the wheel into it. uv installs offline from its cache first (a warm
cache needs no network at all), and from the package index only when that fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# tests/conftest.py points XDG_CACHE_HOME at a temporary directory once the session starts; uv
# must keep using the real cache, so take the environment as it was when this module was imported
# (at collection, before any fixture ran).
ENV = dict(os.environ)


def uv(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m uv`` (uv is a dependency of the hatch-test environment)."""
    env = {k: v for k, v in ENV.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "uv", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def build(target: str, dist: Path, source: Path = ROOT) -> Path:
    """Build ``source``'s ``wheel`` or ``sdist`` with hatchling into ``dist``; return its path."""
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, hatchling.build as b; print(b.build_{target}(sys.argv[1]))",
            str(dist),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    built = dist / build.stdout.strip().splitlines()[-1]
    assert built.is_file(), build.stdout
    return built


def build_wheel(dist: Path, source: Path = ROOT) -> Path:
    """Build the wheel of ``source`` with hatchling into ``dist``; return its path."""
    return build("wheel", dist, source)


def fresh_venv(path: Path, pip: bool = False) -> Path:
    """A new venv of this interpreter's Python; return its ``python``.

    ``pip``: also install pip in it, from the copy bundled with Python (ensurepip, offline), as
    on Colab and Kaggle, where notebooks install packages with pip.
    """
    made = uv("venv", "--quiet", "--python", sys.executable, str(path))
    assert made.returncode == 0, made.stderr
    python = path / "bin" / "python"
    if pip:
        seeded = subprocess.run(
            [str(python), "-m", "ensurepip", "--default-pip"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert seeded.returncode == 0, seeded.stderr
    return python


def uv_install(python: Path, *requirements: str) -> None:
    """Install into the venv of ``python``: offline from uv's cache, else from the index."""
    start = time.perf_counter()
    args = ("pip", "install", "--quiet", "--python", str(python), *requirements)
    proc = uv(*args[:3], "--offline", *args[3:])
    if proc.returncode != 0:
        proc = uv(*args)
    assert proc.returncode == 0, proc.stderr
    print(f"\nuv installed {' '.join(Path(r).name for r in requirements)}", end="")
    print(f" in {time.perf_counter() - start:.1f} s")


def uv_uninstall(python: Path, *packages: str) -> None:
    """Remove packages (not their dependencies) from the venv of ``python``."""
    proc = uv("pip", "uninstall", "--quiet", "--python", str(python), *packages)
    assert proc.returncode == 0, proc.stderr


def venv_environment(venv: Path, cache: Path) -> dict[str, str]:
    """The environment for running the venv's programs: its ``bin`` first on PATH, nothing of
    the test environment's Python, the CPU, no W&B, caches under ``cache``."""
    # Without PYTHONDONTWRITEBYTECODE the first command writes the .pyc files of what it
    # imports and every later one reuses them (uv installs without compiling bytecode).
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in ENV.items() if k not in dropped}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        JAX_PLATFORMS="cpu",
        WANDB_MODE="disabled",
        XDG_CACHE_HOME=str(cache),  # the stage cache stays in the temp dir
        MPLBACKEND="Agg",
    )
    return env
