"""Where data parallelism lives: the device mesh and how arrays are placed on it.

One mesh axis, `data`, spans every device of every process. Parameters and the
optimiser state are replicated; batches are split along their batch axis, and
each process supplies only its own rows of every global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits axis `batch_axis` over the devices; other axes are whole on each."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def process_rows(global_batch: int) -> slice:
    """The rows of every global batch that this process loads."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_array(local: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    """This process's rows -> one global array split over the mesh on `batch_axis`."""
    shape = list(local.shape)
    shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, batch_axis), local, tuple(shape)
    )


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) array, on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_writer() -> bool:
    """Process 0 alone writes metrics, submissions and predictions."""
    return jax.process_index() == 0
