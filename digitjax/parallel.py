"""Where data parallelism lives: the device mesh and how arrays are placed on it.

One mesh axis, `data`, spans every device of every process. Parameters and the
optimiser state are replicated; batches are split along their batch axis, and
each process supplies only its own rows of every global batch.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from digitjax import cpu_flags

DATA_AXIS = "data"


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
    """Joins the multi-controller runtime when the command line or the cluster asks.

    Explicit flags win; otherwise jax's own detection runs on multi-worker TPU VMs
    and SLURM jobs with several tasks. A single process needs neither.
    """
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes or None,
                                   None if process_id < 0 else process_id)
    elif _multi_worker_cluster():
        jax.distributed.initialize()


def _multi_worker_cluster() -> bool:
    env = os.environ
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def set_cpu_devices(count: int) -> None:
    """`config.cpu_devices`: split the CPU host into `count` XLA devices (0 leaves the
    count to `cpu_flags`). Only before jax starts its backend; a GPU/TPU run ignores it."""
    if count > 0 and cpu_flags.cpu_is_the_backend():
        jax.config.update("jax_num_cpu_devices", count)


def data_mesh(config=None) -> Mesh:
    """All devices of all processes on one `data` axis. Where the devices are
    digitjax's own split of a CPU host (`cpu_flags`) and `config`'s batch sizes do not
    divide by their count, as many as divide both: a config that runs on jax's single
    CPU device is not refused for a speed-up it did not ask for."""
    devices = jax.devices()
    if (config is not None and jax.config.jax_num_cpu_devices <= 0  # no count set in jax
            and cpu_flags.host_split_by_digitjax()
            and jax.process_count() == 1 and jax.default_backend() == "cpu"):
        devices = devices[:math.gcd(len(devices), config.batch_size, config.eval_batch_size)]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(tree, mesh: Mesh, shard_params: bool = False):
    """Where each array of a train state lives: everywhere (replicated), or with
    `shard_params` split over the data axis along its largest dimension that divides
    by the device count (FSDP-style: XLA gathers what each step needs)."""
    n = mesh.size

    def one(x):
        dims = [i for i in sorted(range(x.ndim), key=lambda i: -x.shape[i])
                if x.shape[i] % n == 0 and x.shape[i] >= n]
        if not shard_params or n == 1 or not dims:
            return replicated(mesh)
        spec = [None] * x.ndim
        spec[dims[0]] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, tree)


def init_compiler_options() -> dict:
    """XLA options for compiling a state's initialisation, which runs once: on CPU, LLVM
    optimisation level 1 instead of 2 ("fast init compile"). The initialisers' random
    draws are most of that compile, and level 1 compiled them 2.7-3.1 s -> 0.8-1.1 s
    (configs/quick.py, default.py) and 8.0 -> 1.9 s (best.py), giving bit-identical
    parameters (tests/test_train.py checks it). The training step's compile did
    not shorten (3.7 vs 3.6 s for quick.py's), so it keeps XLA's default.
    DIGITJAX_FAST_INIT_COMPILE=0 switches it off."""
    if (jax.default_backend() != "cpu"
            or os.environ.get("DIGITJAX_FAST_INIT_COMPILE", "1") == "0"):
        return {}
    return {"xla_backend_optimization_level": 1}


def init_state(fn, mesh: Mesh, shard_params: bool = False):
    """Runs `fn()` (no array arguments) under jit, placing its outputs by
    `state_shardings`: how a state is made on every device of every process alike."""
    placed = jax.tree.map(lambda s: s.sharding, abstract_state(fn, mesh, shard_params))
    return jax.jit(fn, out_shardings=placed, compiler_options=init_compiler_options())()


def abstract_state(fn, mesh: Mesh, shard_params: bool = False):
    """`fn()`'s shapes and dtypes, placed by `state_shardings`, without running `fn`
    (`init_state` places its state by these, so the two cannot differ): the template a
    checkpoint is restored into. Compiling and running `fn` only to overwrite its arrays
    took 2.6-2.9 s in `configs/quick.py`'s run with the compilation cache off, ~0.4 s
    with it on (the training run's own initialisation had filled it)."""
    shapes = jax.eval_shape(fn)
    return jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                        shapes, state_shardings(shapes, mesh, shard_params))


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
