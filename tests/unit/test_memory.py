"""Host memory: freed heap handed back, per-phase peak RSS logged."""

import logging
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgae_dx_jax import memory

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")


@glibc
def test_release_memory_trims_the_c_heap():
    assert memory.release_memory() is True


def test_phase_logs_its_peak_and_keeps_the_process_peak(caplog):
    before = memory.peak_rss_mb()
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.memory"), memory.memory_phase("demo"):
        block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        start_rss = memory.rss_mb()
        # Held for many samples: where earlier tests left a higher process peak, this phase's
        # peak is the sampled one, not the kernel's high-water mark.
        time.sleep(20 * memory.SAMPLE_SECONDS)
        del block
    (line,) = [r.getMessage() for r in caplog.records if "memory: demo" in r.getMessage()]
    peak, start, end, process_peak, children = map(
        float,
        re.fullmatch(
            r"memory: demo peak RSS (\d+) MB \(from (\d+) MB at its start to (\d+) MB at its "
            r"end; process peak (\d+) MB; child processes (\d+) MB\)",
            line,
        ).groups(),
    )
    assert peak >= start_rss - 1 >= start + 150
    assert process_peak >= max(peak, before) - 1  # nothing resets the process's peak
    assert end < peak
    assert children >= 0


def test_phase_without_a_new_process_peak_reports_its_sampled_peak(caplog):
    with memory.memory_phase("warm-up"):
        np.ones(300 * 2**20 // 8)
    with caplog.at_level(logging.INFO, logger="imgae_dx_jax.memory"), memory.memory_phase("small"):
        block = np.ones(50 * 2**20 // 8)
        inside = memory.rss_mb()
        time.sleep(20 * memory.SAMPLE_SECONDS)  # sampled, not exact: held for many samples
        del block
    (line,) = [r.getMessage() for r in caplog.records if "memory: small" in r.getMessage()]
    peak = float(re.search(r"peak RSS (\d+) MB", line).group(1))
    assert inside - 1 <= peak < memory.peak_rss_mb()


def test_release_after_compilations_is_registered_once_and_runs_after_a_compile(monkeypatch):
    calls, compiles = [], []

    def count(event, duration, **kwargs):
        if event == memory.BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(1) or True)
    memory.release_after_compilations()
    memory.release_after_compilations()
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(np.arange(7.0)).block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert len(compiles) >= 1
    assert len(calls) == len(compiles)
