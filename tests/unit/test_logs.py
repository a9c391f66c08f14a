"""Console logging: the package's records reach the current standard error."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from imgae_dx_jax.logs import setup_logging


def test_records_follow_a_replaced_and_closed_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(debug=False)
    first.close()  # as a test harness closes the stream it captured output in
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("imgae_dx_jax.test").info("written after the first stream closed")
    assert second.getvalue().endswith(" INFO written after the first stream closed\n")
