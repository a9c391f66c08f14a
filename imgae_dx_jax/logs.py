"""Console logging of the package, shared by the command line and the notebooks."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm


def setup_logging(debug: bool) -> None:
    """Console logging: INFO for this package, warnings only for the libraries under it.

    Without ``debug``, library tracebacks are kept out of the console: their log records are
    cut to their first line, and the ignored errors of an abandoned checkpoint read (``Event
    loop is closed``, its read coroutines closed unfinished) are dropped.

    Records go to ``sys.stderr`` as it is when each is written, not as it was at the call,
    so a stream replaced later (by a test harness capturing output, and closed after it) does
    not turn a late record, such as one of Orbax's background threads, into a logging error.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
        force=True,
    )
    logging.getLogger("imgae_dx_jax").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("absl").setLevel(logging.ERROR)
        # Libraries (Orbax through absl, asyncio) log their failures with tracebacks; the
        # error we raise says what happened, so keep their lines short.
        for name in ("absl", "asyncio"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _NoTraceback) for f in logger.filters):
                logger.addFilter(_NoTraceback())
        if not isinstance(sys.unraisablehook, _DropClosedLoopCallbacks):
            sys.unraisablehook = _DropClosedLoopCallbacks(sys.unraisablehook)


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to the current ``sys.stderr``, around progress bars.

    Each record is written with ``tqdm.write``, which clears the bars drawn on the stream,
    writes the line and draws them again below it, so a record logged while a bar is drawn
    (a validation point during training) gets a line of its own instead of continuing the
    bar's; without a bar it writes the line as a plain stream handler does.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` as its own line, above any progress bar."""
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()  # as StreamHandler.emit does: the line is out before what follows
        except Exception:
            self.handleError(record)

    @property
    def stream(self) -> TextIO:
        """``sys.stderr`` at the time of the call."""
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""
        del value


class _NoTraceback(logging.Filter):
    """Drop the traceback of a library's log record and keep its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = record.getMessage().splitlines()
        record.msg, record.args = (message[0][:300] if message else ""), None
        return True


class _DropClosedLoopCallbacks:
    """An unraisable-exception hook that drops the errors of an abandoned checkpoint read.

    When Orbax cannot restore a checkpoint (a corrupt one, then set aside), the event loop
    of that restore closes while TensorStore reads of it are still in flight; each read that
    finishes later calls ``loop.call_soon_threadsafe`` on the closed loop (``RuntimeError:
    Event loop is closed``), and each read coroutine closed unfinished turns the
    ``GeneratorExit`` it is closed with into another exception (Orbax's "Encountered error
    while reading array index", with the array's whole TensorStore spec). Python prints each
    error it ignores with a traceback, dozens of them. Nothing is lost: the restore had
    already failed and was reported. Every other unraisable exception goes to the previous
    hook.
    """

    def __init__(self, previous: Callable[[sys.UnraisableHookArgs], Any]) -> None:
        self.previous = previous
        """The hook that was in place (Python's default prints the traceback)."""

    def __call__(self, unraisable: sys.UnraisableHookArgs) -> None:
        """Drop a closed event loop's error and a closed coroutine's; pass any other one on."""
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if inspect.iscoroutine(unraisable.object) and isinstance(
            getattr(error, "__cause__", None), GeneratorExit
        ):
            return
        self.previous(unraisable)
