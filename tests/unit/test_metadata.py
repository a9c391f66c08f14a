"""The declared dependencies are what the package imports (pyproject.toml vs. the source)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "imgae_dx_jax"

# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "orbax": "orbax-checkpoint",
    "kagglesdk": "kaggle",  # vendored in kaggle 1.x, a dependency of kaggle 2.x
}
# Declared but never imported by the package, each for a stated reason.
NOT_IMPORTED = {"six": "kaggle imports six without declaring it"}


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("needs the project's source tree")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {normalize(re.match(r"[A-Za-z0-9._-]+", req)[0]) for req in project["dependencies"]}


def third_party_imports(package: Path) -> dict[str, str]:
    """Top-level third-party modules imported by ``package`` -> a file importing it."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found.setdefault(top, str(path.relative_to(package.parent)))
    return found


def test_every_imported_module_is_a_declared_dependency():
    deps = declared()
    missing = {
        module: where
        for module, where in third_party_imports(PACKAGE).items()
        if normalize(DISTRIBUTIONS.get(module, module)) not in deps
    }
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_every_declared_dependency_is_imported():
    imported = {normalize(DISTRIBUTIONS.get(m, m)) for m in third_party_imports(PACKAGE)}
    unused = declared() - imported - set(NOT_IMPORTED)
    assert not unused, f"declared in [project] dependencies but never imported: {unused}"


def test_import_scan_sees_third_party_modules(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(
        "import os\nimport numpy.linalg\nfrom yaml import safe_load\nfrom . import b\n"
        "from pkg import c\n\ndef f():\n    import scipy.stats\n"
    )
    assert set(third_party_imports(package)) == {"numpy", "yaml", "scipy"}


def test_the_package_is_marked_typed():
    assert (PACKAGE / "py.typed").is_file()
