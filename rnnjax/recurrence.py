"""Unrolling cells over sequences with ``jax.lax.scan``.

The recurrence is one ``lax.scan`` over time: the same params are closed over at
every step (weight sharing), the carry is the hidden state, and ``jax.grad``
through the scan is backprop through time. No Python loop runs over time, so
``jit`` compiles one step, whatever the length.

    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import cells, recurrence
    >>> cell = cells.gru(16)
    >>> params = cell.init(jax.random.PRNGKey(0), 4)
    >>> xs = jnp.ones((10, 3, 4))                        # [T, B, D]
    >>> final, hs = recurrence.unroll(cell, params, xs)  # hs: [T, B, H]
    >>> hs.shape
    (10, 3, 16)

Variable lengths: with ``lengths`` [B], step t of sequence b is real when
``t < lengths[b]``. On padded steps the carry is frozen and the output is zero,
so the final carry is the state after the last real step, and padding cannot
change any result (also with ``reverse=True``, where padding comes first and the
reverse pass starts cleanly at each sequence's last real step). Padded inputs are
replaced by zeros before any work (a select, not a product), so even NaN or Inf
there reaches no output and no gradient.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.cell_base import Carry, Cell, Params, has_valid_override, is_step_equivalent

__all__ = ["unroll", "stack", "bidirectional", "sequence_mask"]


def sequence_mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """[T, B] boolean mask, True where t < lengths[b]."""
    return jnp.arange(max_len)[:, None] < jnp.asarray(lengths)[None, :]


def _check_inputs(xs: jax.Array, lengths, time_major: bool, cell_name: str) -> None:
    if xs.ndim != 3:
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(
            f"unroll({cell_name}): inputs must have rank 3, {layout}; got shape {tuple(xs.shape)}. "
            "For a single sequence add a batch axis, e.g. xs[:, None, :].")
    if lengths is None:
        return
    T, B = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    lengths_shape = tuple(jnp.shape(lengths))
    if lengths_shape != (B,):
        raise ValueError(f"lengths must have shape [B] = ({B},), got {lengths_shape}")
    if not jnp.issubdtype(jnp.asarray(lengths).dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got dtype {jnp.asarray(lengths).dtype}")
    if not isinstance(lengths, jax.core.Tracer):  # values are only known outside jit
        values = np.asarray(lengths)
        if values.min(initial=0) < 0 or values.max(initial=0) > T:
            raise ValueError(
                f"lengths must lie in [0, T] = [0, {T}], got min {values.min()} max {values.max()}")


def unroll(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    *,
    carry: Carry | None = None,
    lengths: jax.Array | None = None,
    time_major: bool = True,
    reverse: bool = False,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[Carry, jax.Array]:
    """Run ``cell`` over a batch of sequences.

    Args:
      cell: a :class:`~rnnjax.cells.Cell`.
      params: its params.
      xs: inputs [T, B, D] (or [B, T, D] with ``time_major=False``).
      carry: the initial carry; default ``cell.initial_carry(params, B)`` (the
        learned initial state if the cell has one).
      lengths: optional [B] int lengths in [0, T].
      reverse: run from the last step to the first (outputs stay in input order).
      unroll: steps per scan iteration, passed to ``lax.scan`` (speed knob).
      remat: rematerialise each step in the backward pass (``jax.checkpoint``):
        less memory on long sequences for about one more forward pass.

    Returns:
      ``(final_carry, hs)`` with hs [T, B, H] (or [B, T, H]).
    """
    _check_inputs(xs, lengths, time_major, cell.name)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    if lengths is not None:
        # Zeros, selected (not multiplied: 0 * inf is nan), so that whatever the padding
        # holds, no step on it can produce a non-finite value, nor its gradient.
        real = sequence_mask(lengths, xs.shape[0])[..., None]
        xs = jnp.where(real, xs, jnp.zeros((), xs.dtype))
    if carry is None:
        carry = cell.initial_carry(params, xs.shape[1])
    # A step-equivalent override (a fused cell) cannot rematerialise; the generic scan
    # of the same steps can. Other overrides (a stack's) pass remat on.
    if has_valid_override(cell) and not (remat and is_step_equivalent(cell.unroll)):
        final, hs = cell.unroll(params, xs, carry=carry, lengths=lengths, reverse=reverse,
                                unroll=unroll, remat=remat)
    else:
        final, hs = _scan(cell, params, xs, carry, lengths, reverse, unroll, remat)
    return final, (hs if time_major else jnp.swapaxes(hs, 0, 1))


# The keyword argument ``unroll`` shadows the function inside stack/bidirectional.
_unroll = unroll


def _scan(cell: Cell, params: Params, xs, carry, lengths, reverse, unroll, remat):
    """The generic scan: project all inputs at once, recur inside the loop."""
    xp = cell.project(params, xs)  # one [T*B, D] x [D, P] matmul

    if lengths is None:
        def body(c, xp_t):
            return cell.recurrent_step(params, c, xp_t)
        inputs = xp
    else:
        def body(c, inp):
            xp_t, m_t = inp
            new_c, h = cell.recurrent_step(params, c, xp_t)
            keep = m_t[:, None]
            new_c = jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), new_c, c)
            return new_c, jnp.where(keep, h, jnp.zeros_like(h))
        inputs = (xp, sequence_mask(lengths, xs.shape[0]))

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, inputs, reverse=reverse, unroll=unroll)


def stack(cells: Sequence[Cell]) -> Cell:
    """A deep RNN: layer l's outputs are layer l+1's inputs.

    The result is a Cell whose params and carry are tuples with one entry per
    layer. ``recurrence.unroll`` runs it layer by layer (each layer one scan,
    with its input projection hoisted out of the loop); ``step`` runs all layers
    for one time step, for sampling and decoding.
    """
    cells = tuple(cells)
    if not cells or not all(isinstance(c, Cell) for c in cells):
        raise ValueError(f"stack needs a non-empty sequence of Cells, got {cells!r}")

    def init(key, input_size):
        keys = jax.random.split(key, len(cells))
        sizes = [input_size] + [c.hidden_size for c in cells[:-1]]
        return tuple(c.init(k, d) for c, k, d in zip(cells, keys, sizes))

    def initial_carry(params, batch_size):
        return tuple(c.initial_carry(p, batch_size) for c, p in zip(cells, params))

    def project(params, xs):
        return cells[0].project(params[0], xs)

    def recurrent_step(params, carry, xp_t):
        c0, h = cells[0].recurrent_step(params[0], carry[0], xp_t)
        new = [c0]
        for c, p, cr in zip(cells[1:], params[1:], carry[1:]):
            cr, h = c.step(p, cr, h)
            new.append(cr)
        return tuple(new), h

    def layerwise_unroll(params, xs, *, carry, lengths, reverse, unroll, remat):
        finals, hs = [], xs
        for c, p, cr in zip(cells, params, carry):
            cr, hs = _unroll(c, p, hs, carry=cr, lengths=lengths, reverse=reverse,
                                         unroll=unroll, remat=remat)
            finals.append(cr)
        return tuple(finals), hs

    name = "stack(" + ", ".join(c.name for c in cells) + ")"
    return Cell(name, cells[-1].hidden_size, init, initial_carry, project, recurrent_step,
                lambda carry: cells[-1].output(carry[-1]), layerwise_unroll)


def bidirectional(
    cell_fw: Cell,
    cell_bw: Cell,
    params: tuple[Params, Params],
    xs: jax.Array,
    *,
    lengths: jax.Array | None = None,
    time_major: bool = True,
    merge: str = "concat",
    unroll: int = 1,
    remat: bool = False,
) -> tuple[tuple[Carry, Carry], jax.Array]:
    """A forward and a backward pass over the same inputs, merged per step.

    Args:
      params: ``(params_fw, params_bw)``.
      merge: ``concat`` (outputs [T, B, H_fw + H_bw]) or ``sum``.

    Returns:
      ``((final_fw, final_bw), hs)``; ``final_bw`` is the backward pass's state
      after reading each sequence's first step.
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
    p_fw, p_bw = params
    kw = dict(lengths=lengths, time_major=time_major, unroll=unroll, remat=remat)
    final_fw, h_fw = _unroll(cell_fw, p_fw, xs, **kw)
    final_bw, h_bw = _unroll(cell_bw, p_bw, xs, reverse=True, **kw)
    hs = jnp.concatenate([h_fw, h_bw], axis=-1) if merge == "concat" else h_fw + h_bw
    return (final_fw, final_bw), hs
