"""Host memory of a run: the peak RSS of each phase, and freed heap handed back to the system.

Most of a CPU run's host memory is not data (the bundled sample's 64-pixel cache is 4 MB) but
the runtime: JAX and its imports, XLA's compilations (compiling the training step briefly
takes a few hundred MB) and the activations of a batch. Memory a compilation or a batch frees
goes back to the C heap, and glibc keeps such freed pages mapped, spread over one heap
("arena") per thread, so without help the resident size only grows: each phase would start
from the high-water mark of the previous ones. :func:`release_memory` (glibc's
``malloc_trim``) returns those free pages to the system; the training loop calls it after
each epoch and validation, scoring after each split, and :func:`memory_phase` at the end of
each phase.

:func:`memory_phase` logs a phase's peak resident set size at INFO
(``memory: training peak RSS 690 MB ...``); child processes (the W&B writer) are reported
separately, at their size when the phase ends.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import jax
import psutil

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
"""The JAX monitoring event recorded after each XLA compilation (or compile-cache load)."""
_LISTENING: list[Callable[..., None]] = []
"""The compilation listener, once registered (JAX cannot list its listeners publicly)."""
SAMPLE_SECONDS = 0.05
"""How often :func:`memory_phase` samples the RSS of a phase that does not set a new peak."""


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where it has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``).

    Python objects and JAX arrays are untouched; only memory already freed (by a finished
    compilation, the buffers of a batch, parsed text) stops counting in the resident size.
    It takes a few milliseconds.

    Returns:
        Whether anything could be done (False where the C library is not glibc).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _release_after_compile(event: str, duration_secs: float, **kwargs: str | int) -> None:
    if event == BACKEND_COMPILE_EVENT:
        release_memory()


def release_after_compilations() -> None:
    """From now on, call :func:`release_memory` after every XLA compilation (idempotent).

    Compiling the training step takes a few hundred MB of temporary memory; handed back at
    once, it is not kept through the rest of the run. Uses JAX's monitoring events
    (``jax.monitoring``), so it covers every compilation, wherever it happens.
    """
    if _release_after_compile not in _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(_release_after_compile)
        _LISTENING.append(_release_after_compile)


def rss_mb() -> float:
    """Resident set size of this process, in MB (2^20 bytes)."""
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started, in MB.

    ``VmHWM`` of ``/proc/self/status`` on Linux, else ``ru_maxrss``.
    """
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KB


def children_rss_mb() -> float:
    """Resident set size of this process's child processes (e.g. the W&B writer), in MB."""
    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # exited meanwhile
            continue
    return total / 2**20


class _PeakSampler(threading.Thread):
    """Samples this process's RSS every ``SAMPLE_SECONDS`` until stopped; keeps the largest."""

    def __init__(self) -> None:
        super().__init__(name="imgae-memory-sampler", daemon=True)
        self.peak = rss_mb()
        self._stop_event = threading.Event()

    def run(self) -> None:
        process = psutil.Process()
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, process.memory_info().rss / 2**20)

    def stop(self) -> float:
        """Stop sampling; return the largest RSS seen, in MB."""
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_mb())


@contextmanager
def memory_phase(name: str) -> Iterator[None]:
    """Run one phase of a run; at its end release freed memory and log the phase's peak RSS.

    The INFO line reads ``memory: <name> peak RSS <peak> MB (from <start> MB at its start to
    <end> MB at its end; process peak <p> MB; child processes <c> MB)``. A phase that raises
    the process's peak gets that exact peak (the kernel's high-water mark); for another, its
    peak is the largest RSS sampled every ``SAMPLE_SECONDS`` while it ran. Nothing is reset,
    so tools reading the process's peak (``/usr/bin/time``, ``ru_maxrss``) still see it.

    Args:
        name: what the phase does (``data``, ``model``, ``training``, ``evaluation``,
            ``report``).
    """
    start, process_peak = rss_mb(), peak_rss_mb()
    sampler = _PeakSampler()
    sampler.start()
    try:
        yield
    finally:
        sampled = sampler.stop()
        new_peak = peak_rss_mb()
        peak = new_peak if new_peak > process_peak else sampled
        gc.collect()  # the phase's garbage in reference cycles, before the heap is trimmed
        release_memory()
        log.info(
            "memory: %s peak RSS %.0f MB (from %.0f MB at its start to %.0f MB at its end; "
            "process peak %.0f MB; child processes %.0f MB)",
            name,
            peak,
            start,
            rss_mb(),
            new_peak,
            children_rss_mb(),
        )
