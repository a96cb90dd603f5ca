"""Flax interoperability: parameter conversion and linen adapters.

Two directions, so that Flax users can adopt rnnjax cells and check them:

* ``to_flax(kind, params)`` / ``from_flax(kind, flax_params)`` convert weights
  between rnnjax's cells and ``flax.linen``'s ``SimpleCell``, ``LSTMCell`` and
  ``GRUCell`` (flax 0.12). Given the same weights both give the same outputs
  (``tests/test_flax_equivalence.py``).
* ``FlaxCell(cell)`` is a linen ``RNNCellBase`` wrapping an rnnjax
  :class:`~rnnjax.cells.Cell`, so ``flax.linen.RNN`` can drive it;
  ``FlaxUnroll(cell)`` is a linen module that runs ``rnnjax.recurrence.unroll``
  over a whole sequence (input projection hoisted out of the loop, and the
  fused BPTT of ``rnnjax.fused`` where the cell has one).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from rnnjax import cells, flax_compat
    >>> rnn = nn.RNN(flax_compat.FlaxCell(cells.gru(8)))
    >>> xs = jnp.ones((2, 5, 3))                       # [B, T, D], Flax's default layout
    >>> variables = rnn.init(jax.random.PRNGKey(0), xs)
    >>> rnn.apply(variables, xs).shape
    (2, 5, 8)

Layouts (flax ``Dense`` kernels are [in, out], the same as rnnjax's weights):

* vanilla <-> ``SimpleCell``: ``i.kernel = W_xh``, ``i.bias = b_h``, ``h.kernel = W_hh``.
* lstm <-> ``LSTMCell``: rnnjax's gates i, f, g, o are column blocks of
  ``W_xh``/``W_hh``/``b``; Flax has one Dense per gate, ``i?`` without bias and
  ``h?`` with the (whole) bias. Both carries are ``(c, h)``.
* gru <-> ``GRUCell``: gates r, z, n; ``i?`` carry the input biases ``b_x``,
  ``hr``/``hz`` have no bias and ``hn`` has ``b_hn`` (the reset gate multiplies
  ``h W_hn + b_hn`` in both).

Flax's cells have no learned initial state (their carry comes from
``carry_init``); pass ``initial_carry=cell.initial_carry(params, B)`` to
``nn.RNN`` instead, which is why ``to_flax`` refuses params holding ``h0``/``c0``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import recurrence
from rnnjax.cells import Cell, Params

__all__ = ["KINDS", "kind_of", "to_flax", "from_flax", "flax_cell", "FlaxCell", "FlaxUnroll"]

KINDS = ("vanilla", "lstm", "gru")
_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def kind_of(cell: Cell) -> str:
    """``vanilla``, ``lstm`` or ``gru`` for an rnnjax cell; ValueError for others."""
    for kind in KINDS:
        if cell.name == kind or cell.name.startswith(kind + "["):
            return kind
    raise ValueError(f"no Flax counterpart for cell {cell.name!r}; accepted: vanilla, lstm, gru")


def _check_kind(kind: str | Cell) -> str:
    if isinstance(kind, Cell):
        return kind_of(kind)
    if kind not in KINDS:
        raise ValueError(f"unknown cell kind {kind!r}; accepted: {', '.join(KINDS)}")
    return kind


def _blocks(w: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    return dict(zip(names, jnp.split(w, len(names), axis=-1)))


def to_flax(kind: str | Cell, params: Params) -> dict[str, Any]:
    """rnnjax params -> the ``params`` collection of the matching flax.linen cell.

    Args:
      kind: ``vanilla`` (-> ``SimpleCell``), ``lstm`` (-> ``LSTMCell``), ``gru``
        (-> ``GRUCell``), or the rnnjax Cell itself.
      params: the rnnjax params of that cell.

    Returns:
      a nested dict, used as ``flax_cell.apply({"params": to_flax(...)}, carry, x)``.
    """
    kind = _check_kind(kind)
    learned = sorted(k for k in ("h0", "c0") if k in params)
    if learned:
        raise ValueError(
            f"to_flax: params hold a learned initial state {learned}; Flax cells have none. "
            "Drop those keys and pass initial_carry=cell.initial_carry(params, B) to nn.RNN.")
    if kind == "vanilla":
        h = params["W_hh"].shape[0]
        return {"i": {"kernel": params["W_xh"], "bias": params.get("b_h", jnp.zeros((h,)))},
                "h": {"kernel": params["W_hh"]}}
    if kind == "lstm":
        wx = _blocks(params["W_xh"], _LSTM_GATES)
        wh = _blocks(params["W_hh"], _LSTM_GATES)
        b = _blocks(params["b"], _LSTM_GATES)
        out = {f"i{g}": {"kernel": wx[g]} for g in _LSTM_GATES}
        out.update({f"h{g}": {"kernel": wh[g], "bias": b[g]} for g in _LSTM_GATES})
        return out
    wx = _blocks(params["W_xh"], _GRU_GATES)
    bx = _blocks(params["b_x"], _GRU_GATES)
    wh = _blocks(params["W_hh"], _GRU_GATES)
    out = {f"i{g}": {"kernel": wx[g], "bias": bx[g]} for g in _GRU_GATES}
    out.update({"hr": {"kernel": wh["r"]}, "hz": {"kernel": wh["z"]},
                "hn": {"kernel": wh["n"], "bias": params["b_hn"]}})
    return out


def _get(tree: dict, *path: str) -> jax.Array:
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) and not hasattr(node, "keys"):
            raise ValueError(f"from_flax: expected a dict at {'/'.join(path[:i])}, got {type(node)}")
        if key not in node:
            raise ValueError(
                f"from_flax: missing parameter {'/'.join(path)}; found {sorted(node.keys())}")
        node = node[key]
    return jnp.asarray(node)


def from_flax(kind: str | Cell, flax_params: dict[str, Any]) -> Params:
    """The ``params`` collection of a flax.linen cell -> rnnjax params.

    Accepts either the bare collection or the whole ``{"params": ...}`` variables.
    LSTM biases: Flax's ``LSTMCell`` keeps them on the hidden Dense layers, so
    ``b`` is their concatenation (the input Dense layers have none).
    """
    kind = _check_kind(kind)
    if "params" in flax_params and len(flax_params) == 1:
        flax_params = flax_params["params"]
    if kind == "vanilla":
        return {"W_xh": _get(flax_params, "i", "kernel"), "W_hh": _get(flax_params, "h", "kernel"),
                "b_h": _get(flax_params, "i", "bias")}
    if kind == "lstm":
        return {
            "W_xh": jnp.concatenate([_get(flax_params, f"i{g}", "kernel") for g in _LSTM_GATES], -1),
            "W_hh": jnp.concatenate([_get(flax_params, f"h{g}", "kernel") for g in _LSTM_GATES], -1),
            "b": jnp.concatenate([_get(flax_params, f"h{g}", "bias") for g in _LSTM_GATES], -1),
        }
    return {
        "W_xh": jnp.concatenate([_get(flax_params, f"i{g}", "kernel") for g in _GRU_GATES], -1),
        "b_x": jnp.concatenate([_get(flax_params, f"i{g}", "bias") for g in _GRU_GATES], -1),
        "W_hh": jnp.concatenate([_get(flax_params, f"h{g}", "kernel") for g in _GRU_GATES], -1),
        "b_hn": _get(flax_params, "hn", "bias"),
    }


def flax_cell(kind: str | Cell, hidden_size: int, **kwargs) -> nn.RNNCellBase:
    """The flax.linen cell that matches an rnnjax cell kind (``SimpleCell`` etc.)."""
    kind = _check_kind(kind)
    module = {"vanilla": nn.SimpleCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind]
    return module(features=hidden_size, **kwargs)


def _zero_carry(cell: Cell, input_shape: tuple[int, ...]):
    """Zeros shaped like ``cell``'s carry for inputs [*batch, D] (any batch dims)."""
    *batch, d = input_shape
    shapes = jax.eval_shape(lambda: cell.initial_carry(cell.init(jax.random.PRNGKey(0), d), 1))
    return jax.tree_util.tree_map(
        lambda s: jnp.zeros(tuple(batch) + tuple(s.shape[1:]), s.dtype), shapes)


def _linen_params(module: nn.Module, cell: Cell, input_size: int) -> Params:
    """Register ``cell``'s params in a linen module, one linen param per rnnjax key.

    Each key is initialised by ``cell.init`` (so e.g. the LSTM forget bias and the
    orthogonal recurrent matrix are kept), with the module's ``params`` RNG.
    """
    shapes = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), input_size))
    if not isinstance(shapes, dict):  # e.g. a stack: one linen param holding the pytree
        return module.param("cell", lambda key: cell.init(key, input_size))
    return {name: module.param(name, lambda key, n=name: cell.init(key, input_size)[n])
            for name in shapes}


class FlaxCell(nn.RNNCellBase):
    """A flax.linen cell that runs an rnnjax :class:`~rnnjax.cells.Cell`.

    ``nn.RNN(FlaxCell(cells.lstm(H)))`` unrolls it with Flax's scan. The linen
    params are the rnnjax params under the same names (``W_xh``, ``W_hh``, ...), so
    ``variables["params"]`` can be passed straight to ``recurrence.unroll``.
    The carry starts at zero (Flax's convention); a learned ``h0``/``c0`` is not
    supported here: use ``FlaxUnroll`` or pass ``initial_carry`` to ``nn.RNN``.

    Attributes:
      cell: the rnnjax cell.
    """

    cell: Cell

    @nn.compact
    def __call__(self, carry, inputs: jax.Array):
        """One step: inputs [*batch, D] -> ``(carry, h [*batch, H])``."""
        params = _linen_params(self, self.cell, inputs.shape[-1])
        if isinstance(params, dict) and ({"h0", "c0"} & set(params)):
            raise ValueError(
                "FlaxCell: cells with learn_initial_state=True are not supported by nn.RNN's "
                "zero carry; use flax_compat.FlaxUnroll or pass initial_carry to nn.RNN")
        return self.cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]):
        """Zeros shaped like the cell's carry, for inputs of ``input_shape`` [*batch, D]."""
        del rng  # the carry is deterministic zeros
        return _zero_carry(self.cell, input_shape)

    @property
    def num_feature_axes(self) -> int:
        return 1


class FlaxUnroll(nn.Module):
    """A linen layer that unrolls an rnnjax cell with ``rnnjax.recurrence.unroll``.

    Faster than ``nn.RNN(FlaxCell(...))``: the input projection is one matmul
    over all steps, and cells with a fused BPTT use it. Supports the learned
    initial state, ``lengths`` (padded outputs are zero) and ``reverse``.

    Attributes:
      cell: the rnnjax cell.
      time_major: inputs [T, B, D] if True, else [B, T, D] (Flax's default).
      unroll: steps per scan iteration.
      remat: rematerialise each step in the backward pass.
    """

    cell: Cell
    time_major: bool = False
    unroll: int = 1
    remat: bool = False

    @nn.compact
    def __call__(self, xs: jax.Array, *, carry=None, lengths: jax.Array | None = None,
                 reverse: bool = False):
        """xs [B, T, D] (or [T, B, D]) -> ``(final_carry, hs [B, T, H])``."""
        if xs.ndim != 3:
            raise ValueError(f"FlaxUnroll: inputs must have rank 3, got shape {tuple(xs.shape)}")
        params = _linen_params(self, self.cell, xs.shape[-1])
        return recurrence.unroll(self.cell, params, xs, carry=carry, lengths=lengths,
                                 time_major=self.time_major, reverse=reverse,
                                 unroll=self.unroll, remat=self.remat)
