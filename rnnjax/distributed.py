"""Training over several processes (hosts) with ``jax.distributed``.

Every process runs the same program. :func:`initialize` connects them (the
coordinator is process 0's ``host:port``); afterwards ``jax.devices()`` lists the
devices of every process, and :mod:`rnnjax.parallel`'s mesh spans them all: the
batch is split over all devices, each process feeding its own devices' slice of
every batch (a pure function of the seed and the step, so no data moves between
processes), and XLA all-reduces the gradients. On CPU the collectives run over
Gloo (TCP); on GPU and TPU over the backend's own (NCCL, ICI).

    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # host 0
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=1)   # host 1

With no arguments, JAX's cluster auto-detection applies (SLURM, Open MPI, TPU
pods, Kubernetes). Only process 0 writes metrics and TensorBoard logs
(:func:`is_primary`); every process takes part in saving a checkpoint.
"""

from __future__ import annotations

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Connect this process to the others (``jax.distributed.initialize``); call it before
    any other JAX computation. CPU collectives use Gloo."""
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def is_primary() -> bool:
    """True in process 0, the one that writes logs, metrics and side files."""
    return jax.process_index() == 0


def summary() -> str:
    """``"process 0 of 2, 1 local / 2 global devices"``."""
    return (f"process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local / {jax.device_count()} global devices")
