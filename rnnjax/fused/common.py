"""Pieces shared by the fused cells: the recurrent weight's layout, the states
before each step, masks.

Shapes: T steps, B batch, H hidden, G = gates * H.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def previous(first: jax.Array, seq: jax.Array) -> jax.Array:
    """[T, ...] sequence of the states *before* each step: first, seq[0], ..., seq[T-2]."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def real_steps(mask: jax.Array) -> jax.Array:
    """[T, B] bool mask (True = real step) -> [T, B, 1], to broadcast over features."""
    return mask[..., None]


def on_real(mask3: jax.Array, x: jax.Array, padded_value: float = 0.0) -> jax.Array:
    """``x`` on real steps, ``padded_value`` on padded ones: a select, not a product,
    so that a non-finite value on a padded step cannot leak (0 * inf is nan)."""
    return jnp.where(mask3, x, jnp.asarray(padded_value, x.dtype))


def pass_through(mask3: jax.Array, dtype) -> jax.Array:
    """[T, B, 1]: 1 on padded steps (the state's derivative passes unchanged), else 0."""
    return jnp.where(mask3, jnp.zeros((), dtype), jnp.ones((), dtype))


def loop_weight(w: jax.Array) -> jax.Array:
    """W^T [G, H], laid out row-major once, for the tangent loops' ``times_w``.

    The tangent loop multiplies by W through W^T (``dh @ (W^T)^T``), so that the
    loop JAX derives for reverse mode, its transpose, multiplies by the row-major
    W^T directly (``ct @ W^T``): the fast layout for the backward pass, which is
    what training runs; forward mode pays the transposed operand instead. The
    barrier stops XLA folding the transpose back into each step's dot.
    """
    return lax.optimization_barrier(jnp.transpose(w))


def times_w(dh: jax.Array, w_t: jax.Array) -> jax.Array:
    """dh @ W for dh [B, H], given w_t = W^T [G, H]."""
    return lax.dot_general(dh, w_t, (((1,), (1,)), ((), ())))
