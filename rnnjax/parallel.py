"""Data-parallel train steps over the local devices with ``jax.sharding``.

The batch is split along its batch axis over a one-axis device mesh
(``"data"``); the train state is replicated. XLA inserts the all-reduce of the
gradients, so the step function itself is unchanged and gives the same result
as on one device (up to the order of the floating-point sums). Nothing here
names a backend: the same code runs on CPU devices, GPUs or TPU cores.

    mesh = parallel.data_mesh()                       # all local devices
    step = parallel.data_parallel_step(step_fn, mesh, batch_axis=1)  # [T, B, D] batches
    state = parallel.replicate(state, mesh)
    state, history = train.run(workdir, state, step, batch_fn, steps=..., jit=False)

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before
importing jax) makes four CPU devices to test with. For several processes or
hosts, call :func:`rnnjax.distributed.initialize` first in every process;
``jax.devices()`` then lists all processes' devices and the same mesh code spans
them: every process computes the same host batch (a pure function of the step)
and puts only its own devices' slices of it on its devices.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(batch: PyTree, mesh: Mesh, batch_axis: int = 0) -> PyTree:
    """Shardings for ``batch`` that split axis ``batch_axis`` of every leaf over the mesh.

    Leaves with fewer dimensions than ``batch_axis + 1`` are replicated. Raises
    ValueError if a batch dimension does not divide by the number of devices.
    """
    n = mesh.devices.size

    def one(x):
        shape = np.shape(x)
        if len(shape) <= batch_axis:
            return replicated(mesh)
        if shape[batch_axis] % n:
            raise ValueError(f"batch axis {batch_axis} of a batch leaf with shape {shape} has size "
                             f"{shape[batch_axis]}, which does not divide over {n} devices; use a "
                             f"batch size that is a multiple of {n}")
        spec = [None] * len(shape)
        spec[batch_axis] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, batch)


def put(tree: PyTree, shardings: PyTree) -> PyTree:
    """``jax.device_put(tree, shardings)``, also when the shardings span other processes'
    devices: then each process places only its own devices' slices of its (identical)
    host values."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # A typed key: place its raw data, then wrap it again (keys have no numpy form).
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree, shardings)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put a full copy of ``tree`` (e.g. the train state) on every device."""
    return put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def shard_batch(batch: PyTree, mesh: Mesh, batch_axis: int = 0) -> PyTree:
    """Split ``batch`` over the devices along ``batch_axis``."""
    return put(batch, batch_sharding(batch, mesh, batch_axis))


def train_state_shardings(state: PyTree, mesh: Mesh, extra_batch_axis: int = 0) -> PyTree:
    """Shardings for a :class:`rnnjax.train.TrainState`: everything replicated except
    ``state.extra``, the per-sequence state carried across steps (a truncated-BPTT carry,
    ``[B, H]`` leaves), which is split along ``extra_batch_axis`` like the batch.

    Raises ValueError (from :func:`batch_sharding`) if a carry's batch size does not
    divide over the mesh.
    """
    rep = replicated(mesh)
    shardings = jax.tree.map(lambda _: rep, state._replace(extra=None))
    return shardings._replace(extra=batch_sharding(state.extra, mesh, extra_batch_axis))


def data_parallel_step(step_fn: Callable[[PyTree, Any], tuple[PyTree, Any]], mesh: Mesh,
                       batch_axis: int = 0, state_shardings: PyTree | None = None
                       ) -> Callable[[PyTree, Any], tuple[PyTree, Any]]:
    """Jit ``step_fn(state, batch)`` with the batch split over ``mesh``.

    The returned function shards each incoming batch (host or device arrays),
    keeps the state and the metrics replicated, and is already jitted (pass
    ``jit=False`` to :func:`rnnjax.train.run`, or leave it: jitting it again is
    harmless). ``state_shardings`` (e.g. from :func:`train_state_shardings`, with the
    state placed by ``jax.device_put(state, state_shardings)``) keeps a carried
    per-sequence state split with the batch instead of replicated.
    """
    rep = replicated(mesh)
    jitted = jax.jit(step_fn, out_shardings=(rep if state_shardings is None
                                             else state_shardings, rep))

    def step(state: PyTree, batch: Any) -> tuple[PyTree, Any]:
        return jitted(state, shard_batch(batch, mesh, batch_axis))

    return step
