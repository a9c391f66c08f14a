"""Every error a user can fix, under one base class, and the exit status each one ends with.

The command-line entry points (:func:`imgae_dx_jax.cli.run_cli`) catch :class:`ImgaeError`,
print its message (without a traceback unless ``--debug``) and exit with its
:attr:`~ImgaeError.exit_code`: 2 for a problem to fix, 128 + the signal for a training run
stopped by a signal after its checkpoint was saved. Library callers (notebooks) catch them
the same way.
"""

from __future__ import annotations

import signal


class ImgaeError(Exception):
    """Base class of the user-facing errors: the message says what happened and what to do."""

    exit_code = 2
    """Exit status of a command that stops with this error."""


class ConfigError(ImgaeError, ValueError):
    """A configuration problem a user can fix; the message names the key and its origin."""


class DataError(ImgaeError, RuntimeError):
    """The data cannot be found, opened or understood."""


class CheckpointError(ImgaeError, RuntimeError):
    """No checkpoint of the run can be read, or one cannot be written."""


class RunError(ImgaeError, RuntimeError):
    """A run directory is missing, incomplete, or does not match the data it is evaluated on."""


class RunDirError(ImgaeError, RuntimeError):
    """The run directory cannot be used as asked (non-empty, or a different run)."""


class FinishedRunError(RunDirError):
    """A finished run was rerun with settings that shape its model: nothing would train.

    The old model would be evaluated again as if trained with the new settings; the message
    names each changed setting and how to train a new run with them instead.
    """


class PredictError(ImgaeError, RuntimeError):
    """The inputs cannot be used (missing paths, no image files, nothing readable)."""


class TrackingError(ImgaeError, RuntimeError):
    """W&B cannot be used as configured (for example ``online`` without credentials)."""


class NonFiniteLossError(ImgaeError, FloatingPointError):
    """A loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class Interrupted(ImgaeError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum
        """The signal that stopped training (the CLI exits with 128 + it)."""

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """128 + the signal, as a shell reports a process killed by it."""
        return 128 + int(self.signum)
