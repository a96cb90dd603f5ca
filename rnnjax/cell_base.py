"""What every recurrent cell is made of: the :class:`Cell` type, the LSTM's carry, the
activations, and the rule for a cell's own unroll.

This module sits under :mod:`rnnjax.cells` (the constructors), :mod:`rnnjax.fused`
(hand-written derivatives) and :mod:`rnnjax.recurrence` (the unroller), so that none
of them imports another to learn what a cell is. Users import these names from
:mod:`rnnjax.cells`.

A cell may carry its own ``unroll`` (a stack runs layer by layer; a fused cell runs
its hand-written BPTT). An override that computes exactly the generic scan of the
cell's ``project`` and ``recurrent_step``, only faster, says so with
:func:`mark_step_equivalent`; :func:`has_valid_override` then ignores it once a
wrapper has replaced those step functions, and the unroller may replace it by the
generic scan where that scan can do something the override cannot
(rematerialisation).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # an array [B, H] or a pytree of them (LSTMCarry)

__all__ = [
    "Params",
    "Carry",
    "Cell",
    "LSTMCarry",
    "ACTIVATIONS",
    "ACTIVATION_ALIASES",
    "activation",
    "heaviside",
    "mark_step_equivalent",
    "is_step_equivalent",
    "has_valid_override",
]


class Cell(NamedTuple):
    """A recurrent cell: pure functions over a params pytree.

    Attributes:
      name: a short description, e.g. ``"vanilla[tanh]"``.
      hidden_size: H, the size of the output ``h_t``.
      init: ``init(key, input_size) -> params``.
      initial_carry: ``initial_carry(params, batch_size) -> carry``; the learned
        initial state if the cell has one, else zeros in the params' dtype.
      project: ``project(params, xs[..., D]) -> xp[..., P]``, the input projection.
      recurrent_step: ``recurrent_step(params, carry, xp_t[B, P]) -> (carry, h_t[B, H])``.
      output: ``output(carry) -> h[B, H]``, the hidden state held in a carry.
      unroll: optional override used by ``recurrence.unroll``, called as
        ``unroll(params, xs, *, carry, lengths, reverse, unroll, remat)``; ``None``
        for the generic scan.
    """

    name: str
    hidden_size: int
    init: Callable[[jax.Array, int], Params]
    initial_carry: Callable[[Params, int], Carry]
    project: Callable[[Params, jax.Array], jax.Array]
    recurrent_step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
    output: Callable[[Carry], jax.Array]
    unroll: Callable[..., tuple[Carry, jax.Array]] | None = None

    def step(self, params: Params, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
        """One time step from the raw input ``x_t`` [B, D]: ``(carry, h_t [B, H])``."""
        return self.recurrent_step(params, carry, self.project(params, x_t))


class LSTMCarry(NamedTuple):
    """The LSTM's state: memory cell ``c`` [B, H] and output ``h`` [B, H]."""

    c: jax.Array
    h: jax.Array


@jax.custom_jvp
def heaviside(z: jax.Array) -> jax.Array:
    """Binary threshold unit: 1 where z > 0, else 0.

    Its derivative is zero almost everywhere (and undefined at 0), so no gradient
    flows through it: threshold cells are for hand-set networks, not for training
    by backprop. The custom JVP makes that explicit rather than producing NaNs.
    """
    return (z > 0).astype(z.dtype)


@heaviside.defjvp
def _heaviside_jvp(primals, tangents):
    (z,), _ = primals, tangents
    out = heaviside(z)
    return out, jnp.zeros_like(out)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": lambda z: z,
    "logistic": jax.nn.sigmoid,
    "threshold": heaviside,
}
ACTIVATION_ALIASES = {"linear": "identity", "sigmoid": "logistic", "heaviside": "threshold"}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name`` (a key of ``ACTIVATIONS`` or an alias)."""
    name = ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; accepted: {sorted(ACTIVATIONS)} "
            f"(aliases {sorted(ACTIVATION_ALIASES)})")
    return ACTIVATIONS[name]


def mark_step_equivalent(override: Callable, project: Callable,
                         recurrent_step: Callable) -> Callable:
    """Record that ``override`` computes the generic scan of ``project`` and
    ``recurrent_step`` (only faster); returns ``override``."""
    override.steps = (project, recurrent_step)
    return override


def is_step_equivalent(override: Callable | None) -> bool:
    """Whether ``override`` was marked by :func:`mark_step_equivalent`."""
    return getattr(override, "steps", None) is not None


def has_valid_override(cell: Cell) -> bool:
    """Whether ``recurrence.unroll`` should call ``cell.unroll``.

    An override marked step-equivalent is stale once a wrapper replaced the step
    functions it computes (e.g. ``cell._replace(recurrent_step=...)``); the generic
    scan then runs the new ones. Unmarked overrides (a stack's) are always used.
    """
    if cell.unroll is None:
        return False
    steps = getattr(cell.unroll, "steps", None)
    return steps is None or (steps[0] is cell.project and steps[1] is cell.recurrent_step)
