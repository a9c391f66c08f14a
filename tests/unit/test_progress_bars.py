"""Progress bars: drawn on a terminal with their count and rate, never into a file or a pipe."""

from __future__ import annotations

import io
import sys

import pytest

from imgae_dx_jax.progress import progress_bar


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [Terminal(), io.StringIO()], ids=["terminal", "file"])
def test_a_bar_is_drawn_on_a_terminal_only(monkeypatch, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    with progress_bar("caching images_001", 5, "img") as bar:
        bar.update(2)
        bar.update(3)
    shown = stream.getvalue()
    if isinstance(stream, Terminal):
        assert "caching images_001" in shown and "5/5" in shown and "img/s" in shown
    else:
        assert shown == ""


def test_a_byte_count_is_scaled(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress_bar("downloading archive.zip", 3_000_000, "B", unit_scale=True) as bar:
        bar.update(3_000_000)
    assert "3.00M/3.00M" in sys.stderr.getvalue()
