"""Shared fixtures: everything is built by code from the bundled sample."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from tqdm.std import tqdm

from imgae_dx_jax import progress

# Tests run on the CPU, and W&B never tries the network.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stage caches go to a temporary directory, never the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture()
def bars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every progress bar made during the test, in order, drawn (into a buffer) whatever stderr is.

    Each has tqdm's ``total``, ``n``, ``unit``, ``desc``, and ``counts``: its count after each
    update that moved it.
    """
    made: list[Any] = []

    class Recorded(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(file=io.StringIO(), disable=False)
            super().__init__(*args, **kwargs)
            self.counts: list[float] = []
            made.append(self)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if n:
                self.counts.append(self.n)
            return shown

    monkeypatch.setattr(progress, "tqdm", Recorded)
    return made
