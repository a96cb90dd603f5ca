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

Probes read learned parity networks as boolean circuits: :func:`truth_tables`
names the function of each unit of an output-feedback network (the lecture's
architecture), :func:`canonical_parity_params` maps a learned one onto the
hand-set form (negated units flipped back, the AND unit first) and
:func:`parity_weight_table` sets the two side by side; :func:`unit_functions`
reads any cell's hidden units as functions of (previous parity, input) from
their behaviour.

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
import numpy as np

from rnnjax import cells, recurrence
from rnnjax.cells import Cell, Params
from rnnjax.data import synthetic

__all__ = [
    "HandsetNetwork",
    "Trace",
    "output_feedback",
    "summing_network",
    "comparison_network",
    "parity_network",
    "run",
    "NETWORKS",
    "BOOLEAN_NAMES",
    "truth_tables",
    "negate_hidden_unit",
    "canonical_parity_params",
    "parity_weight_table",
    "unit_functions",
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


# ----------------------------------------------------------------------------
# Probes: learned parity networks read as boolean circuits
# ----------------------------------------------------------------------------

BOOLEAN_NAMES: dict[tuple[int, int, int, int], str] = {  # truth table over (a, b) = 00, 01, 10, 11
    (0, 0, 0, 1): "AND", (0, 1, 1, 1): "OR", (0, 1, 1, 0): "XOR", (1, 1, 1, 0): "NAND",
    (1, 0, 0, 0): "NOR", (1, 0, 0, 1): "XNOR", (0, 0, 1, 1): "a", (0, 1, 0, 1): "b",
    (1, 1, 0, 0): "NOT a", (1, 0, 1, 0): "NOT b", (0, 0, 1, 0): "a AND NOT b",
    (0, 1, 0, 0): "b AND NOT a", (1, 0, 1, 1): "a OR NOT b", (1, 1, 0, 1): "b OR NOT a",
    (0, 0, 0, 0): "FALSE", (1, 1, 1, 1): "TRUE",
}


def truth_tables(params: Params) -> dict[str, str]:
    """Each unit of an output-feedback parity network (2 hidden units, 1 output) as a
    boolean function.

    Hidden units are read as functions of (a, b) = (previous output, input); the
    output unit as a function of the two hidden units (a, b) = (h1, h2). A unit is
    "on" when its logistic (or threshold) output exceeds 0.5, i.e. when z > 0.
    """
    ab = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
    z_hidden = ab[:, 1:] @ params["W_xh"] + ab[:, :1] @ params["W_yh"] + params["b_h"]  # [4, 2]
    z_out = ab @ params["W_hy"] + params["b_y"]  # [4, 1]
    table = lambda z: BOOLEAN_NAMES[tuple(int(v) for v in np.asarray(z > 0))]
    return {"h1 (prev output, input)": table(z_hidden[:, 0]),
            "h2 (prev output, input)": table(z_hidden[:, 1]),
            "output (h1, h2)": table(z_out[:, 0])}


def negate_hidden_unit(params: Params, i: int) -> dict[str, np.ndarray]:
    """An equivalent output-feedback network with hidden unit ``i`` negated (float64).

    With logistic (or threshold) units, act(-z) = 1 - act(z): flipping the signs
    of the unit's incoming weights and bias makes it compute NOT of what it
    computed; the output unit then sees 1 - h_i, which its weight -w and bias
    b + w undo exactly. So (NOR, AND -> NOR) is the same network as the lecture's
    (OR, AND -> "OR and not AND") up to this symmetry.
    """
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    for name in ("W_xh", "W_yh"):
        p[name][:, i] *= -1
    p["b_h"][i] *= -1
    p["b_y"] = p["b_y"] + p["W_hy"][i]
    p["W_hy"][i] *= -1
    return p


def canonical_parity_params(params: Params) -> dict[str, np.ndarray]:
    """A learned output-feedback parity network mapped onto the hand-set network's form.

    Hidden units that compute NAND or NOR are negated (to AND or OR, see
    :func:`negate_hidden_unit`) and the two hidden units are ordered AND first, as
    in the lecture. The function computed does not change.
    """
    tables = truth_tables(params)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for i, key in enumerate(("h1 (prev output, input)", "h2 (prev output, input)")):
        if tables[key] in ("NAND", "NOR"):
            p = negate_hidden_unit(p, i)
    if truth_tables(p)["h2 (prev output, input)"] == "AND":
        p = {k: (v[..., ::-1] if k in ("W_xh", "W_yh", "b_h") else v[::-1] if k == "W_hy" else v)
             for k, v in p.items()}
    return p


def parity_weight_table(learned: Params) -> str:
    """Hand-set and learned parity weights side by side, each unit scaled to unit norm.

    The learned network is first put in the hand-set one's form
    (:func:`canonical_parity_params`). A threshold unit is unchanged by a positive
    scaling of its incoming weights and bias, so each unit's weights are compared
    after normalising; the last column but one is the cosine of the two.
    """
    hand = parity_network().params
    learned = canonical_parity_params(learned)

    def units(p):
        rows = {f"h{i + 1}": np.array([p["W_xh"][0, i], p["W_yh"][0, i], p["b_h"][i]])
                for i in range(2)}
        rows["y"] = np.array([p["W_hy"][0, 0], p["W_hy"][1, 0], p["b_y"][0]])
        return {k: v / np.linalg.norm(v) for k, v in rows.items()}, rows

    (h, _), (mine, raw) = units(hand), units(learned)
    fmt = lambda v: " ".join(f"{x:+6.2f}" for x in v)
    lines = ["weights: h1, h2 = [input, prev output, bias]; y = [h1, h2, bias]",
             "unit  hand-set (normalised)   learned (normalised)    cosine   learned (raw)"]
    for k in h:
        lines.append(f"{k:4s}  {fmt(h[k]):24s}{fmt(mine[k]):24s}{float(h[k] @ mine[k]):+.3f}"
                     f"    {fmt(raw[k])}")
    return "\n".join(lines)


def unit_functions(cell: Cell, cell_params: Params, key: jax.Array, length: int = 50,
                   num: int = 200, agreement: float = 0.99) -> dict[str, int]:
    """Behavioural probe: which boolean function of (previous parity, input) each
    hidden unit of a cell trained on running parity computes.

    The cell runs on ``num`` random bit streams of ``length`` (from ``key``). A unit
    is read as "on" when h > 0 (tanh) or h > 0.5 (logistic). If, on at least
    ``agreement`` of the visits to each of the four cases, the unit agrees with one
    truth table, it computes that function; otherwise it is "mixed".

    Returns:
      counts per function name, e.g. ``{"XOR": 3, "mixed": 13}``.
    """
    batch = synthetic.get("parity").generate(key, num, length)
    _, hs = recurrence.unroll(cell, cell_params, batch.inputs)
    threshold = 0.5 if "logistic" in cell.name else 0.0
    on = np.asarray(hs > threshold)  # [T, B, H]
    bits = np.asarray(batch.inputs[..., 0]).astype(int)
    prev = np.concatenate([np.zeros((1, num), int), np.asarray(batch.targets)[:-1]], 0)
    counts: dict[str, int] = {}
    for unit in range(on.shape[-1]):
        table = []
        for a in (0, 1):
            for b in (0, 1):
                visits = on[(prev == a) & (bits == b), unit]
                frac = visits.mean() if visits.size else 0.5
                table.append(1 if frac >= agreement else 0 if frac <= 1 - agreement else None)
        name = BOOLEAN_NAMES[tuple(table)] if None not in table else "mixed"
        counts[name] = counts.get(name, 0) + 1
    return counts
