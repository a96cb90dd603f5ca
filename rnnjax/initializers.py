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
  it returns to a chosen spectral radius (largest |eigenvalue|);
* ``sparse``: Martens (2010)'s sparse initialisation, ``k`` non-zero incoming
  weights per unit (15 in Martens & Sutskever 2011 and Pascanu et al. 2013), the
  others exactly 0; with ``radius`` (or ``with_spectral_radius``) the square
  recurrent matrix is then rescaled, e.g. Pascanu et al.'s 0.95.
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
    "sparse",
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


def sparse(k: int = 15, stddev: float = 1.0, radius: float | None = None) -> Initializer:
    """``k`` non-zero weights ~ N(0, stddev²) in each column (a unit's incoming weights).

    Martens (2010) §5, used for RNNs by Martens & Sutskever (2011); Pascanu et al.
    (2013)'s released code draws the 15 weights from N(0, 0.01²) and rescales W_hh to
    spectral radius 0.95 (``sparse(15, 0.01, radius=0.95)``; the scale is irrelevant
    once ``radius`` is set). A column of fewer than ``k`` rows is dense. For a
    gate-stacked [H, k·H] matrix each column still gets ``k`` weights and ``radius``
    applies per square block. shape: [fan_in, fan_out].
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"sparse init: k (connections per unit) must be a positive integer, got {k!r}")

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"sparse init needs a 2-D [fan_in, fan_out] shape, got {shape}")
        rows, cols = shape
        k_w, k_pick = jax.random.split(key)
        # a random permutation of the rows per column; the first k of each are kept
        order = jnp.argsort(jax.random.uniform(k_pick, (rows, cols)), axis=0)
        keep = jnp.zeros((rows, cols), bool).at[order[:min(k, rows)],
                                                 jnp.arange(cols)[None, :]].set(True)
        return jnp.where(keep, stddev * jax.random.normal(k_w, shape, dtype), 0).astype(dtype)

    return init if radius is None else with_spectral_radius(init, radius)


_NAMED = {
    "sparse": sparse,
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
