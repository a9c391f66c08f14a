"""Console logging: the package's records reach the current standard error."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Generator

import pytest
from tqdm import tqdm

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


def test_a_record_logged_under_a_progress_bar_gets_its_own_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging(debug=False)
    with tqdm(total=10, desc="train", file=stream, disable=False, ncols=60) as bar:
        bar.update(3)
        logging.getLogger("imgae_dx_jax.test").info("validation point")
        bar.update(2)
    text = stream.getvalue()
    line = next(line for line in text.splitlines() if "validation point" in line)
    assert re.fullmatch(r"(\r *\r)?\d\d:\d\d:\d\d INFO validation point", line), repr(line)
    assert "5/10" in text.split("validation point", 1)[1]  # the bar is drawn again below


class _FailsWhenCollected:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error  # Python ignores it and calls sys.unraisablehook


@pytest.fixture
def unraisables(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """The ignored errors that reach the hook in place before setup_logging wrapped it."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    setup_logging(debug=False)
    return seen


def test_closed_event_loop_errors_are_dropped_and_others_kept(
    unraisables: list[BaseException | None],
) -> None:
    seen = unraisables
    hook = sys.unraisablehook
    setup_logging(debug=False)
    assert sys.unraisablehook is hook  # not wrapped twice
    _FailsWhenCollected(RuntimeError("Event loop is closed"))
    _FailsWhenCollected(RuntimeError("something else"))
    assert [str(error) for error in seen] == ["something else"]


class _Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield


async def _read_array() -> None:
    try:
        await _Suspend()
    except BaseException as e:  # as Orbax's _read_array_index_and_device_put does
        raise Exception("Encountered error while reading array index") from e


def test_abandoned_read_coroutines_are_dropped_and_others_kept(
    unraisables: list[BaseException | None],
) -> None:
    seen = unraisables
    coroutine = _read_array()
    coroutine.send(None)  # suspended mid-read, as a read of a failed restore is left
    del coroutine  # closed unfinished: GeneratorExit becomes another exception, ignored
    _FailsWhenCollected(Exception("Encountered error while reading array index"))
    assert [str(error) for error in seen] == ["Encountered error while reading array index"]
    assert seen[0] is not None and seen[0].__cause__ is None  # the one not from a coroutine
