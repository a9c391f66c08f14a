"""The wheel, built once a session for the tests that install it (see venvs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from venvs import ROOT, build_wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, freshly built with hatchling from the checkout."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("needs the project's source tree to build the wheel")
    pytest.importorskip("uv", reason="uv is in the hatch-test environment's extra-dependencies")
    pytest.importorskip("hatchling", reason="hatchling builds the wheel")
    return build_wheel(tmp_path_factory.mktemp("dist"))
