"""What the machine offers a run: a one-line description of its devices, and their memory.

    >>> from rnnjax import device
    >>> device.summary()                       # e.g. 'cpu: 1 x cpu, float32 matmul precision default'
    >>> device.check_fits(n_params=10**12, activation_floats=0)   # a message, or None

Experiments record :func:`summary` with their results and call :func:`check_fits`
before they allocate anything, so a configuration that cannot fit stops with a
message instead of hanging in the allocator or dying out of memory.
"""

from __future__ import annotations

import os

import jax

__all__ = ["summary", "memory_bytes", "training_bytes", "check_fits"]


def summary() -> str:
    """Backend, devices and matmul precision, e.g. ``"gpu: 1 x NVIDIA H200, float32 matmul
    precision default (TF32 on NVIDIA GPUs)"``: a number read on a GPU at JAX's default
    precision is a TF32 number (``JAX_DEFAULT_MATMUL_PRECISION=highest`` gives full float32)."""
    devices = jax.devices()
    backend = jax.default_backend()
    precision = jax.config.jax_default_matmul_precision or "default"
    note = " (TF32 on NVIDIA GPUs)" if backend == "gpu" and precision == "default" else ""
    return (f"{backend}: {len(devices)} x {devices[0].device_kind}, "
            f"float32 matmul precision {precision}{note}")


def memory_bytes() -> int | None:
    """Memory of the first device in bytes (an accelerator's limit, else the host's RAM);
    None when unknown."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory statistics raise various errors)
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def training_bytes(n_params: int, activation_floats: int, *, bytes_per_float: int = 4,
                   optimizer_slots: int = 2) -> int:
    """A lower estimate of a training step's memory: parameters, gradients and
    ``optimizer_slots`` copies of them (Adam: 2), plus the activations kept for the
    backward pass (``activation_floats``, e.g. T * B * H per stored [T, B, H] array)."""
    return bytes_per_float * ((2 + optimizer_slots) * n_params + activation_floats)


def check_fits(n_params: int, activation_floats: int, **kwargs) -> str | None:
    """None if :func:`training_bytes` fits in :func:`memory_bytes` (or that is unknown);
    else what is needed against what there is, e.g. ``"... needs about 180,000.0 GiB, more
    than the 125.0 GiB of this machine's device"``."""
    need = training_bytes(n_params, activation_floats, **kwargs)
    have = memory_bytes()
    if have is None or need <= have:
        return None
    return (f"the model has {n_params:,} parameters and training it needs about "
            f"{need / 2**30:,.1f} GiB, more than the {have / 2**30:,.1f} GiB of this "
            "machine's device")
