"""Runs training jobs in one process for the distributed tests and prints what it saw.

Usage: python distributed_driver.py JOBS_JSON [COORDINATOR NUM_PROCESSES ID]
JOBS_JSON is a list of [run_dir, overrides]. For each job one JSON line: the loss of every
logged step, a digest of this process's copy of the trained parameters, and the image keys
this process's input pipeline read.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from imgae_dx_jax import distributed
from imgae_dx_jax.config import load_config
from imgae_dx_jax.data import pipeline
from imgae_dx_jax.training import train

read_keys: set[str] = set()
_getitem = pipeline.ImageSource.__getitem__


def _recording_getitem(self: pipeline.ImageSource, index: int):  # type: ignore[no-untyped-def]
    read_keys.add(self.records[index].key)
    return _getitem(self, index)


def main() -> None:
    jobs = json.loads(sys.argv[1])
    if len(sys.argv) > 2:
        distributed.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    pipeline.ImageSource.__getitem__ = _recording_getitem  # observe, do not change, reads
    for run_dir, overrides in jobs:
        run(Path(run_dir), overrides)


def run(run_dir: Path, overrides: list[str]) -> None:
    """Train one job and print its JSON line."""
    read_keys.clear()
    result = train(load_config(overrides=overrides), run_dir)
    params = nnx.state(result.model, nnx.Param)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf.addressable_data(0)).tobytes())
    losses = []
    if distributed.is_main_process():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses.append(record["loss"])
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "devices": jax.device_count(),
                "losses": losses,
                "params": digest.hexdigest(),
                "read": sorted(read_keys),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
