"""Fused unrolls: the lecture's BPTT written by hand, for speed on CPU.

``jax.grad`` through ``lax.scan`` is correct but slow on CPU for small cells: the
backward loop accumulates the recurrent weight gradient as T small updates and
carries every intermediate it might need. Here the derivative of the recurrence
is written by hand so that the backward pass is the lecture's backprop through
time as its own reverse scan:

* the loop carries only the error signal of the state, ``dh`` (and ``dc`` for
  the LSTM), and does one fused elementwise step and one matmul with ``W_hh^T``
  (a real row-major transpose made once behind ``lax.optimization_barrier``, not
  a transposed operand folded into every step's dot);
* everything that does not depend on the recurrence (the gate derivatives, the
  masks) is computed over all steps at once, outside the loop;
* the shared weights' gradient is formed after the loop as one large matmul over
  all steps, ``dW_hh = sum_t h_{t-1}^T dz_t``: the lecture's "sum the gradients of
  a shared weight over its copies", as a single [H, T*B] x [T*B, G] product.

The derivative is a ``jax.custom_jvp`` whose tangent recurrence is written by hand,
with the weights' tangent entering through one matmul over all steps. Reverse mode
is JAX's transpose of that tangent scan, which is the BPTT above; and every
transformation works: ``grad``, ``jvp``, ``linearize``/``linear_transpose``
(Gauss-Newton products), ``hessian``, ``vmap``. One module per cell
(:mod:`~rnnjax.fused.vanilla`, :mod:`~rnnjax.fused.lstm`, :mod:`~rnnjax.fused.gru`)
holds its forward pass and its tangent recurrence; ``tests/test_fused.py`` checks
both against the generic scan.

``fused=False`` gives the plain differentiable ``lax.scan``; ``recurrence.unroll``
runs that scan for ``remat=True`` too (it rematerialises each step; the fused
backward already stores only what it needs), and bfloat16 cells (``dtype``) are
never fused.

Shapes: T steps, B batch, H hidden, G = gates * H.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rnnjax.cell_base import Cell, Params, has_valid_override, mark_step_equivalent
from rnnjax.fused import gru, lstm, vanilla
from rnnjax.fused.vanilla import VANILLA_ACTIVATIONS

__all__ = ["VANILLA_ACTIVATIONS", "KINDS", "attach", "with_projection"]

KINDS = ("vanilla", "lstm", "gru")


def _fused_unroll(cell: Cell, core: Callable) -> Callable:
    """A ``Cell.unroll`` override: project outside, the fused core inside."""

    def unroll(params: Params, xs: jax.Array, *, carry, lengths, reverse, unroll, remat):
        if remat:
            raise ValueError(f"{cell.name}: the fused unroll does not rematerialise; "
                             "recurrence.unroll(..., remat=True) runs the generic scan instead")
        xp = cell.project(params, xs)               # [T, B, G], one matmul for all steps
        mask = None
        if lengths is not None:
            mask = jnp.arange(xs.shape[0])[:, None] < jnp.asarray(lengths)[None, :]
        if reverse:  # run the same forward core on time-flipped inputs
            xp = xp[::-1]
            mask = None if mask is None else mask[::-1]
        final, hs = core(params, carry, xp, mask, unroll)
        if mask is not None:
            hs = jnp.where(mask[..., None], hs, jnp.zeros_like(hs))
        return final, (hs[::-1] if reverse else hs)

    # recurrence.unroll ignores the override on a cell whose project/recurrent_step
    # were replaced afterwards (e.g. by _replace), and runs the generic scan for remat.
    mark_step_equivalent(unroll, cell.project, cell.recurrent_step)
    unroll.core = core
    return unroll


def with_projection(cell: Cell, project: Callable) -> Cell:
    """``cell`` with another input projection ``project(params, xs) -> [..., G]``
    (e.g. a table lookup for one-hot inputs), keeping its fused unroll if it has one.

    ``cell._replace(project=...)`` alone would make ``recurrence.unroll`` fall back to
    the generic scan, since the fused override projects with the old function.
    """
    new = cell._replace(project=project)
    core = getattr(cell.unroll, "core", None)
    if core is None or not has_valid_override(cell):
        return new   # not fused (or a stale override): the generic scan, as before
    return new._replace(unroll=_fused_unroll(new, core))


def attach(cell: Cell, kind: str, activation: str | None = None) -> Cell:
    """``cell`` with its ``unroll`` set to the fused unroll of ``kind``.

    Args:
      cell: a float32 (or float64) vanilla, LSTM or GRU cell from ``rnnjax.cells``.
      kind: ``vanilla``, ``lstm`` or ``gru``.
      activation: for ``vanilla``, one of ``VANILLA_ACTIVATIONS``.
    """
    if kind == "vanilla":
        core = vanilla.core(activation)
    elif kind == "lstm":
        core = lstm.core()
    elif kind == "gru":
        core = gru.core()
    else:
        raise ValueError(f"no fused unroll for {kind!r}; accepted: {', '.join(KINDS)}")
    return cell._replace(unroll=_fused_unroll(cell, core))
