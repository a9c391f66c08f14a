"""Devices, hosts and shardings: data parallelism over every device of every process.

One mesh with the axis ``data`` spans all devices of all processes. The global batch is
split along it; each process reads and feeds only its own part (:func:`global_batch`).
Parameters and optimiser state are replicated, or, with ``train.shard_params``, split along
the same axis (FSDP style: each large array is sharded on one axis and XLA gathers it where
it is used). Under ``jax.jit`` XLA inserts the gradient all-reduce, and batch statistics
(BatchNorm in the RA) are computed over the whole global batch, so results do not depend on
the number of devices or hosts.

Multi-host runs start with :func:`initialize` (``jax.distributed``) before anything else
touches the devices.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from imgae_dx_jax.config import cluster_detected

log = logging.getLogger(__name__)

DATA_AXIS = "data"
_FSDP_MIN_SIZE = 2**14
"""Arrays smaller than this stay replicated under ``shard_params`` (not worth a gather)."""


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Start ``jax.distributed`` when several processes take part; do nothing otherwise.

    Args:
        coordinator: ``host:port`` of process 0 (``--coordinator``); with ``num_processes``
            and ``process_id`` for an explicit launch. Without it, SLURM and multi-host TPU
            environments are detected and JAX reads them itself.
        num_processes: total number of processes.
        process_id: this process's index, 0 .. num_processes - 1.
    """
    if coordinator is None and not cluster_detected():
        return
    # CPU collectives across processes need an implementation (gloo ships with jaxlib); the
    # setting only concerns the CPU backend, so it is harmless on GPU and TPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_main_process() -> bool:
    """Whether this process writes logs, reports and exports (process 0)."""
    return jax.process_index() == 0


def process_shard() -> tuple[int, int]:
    """(index, count) of this process, for reading a disjoint part of the data."""
    return jax.process_index(), jax.process_count()


def make_mesh() -> Mesh:
    """Return a one-axis (``data``) mesh over all devices, with automatic sharding axes."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: split along its leading axis over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value every device holds in full."""
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(state: Any, mesh: Mesh, shard_params: bool) -> Any:
    """Shardings of the model/optimiser state: replicated, or FSDP-style when ``shard_params``.

    With ``shard_params`` each array of at least 2^14 elements is split along its last axis
    whose size the device count divides; other arrays stay replicated.
    """

    def choose(x: Any) -> NamedSharding:
        if not shard_params or np.size(x) < _FSDP_MIN_SIZE:
            return replicated(mesh)
        for axis in reversed(range(np.ndim(x))):
            if np.shape(x)[axis] % mesh.size == 0:
                spec: list[str | None] = [None] * np.ndim(x)
                spec[axis] = DATA_AXIS
                return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated(mesh)

    return jax.tree.map(choose, state)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch from each process's local part (its rows, in order)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def broadcast_from_main(value: np.ndarray) -> np.ndarray:
    """Process 0's ``value`` on every process (``value`` itself in a one-process run)."""
    if jax.process_count() == 1:
        return value
    return np.asarray(multihost_utils.broadcast_one_to_all(value))


def to_host(tree: Any) -> Any:
    """Gather every array of ``tree`` (replicated or sharded, over any hosts) to numpy."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return multihost_utils.process_allgather(tree, tiled=True)


def local_checkpointer() -> ocp.StandardCheckpointer:
    """An Orbax checkpointer that involves only this process (no cross-host barriers).

    Used for the inference export, which process 0 writes alone and any single process reads.
    """
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)
