"""Console logging of the package, shared by the command line and the notebooks."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


def setup_logging(debug: bool) -> None:
    """Console logging: INFO for this package, warnings only for the libraries under it.

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


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to the current ``sys.stderr``."""

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
