"""The lecture's hand-set RNNs (CSC421/2516 Lecture 13), as params for rnnjax cells.

Three networks whose weights are chosen by hand rather than learned:

* :func:`summing_network`: one linear hidden unit that adds its input to its
  previous value, every weight 1: inputs 2, -0.5, 1, 1 give 2, 1.5, 2.5, 3.5.
* :func:`comparison_network`: a linear hidden unit fed by two inputs with weights
  1 and -1 and by itself with weight 1, so it holds the running difference of
  the two input streams; a logistic output with weight 5 says whether the first
  stream's total is larger.
* :func:`parity_network`: binary threshold units that output the running parity
  of a bit stream. As the lecture draws it, the recurrence goes through the
  output unit: hidden unit 1 computes AND(previous output, input), hidden unit 2
  computes OR(previous output, input), and the output is "OR and not AND", i.e.
  previous output XOR input. At the first step there is no previous output; the
  first step's own biases (the cell's initial state, ``y0 = 0``) make it act as
  if the previous output were 0.

Each network is a :class:`HandsetNetwork`: a cell, its params and a readout; run
it with :func:`run`, which unrolls the cell with ``recurrence.unroll``.

    >>> import jax.numpy as jnp
    >>> from rnnjax import handset
    >>> trace = handset.run(handset.summing_network(), jnp.array([[2.0], [-0.5], [1.0], [1.0]]))
    >>> trace.outputs[:, 0].tolist()
    [2.0, 1.5, 2.5, 3.5]
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import cells, recurrence
from rnnjax.cells import Cell, Params

__all__ = [
    "HandsetNetwork",
    "Trace",
    "output_feedback",
    "summing_network",
    "comparison_network",
    "parity_network",
    "run",
    "NETWORKS",
]


class HandsetNetwork(NamedTuple):
    """A hand-set RNN: ``cell`` with ``params``, and ``readout(params, hs) -> ys``.

    ``hidden_units(hs)`` picks the hidden units out of the cell's outputs (for the
    parity network the cell's output also holds the output unit).
    """

    name: str
    cell: Cell
    params: Params
    readout: Callable[[Params, jax.Array], jax.Array]
    hidden_units: Callable[[jax.Array], jax.Array]
    input_size: int


class Trace(NamedTuple):
    """A network unrolled over one sequence: inputs [T, D], hidden [T, H], outputs [T, O]."""

    inputs: jax.Array
    hidden: jax.Array
    outputs: jax.Array


def _linear_readout(params: Params, hs: jax.Array) -> jax.Array:
    return hs @ params["W_hy"] + params["b_y"]


def summing_network() -> HandsetNetwork:
    """One linear unit: h_t = x_t + h_{t-1}; y_t = h_t. Every weight is 1, every bias 0."""
    cell = cells.vanilla(1, "identity")
    params = {
        "W_xh": jnp.ones((1, 1)), "W_hh": jnp.ones((1, 1)), "b_h": jnp.zeros((1,)),
        "W_hy": jnp.ones((1, 1)), "b_y": jnp.zeros((1,)),
    }
    return HandsetNetwork("sum", cell, params, _linear_readout, lambda hs: hs, 1)


def comparison_network() -> HandsetNetwork:
    """h_t = x1_t - x2_t + h_{t-1} (linear); y_t = logistic(5 h_t).

    The output is near 1 while the first input stream's running total exceeds
    the second's, near 0 when it is smaller.
    """
    cell = cells.vanilla(1, "identity")
    params = {
        "W_xh": jnp.array([[1.0], [-1.0]]), "W_hh": jnp.ones((1, 1)), "b_h": jnp.zeros((1,)),
        "W_hy": jnp.array([[5.0]]), "b_y": jnp.zeros((1,)),
    }

    def readout(p, hs):
        return jax.nn.sigmoid(_linear_readout(p, hs))

    return HandsetNetwork("compare", cell, params, readout, lambda hs: hs, 2)


def output_feedback(hidden_size: int, output_size: int, activation: str = "threshold") -> Cell:
    """A cell whose recurrence runs through its output units (a Jordan network).

    ``h_t = act(x_t W_xh + y_{t-1} W_yh + b_h)``; ``y_t = act(h_t W_hy + b_y)``.
    The carry is ``y`` [B, O]; the cell's output is ``concat(h_t, y_t)`` [B, H + O].
    The initial carry is the param ``y0`` [O]: the "previous output" seen by the
    first step, which acts as that step's own biases.

    Params: ``W_xh`` [D, H], ``W_yh`` [O, H], ``b_h`` [H], ``W_hy`` [H, O],
    ``b_y`` [O], ``y0`` [O].
    """
    act = cells.ACTIVATIONS[activation]

    def init(key, input_size):
        k1, k2, k3 = jax.random.split(key, 3)
        glorot = jax.nn.initializers.glorot_uniform()
        return {
            "W_xh": glorot(k1, (input_size, hidden_size)),
            "W_yh": glorot(k2, (output_size, hidden_size)),
            "b_h": jnp.zeros((hidden_size,)),
            "W_hy": glorot(k3, (hidden_size, output_size)),
            "b_y": jnp.zeros((output_size,)),
            "y0": jnp.zeros((output_size,)),
        }

    def initial_carry(params, batch_size):
        return jnp.broadcast_to(params["y0"], (batch_size, output_size))

    def project(params, xs):
        return xs @ params["W_xh"] + params["b_h"]

    def recurrent_step(params, y_prev, xp_t):
        h = act(xp_t + y_prev @ params["W_yh"])
        y = act(h @ params["W_hy"] + params["b_y"])
        return y, jnp.concatenate([h, y], axis=-1)

    return Cell(f"output_feedback[{activation}]", hidden_size + output_size, init, initial_carry,
                project, recurrent_step, lambda y: y)


def parity_network() -> HandsetNetwork:
    """Running parity with binary threshold units (z > 0 fires).

    Hidden unit 1 (AND): x_t + y_{t-1} - 1.5; hidden unit 2 (OR): x_t + y_{t-1} - 0.5;
    output (OR and not AND): h2 - h1 - 0.5. With y0 = 0 the first step computes
    AND(0, x_1) = 0 and OR(0, x_1) = x_1, so y_1 = x_1.
    """
    cell = output_feedback(2, 1, "threshold")
    params = {
        "W_xh": jnp.array([[1.0, 1.0]]),
        "W_yh": jnp.array([[1.0, 1.0]]),
        "b_h": jnp.array([-1.5, -0.5]),
        "W_hy": jnp.array([[-1.0], [1.0]]),
        "b_y": jnp.array([-0.5]),
        "y0": jnp.zeros((1,)),
    }
    return HandsetNetwork("parity", cell, params, lambda p, hs: hs[..., 2:],
                          lambda hs: hs[..., :2], 1)


NETWORKS: dict[str, Callable[[], HandsetNetwork]] = {
    "sum": summing_network,
    "compare": comparison_network,
    "parity": parity_network,
}


def run(network: HandsetNetwork, inputs: jax.Array) -> Trace:
    """Unroll a hand-set network over inputs [T, D] (one sequence) or [T, B, D] (a batch)."""
    inputs = jnp.asarray(inputs, jnp.float32)
    single = inputs.ndim == 2
    if single:
        inputs = inputs[:, None, :]
    if inputs.ndim != 3 or inputs.shape[-1] != network.input_size:
        raise ValueError(
            f"the {network.name} network takes inputs [T, {network.input_size}] or "
            f"[T, B, {network.input_size}], got shape {tuple(inputs.shape)}")
    _, hs = recurrence.unroll(network.cell, network.params, inputs)
    outputs = network.readout(network.params, hs)
    hidden = network.hidden_units(hs)
    if single:
        return Trace(inputs[:, 0], hidden[:, 0], outputs[:, 0])
    return Trace(inputs, hidden, outputs)
