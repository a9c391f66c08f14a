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


class _FailsWhenCollected:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error  # Python ignores it and calls sys.unraisablehook


def test_closed_event_loop_errors_are_dropped_and_others_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    setup_logging(debug=False)
    hook = sys.unraisablehook
    setup_logging(debug=False)
    assert sys.unraisablehook is hook  # not wrapped twice
    _FailsWhenCollected(RuntimeError("Event loop is closed"))
    _FailsWhenCollected(RuntimeError("something else"))
    assert [str(error) for error in seen] == ["something else"]
