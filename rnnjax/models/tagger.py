"""A tagger: a recurrent cell (or a stack of cells) with a linear readout at every step.

The model of the synthetic sequence problems (running parity, the long-term
dependency problems), of gradient-flow diagnostics and of the benchmarks:

    h_1..h_T = unroll(cell, xs)            # [T, B, H]
    y_t      = h_t W_hy + b_y              # [T, B, O], one output per step

The loss (and which steps it scores) is the caller's business; :meth:`Tagger.readout`
and :meth:`Tagger.hiddens` are apart so that diagnostics can differentiate the loss
with respect to the hidden states, and :meth:`Tagger.outputs_and_hiddens` gives the
``net(params, xs) -> (outputs, hiddens)`` shape that Hessian-free's structural
damping needs.

Learned initial state, fused BPTT and the rest of a cell's options are options of
the cell's constructor; ``unroll`` and ``remat`` are the unroller's knobs.

    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import cells
    >>> from rnnjax.models import tagger
    >>> model = tagger.make(cells.lstm(16, learn_initial_state=True), input_size=3, output_size=2)
    >>> params = model.init(jax.random.key(0))
    >>> model.apply(params, jnp.ones((10, 4, 3))).shape      # xs [T, B, D] -> [T, B, O]
    (10, 4, 2)

Shapes: T steps, B batch, D input size, H hidden size, O outputs per step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import recurrence
from rnnjax.cells import Cell

__all__ = ["Tagger", "make"]

Params = dict[str, Any]


class Tagger(NamedTuple):
    """A cell unrolled over the inputs with a linear readout at every step.

    Build it with :func:`make`. Params: ``{"cell": the cell's params, "W_hy": [H, O],
    "b_y": [O]}``.

    Attributes:
      cell: the recurrent cell (a stack of cells is one :class:`~rnnjax.cells.Cell`).
      input_size: D, passed to ``cell.init``.
      output_size: O.
      readout_scale: W_hy starts as ``normal * readout_scale``; None: ``normal / sqrt(H)``.
      unroll: time steps per ``lax.scan`` iteration (a speed knob).
      remat: rematerialise each step in the backward pass (less memory).
    """

    cell: Cell
    input_size: int
    output_size: int
    readout_scale: float | None = None
    unroll: int = 1
    remat: bool = False

    def init(self, key: jax.Array) -> Params:
        """Params from one PRNG key (split into the cell's key and the readout's)."""
        k_cell, k_out = jax.random.split(key)
        H, O = self.cell.hidden_size, self.output_size
        w = jax.random.normal(k_out, (H, O), jnp.float32)
        # Divided, not multiplied by 1/sqrt(H): the same bits as the models this replaces.
        w = w / np.sqrt(H) if self.readout_scale is None else self.readout_scale * w
        return {"cell": self.cell.init(k_cell, self.input_size), "W_hy": w,
                "b_y": jnp.zeros((O,), jnp.float32)}

    def hiddens(self, params: Params, xs: jax.Array, lengths: jax.Array | None = None
                ) -> jax.Array:
        """xs [T, B, D] (and lengths [B]) -> the cell's outputs hs [T, B, H] (zero on
        padded steps)."""
        _, hs = recurrence.unroll(self.cell, params["cell"], xs, lengths=lengths,
                                  unroll=self.unroll, remat=self.remat)
        return hs

    def readout(self, params: Params, hs: jax.Array) -> jax.Array:
        """hs [..., H] -> outputs [..., O]."""
        return hs @ params["W_hy"] + params["b_y"]

    def outputs_and_hiddens(self, params: Params, xs: jax.Array,
                            lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """xs [T, B, D] -> (outputs [T, B, O], hs [T, B, H]); both zero on padded steps."""
        hs = self.hiddens(params, xs, lengths)
        out = self.readout(params, hs)
        if lengths is not None:
            real = recurrence.sequence_mask(lengths, xs.shape[0])[..., None]
            out = jnp.where(real, out, jnp.zeros_like(out))
        return out, hs

    def apply(self, params: Params, xs: jax.Array, lengths: jax.Array | None = None
              ) -> jax.Array:
        """xs [T, B, D] (and lengths [B]) -> outputs [T, B, O] (zero on padded steps)."""
        return self.outputs_and_hiddens(params, xs, lengths)[0]


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"tagger.make: {name} must be a positive integer, got {value!r}")


def make(cell: Cell | Sequence[Cell], input_size: int, output_size: int, *,
         readout_scale: float | None = None, unroll: int = 1, remat: bool = False) -> Tagger:
    """A :class:`Tagger` of ``cell`` (a list of cells is stacked, layer l feeding l+1).

    Args:
      cell: a :class:`~rnnjax.cells.Cell`, e.g. ``cells.by_name("gru", 64,
        learn_initial_state=True, fused="vjp")``, or a sequence of them.
      input_size: D.
      output_size: O.
      readout_scale: W_hy's initial scale; None gives 1/sqrt(H).
      unroll: steps per ``lax.scan`` iteration.
      remat: rematerialise each step in the backward pass.
    """
    if not isinstance(cell, Cell):
        if isinstance(cell, Sequence) and cell and all(isinstance(c, Cell) for c in cell):
            cell = recurrence.stack(cell) if len(cell) > 1 else cell[0]
        else:
            raise ValueError(f"tagger.make: cell must be a Cell or a non-empty sequence of "
                             f"Cells, got {cell!r}")
    _check_positive_int("input_size", input_size)
    _check_positive_int("output_size", output_size)
    _check_positive_int("unroll", unroll)
    if readout_scale is not None and not (isinstance(readout_scale, (int, float))
                                          and math.isfinite(readout_scale) and readout_scale > 0):
        raise ValueError(f"tagger.make: readout_scale must be a positive finite number or None "
                         f"(1/sqrt(H)), got {readout_scale!r}")
    return Tagger(cell, int(input_size), int(output_size), readout_scale, int(unroll),
                  bool(remat))
