"""Weight initialisers for recurrent cells.

An initialiser is a pure function ``init(key, shape, dtype) -> array``, the same
contract as ``jax.nn.initializers``, so the two can be mixed freely.

The recurrent matrix decides whether gradients vanish or explode (its spectral
radius sets the per-step gain of a linear RNN), so besides the usual Glorot
uniform there are:

* ``orthogonal``: every singular value 1 (Saxe et al. 2014);
* ``identity``: the IRNN initialisation of Le, Jaitly & Hinton (2015), used with
  ReLU units so that the hidden state is copied forward at the start of training;
* ``with_spectral_radius``: wraps any initialiser and rescales the square matrix
  it returns to a chosen spectral radius (largest |eigenvalue|).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]

__all__ = [
    "Initializer",
    "glorot_uniform",
    "uniform",
    "normal",
    "orthogonal",
    "identity",
    "zeros",
    "with_spectral_radius",
    "spectral_radius",
    "by_name",
]


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    return jax.nn.initializers.glorot_uniform()


def uniform(scale: float) -> Initializer:
    """U(-scale, scale), the classic small-uniform RNN initialisation."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def normal(stddev: float) -> Initializer:
    """N(0, stddev^2)."""

    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (scaled) random orthogonal matrix; for [H, k*H] each H x H block is orthogonal."""

    def init(key, shape, dtype=jnp.float32):
        rows, cols = shape
        if cols % rows == 0 and cols > rows:
            # Gate-stacked recurrent matrices [H, 4H]: one orthogonal block per gate.
            keys = jax.random.split(key, cols // rows)
            return jnp.concatenate([init(k, (rows, rows), dtype) for k in keys], axis=1)
        return jax.nn.initializers.orthogonal(scale)(key, shape, dtype)

    return init


def identity(scale: float = 1.0) -> Initializer:
    """scale * I (IRNN). For gate-stacked [H, k*H] matrices, one identity block per gate."""

    def init(key, shape, dtype=jnp.float32):
        del key
        rows, cols = shape
        if cols % rows:
            raise ValueError(f"identity init needs a square or [H, k*H] matrix, got shape {shape}")
        return scale * jnp.tile(jnp.eye(rows, dtype=dtype), (1, cols // rows))

    return init


def zeros() -> Initializer:
    return jax.nn.initializers.zeros


def spectral_radius(matrix: jax.Array) -> jax.Array:
    """Largest |eigenvalue| of a square matrix (computed on the host: eig has no GPU kernel)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"spectral_radius needs a square matrix, got shape {matrix.shape}")
    return jnp.asarray(np.max(np.abs(np.linalg.eigvals(matrix))))


def with_spectral_radius(base: Initializer, radius: float) -> Initializer:
    """Rescale each square [H, H] block that ``base`` returns to spectral radius ``radius``."""
    if radius <= 0:
        raise ValueError(f"spectral radius must be > 0, got {radius}")

    def init(key, shape, dtype=jnp.float32):
        w = np.asarray(base(key, shape, dtype), dtype=np.float64)
        rows, cols = w.shape
        if cols % rows:
            raise ValueError(f"spectral radius applies to square or [H, k*H] matrices, got {shape}")
        blocks = []
        for k in range(cols // rows):
            block = w[:, k * rows:(k + 1) * rows]
            rho = np.max(np.abs(np.linalg.eigvals(block)))
            blocks.append(block * (radius / rho) if rho > 0 else block)
        return jnp.asarray(np.concatenate(blocks, axis=1), dtype)

    return init


_NAMED = {
    "glorot": glorot_uniform,
    "orthogonal": orthogonal,
    "identity": identity,
    "normal": lambda: normal(0.01),
    "uniform": lambda: uniform(0.08),
    "zeros": zeros,
}


def by_name(name: str | Initializer) -> Initializer:
    """Look an initialiser up by name; callables pass through unchanged."""
    if callable(name):
        return name
    try:
        return _NAMED[name]()
    except KeyError:
        raise ValueError(
            f"unknown initialiser {name!r}; accepted: {sorted(_NAMED)} or a callable "
            "init(key, shape, dtype)") from None
