"""Shared fixtures: everything is built by code from the bundled sample."""

from __future__ import annotations

import os

import pytest

# Tests run on the CPU, and W&B never tries the network.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stage caches go to a temporary directory, never the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
