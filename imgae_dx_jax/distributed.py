"""The device mesh and shardings: data parallelism over every local device.

The global batch is split along the mesh axis ``data``; parameters and optimiser state are
replicated. Under ``jax.jit`` XLA inserts the gradient all-reduce, and batch statistics
(BatchNorm in the RA) are computed over the whole global batch, so results do not depend
on the number of devices.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """Return a one-axis (``data``) mesh over all devices, with automatic sharding axes."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: split along its leading axis over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` on all devices of the mesh."""
    return jax.device_put(tree, replicated(mesh))
