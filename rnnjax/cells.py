"""Recurrent cells as small sets of pure functions.

A :class:`Cell` is a NamedTuple of functions over a params dict, in the spirit of
``stax``'s ``(init_fun, apply_fun)`` pairs. Every cell splits its transition into

* ``project(params, xs)``: the part that depends only on the input, including the
  biases. It is applied to all time steps at once, as one large matmul outside
  the scan, which is where most of the input work happens;
* ``recurrent_step(params, carry, xp_t)``: the part that needs the previous state,
  the only work left inside ``lax.scan``.

``step(params, carry, x_t)`` composes the two, for code that steps by hand
(sampling, decoding). The same weights are used at every time step: that is the
weight sharing of an RNN.

Shapes: ``D`` input size, ``H`` hidden size, ``B`` batch, ``P`` projected size.

    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import cells
    >>> cell = cells.lstm(8)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> carry = cell.initial_carry(params, 2)
    >>> carry, h = cell.step(params, carry, jnp.ones((2, 3)))
    >>> h.shape
    (2, 8)

The learned initial state (the lecture's "separate biases for the first time
step") is a parameter ``h0`` (and ``c0`` for the LSTM) broadcast over the batch,
enabled with ``learn_initial_state=True``; otherwise the initial state is zero,
in the params' dtype.

The :class:`Cell` type, ``LSTMCarry`` and the activations live in
:mod:`rnnjax.cell_base` and are imported from here. ``steep(cell, beta)`` makes a
vanilla cell's units steeper (``act(beta z)``) on the same params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax import fused as fused_lib
from rnnjax import initializers as inits
from rnnjax.cell_base import (ACTIVATION_ALIASES, ACTIVATIONS, Carry, Cell, LSTMCarry, Params,
                              activation as _activation, heaviside, is_step_equivalent,
                              mark_step_equivalent)
from rnnjax.kernels import onednn as onednn_lib

__all__ = [
    "Cell",
    "LSTMCarry",
    "Params",
    "Carry",
    "ACTIVATIONS",
    "CELL_NAMES",
    "vanilla",
    "lstm",
    "gru",
    "mrnn",
    "by_name",
    "heaviside",
    "steep",
]

def _check_size(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_input(xs: jax.Array, params: Params, weight: str, cell_name: str) -> None:
    """Shapes are static under jit, so this check costs nothing at run time."""
    expected = params[weight].shape[0]
    if xs.ndim < 1 or xs.shape[-1] != expected:
        raise ValueError(
            f"{cell_name}: input has shape {tuple(xs.shape)}, but the cell was initialised for "
            f"input size {expected}; expected [..., {expected}]")


def _cast(x: jax.Array, dtype) -> jax.Array:
    return x if dtype is None else x.astype(dtype)


def _recurrent_initializer(recurrent_init, spectral_radius: float | None, scale: float = 1.0):
    init = recurrent_init
    if isinstance(recurrent_init, str):
        if recurrent_init == "identity":
            init = inits.identity(scale)
        elif recurrent_init == "orthogonal":
            init = inits.orthogonal(scale)
        else:
            init = inits.by_name(recurrent_init)
    elif not callable(recurrent_init):
        raise ValueError(f"recurrent_init must be a name or a callable, got {recurrent_init!r}")
    if spectral_radius is not None:
        init = inits.with_spectral_radius(init, spectral_radius)
    return init


def _zero_state(params: Params, key: str, batch_size: int, hidden: int) -> jax.Array:
    if key in params:
        return jnp.broadcast_to(params[key], (batch_size, hidden))
    # The params' dtype (float64 params under jax_enable_x64 give a float64 state):
    # a carry of another dtype than the step's output would fail lax.scan's check.
    return jnp.zeros((batch_size, hidden), jnp.result_type(*params.values()))


def _dot(a: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """a @ w, in ``dtype`` when given (e.g. bfloat16 compute), accumulating in float32."""
    if dtype is None:
        return a @ w
    return jnp.matmul(a.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _maybe_fused(cell: Cell, fused: bool, kind: str, dtype,
                 activation: str | None = None) -> Cell:
    """Use rnnjax.fused's hand-written derivatives when asked and available: for
    float32/float64 compute (``dtype=None``) and, for vanilla cells, the activations
    in ``fused.VANILLA_ACTIVATIONS``; otherwise the generic scan."""
    if not isinstance(fused, bool):
        raise ValueError(f"{cell.name}: fused must be True (hand-written BPTT) or False (the "
                         f"generic lax.scan), got {fused!r}")
    if not fused or dtype is not None:
        return cell
    if kind == "vanilla" and activation not in fused_lib.VANILLA_ACTIVATIONS:
        return cell
    return fused_lib.attach(cell, kind, activation)


def _with_backend(cell: Cell, backend: str, fused: bool, dtype) -> Cell:
    """Run the unroll on oneDNN's fused RNN primitive (``rnnjax.kernels.onednn``) where
    ``backend`` says so: ``"auto"`` for float32 fused LSTM and GRU cells on the CPU when
    the kernel is installed (XLA wherever it does not apply), ``"onednn"`` also for
    vanilla cells, ``"xla"`` never."""
    if backend not in onednn_lib.BACKENDS:
        raise ValueError(f"{cell.name}: backend must be one of "
                         f"{', '.join(onednn_lib.BACKENDS)}, got {backend!r}")
    if backend == "onednn" and dtype is not None:
        raise ValueError(f"{cell.name}: backend='onednn' computes in float32; dtype={dtype} "
                         "needs backend='xla' (or 'auto')")
    if backend == "xla" or backend == "auto" and (not fused or dtype is not None):
        return cell
    return onednn_lib.with_backend(cell, backend)


# ----------------------------------------------------------------------------
# Vanilla RNN: h_t = phi(W_xh^T x_t + W_hh^T h_{t-1} + b_h)
# ----------------------------------------------------------------------------

def vanilla(
    hidden_size: int,
    activation: str = "tanh",
    *,
    learn_initial_state: bool = False,
    recurrent_init: str | inits.Initializer = "orthogonal",
    input_init: str | inits.Initializer = "glorot",
    spectral_radius: float | None = None,
    use_bias: bool = True,
    dtype=None,
    fused: bool = True,
    backend: str = "auto",
) -> Cell:
    """The vanilla RNN cell ``h_t = act(x_t W_xh + h_{t-1} W_hh + b_h)``.

    Args:
      hidden_size: H.
      activation: ``tanh``, ``relu``, ``identity`` (linear units), ``logistic``
        or ``threshold`` (binary; zero gradient, for hand-set networks only).
      learn_initial_state: add a learned ``h0`` [H].
      recurrent_init: initialiser of W_hh: ``orthogonal``, ``identity`` (IRNN),
        ``glorot``, ``normal`` or a callable.
      input_init: initialiser of W_xh.
      spectral_radius: if set, W_hh is rescaled to this spectral radius.
      dtype: compute dtype of the matmuls (e.g. ``jnp.bfloat16``); params and
        accumulation stay float32.
      fused: unroll with the hand-written derivatives of ``rnnjax.fused`` (faster on
        CPU; every kind of autodiff works); ``False``: the plain ``lax.scan``.
      backend: ``"auto"`` (XLA for vanilla cells: faster there), ``"xla"``, or
        ``"onednn"``: oneDNN's fused RNN primitive on the CPU (tanh, relu, logistic;
        ``rnnjax.kernels.onednn``, the ``onednn`` extra).

    Params: ``W_xh`` [D, H], ``W_hh`` [H, H], ``b_h`` [H], and ``h0`` [H] if learned.
    """
    _check_size("hidden_size", hidden_size)
    act = _activation(activation)
    w_h_init = _recurrent_initializer(recurrent_init, spectral_radius)
    w_x_init = inits.by_name(input_init)
    name = f"vanilla[{ACTIVATION_ALIASES.get(activation, activation)}]"

    def init(key: jax.Array, input_size: int) -> Params:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        params = {
            "W_xh": w_x_init(kx, (input_size, hidden_size), jnp.float32),
            "W_hh": w_h_init(kh, (hidden_size, hidden_size), jnp.float32),
        }
        if use_bias:
            params["b_h"] = jnp.zeros((hidden_size,), jnp.float32)
        if learn_initial_state:
            params["h0"] = jnp.zeros((hidden_size,), jnp.float32)
        return params

    def initial_carry(params: Params, batch_size: int) -> jax.Array:
        return _zero_state(params, "h0", batch_size, hidden_size)

    def project(params: Params, xs: jax.Array) -> jax.Array:
        _check_input(xs, params, "W_xh", name)
        z = _dot(xs, params["W_xh"], dtype)
        return z + params["b_h"] if "b_h" in params else z

    def recurrent_step(params: Params, h: jax.Array, xp_t: jax.Array):
        h = act(xp_t + _dot(h, params["W_hh"], dtype))
        return h, h

    cell = Cell(name, hidden_size, init, initial_carry, project, recurrent_step, lambda h: h)
    cell = _maybe_fused(cell, fused, "vanilla", dtype, ACTIVATION_ALIASES.get(activation, activation))
    return _with_backend(cell, backend, fused, dtype)


# ----------------------------------------------------------------------------
# LSTM (Hochreiter & Schmidhuber 1997, with forget gate), gate order i, f, g, o
# ----------------------------------------------------------------------------

def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    learn_initial_state: bool = False,
    recurrent_init: str | inits.Initializer = "orthogonal",
    input_init: str | inits.Initializer = "glorot",
    spectral_radius: float | None = None,
    dtype=None,
    fused: bool = True,
    backend: str = "auto",
) -> Cell:
    """LSTM cell; carry ``LSTMCarry(c, h)``.

    ``i, f, g, o = split(x W_xh + h W_hh + b)``; ``c = sigmoid(f) c + sigmoid(i) tanh(g)``;
    ``h = sigmoid(o) tanh(c)``. The forget-gate bias starts at ``forget_bias``
    (1.0, Gers et al. 2000 / Jozefowicz et al. 2015) so that memory is kept early on.

    ``backend``: ``"auto"`` runs ``recurrence.unroll`` on oneDNN's fused LSTM primitive
    on the CPU when the ``onednn`` extra is installed and the call allows it (float32,
    no ``lengths``, no ``remat``; see ``rnnjax.kernels.onednn``), else on XLA;
    ``"xla"`` or ``"onednn"`` choose. ``fused``, ``dtype`` as in :func:`vanilla`.

    Params: ``W_xh`` [D, 4H], ``W_hh`` [H, 4H], ``b`` [4H]; ``h0``, ``c0`` [H] if learned.
    """
    _check_size("hidden_size", hidden_size)
    H = hidden_size
    w_h_init = _recurrent_initializer(recurrent_init, spectral_radius)
    w_x_init = inits.by_name(input_init)

    def init(key: jax.Array, input_size: int) -> Params:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        params = {
            "W_xh": w_x_init(kx, (input_size, 4 * H), jnp.float32),
            "W_hh": w_h_init(kh, (H, 4 * H), jnp.float32),
            "b": jnp.zeros((4 * H,), jnp.float32).at[H:2 * H].set(forget_bias),
        }
        if learn_initial_state:
            params["h0"] = jnp.zeros((H,), jnp.float32)
            params["c0"] = jnp.zeros((H,), jnp.float32)
        return params

    def initial_carry(params: Params, batch_size: int) -> LSTMCarry:
        return LSTMCarry(_zero_state(params, "c0", batch_size, H),
                         _zero_state(params, "h0", batch_size, H))

    def project(params: Params, xs: jax.Array) -> jax.Array:
        _check_input(xs, params, "W_xh", "lstm")
        return _dot(xs, params["W_xh"], dtype) + params["b"]

    def recurrent_step(params: Params, carry: LSTMCarry, xp_t: jax.Array):
        z = xp_t + _dot(carry.h, params["W_hh"], dtype)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMCarry(c, h), h

    cell = Cell("lstm", H, init, initial_carry, project, recurrent_step, lambda carry: carry.h)
    return _with_backend(_maybe_fused(cell, fused, "lstm", dtype), backend, fused, dtype)


# ----------------------------------------------------------------------------
# GRU (Cho et al. 2014), the cuDNN / PyTorch / Flax variant: the reset gate
# multiplies (W_hn h + b_hn), so all recurrent matmuls are one [H, 3H] product.
# ----------------------------------------------------------------------------

def gru(
    hidden_size: int,
    *,
    update_bias: float = 0.0,
    learn_initial_state: bool = False,
    recurrent_init: str | inits.Initializer = "orthogonal",
    input_init: str | inits.Initializer = "glorot",
    spectral_radius: float | None = None,
    dtype=None,
    fused: bool = True,
    backend: str = "auto",
) -> Cell:
    """GRU cell.

    ``r = sigmoid(xr + h W_hr)``, ``z = sigmoid(xz + h W_hz)``,
    ``n = tanh(xn + r * (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.

    ``update_bias`` initialises the update gate's bias: a positive value (like the
    LSTM's forget bias) starts the GRU copying its state forward, which keeps the
    gradient from vanishing at initialisation on long sequences.

    ``backend``: as for :func:`lstm` (oneDNN's linear-before-reset GRU primitive, the
    same equations).

    Params: ``W_xh`` [D, 3H], ``b_x`` [3H], ``W_hh`` [H, 3H], ``b_hn`` [H]; ``h0`` if learned.
    """
    _check_size("hidden_size", hidden_size)
    H = hidden_size
    w_h_init = _recurrent_initializer(recurrent_init, spectral_radius)
    w_x_init = inits.by_name(input_init)

    def init(key: jax.Array, input_size: int) -> Params:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        params = {
            "W_xh": w_x_init(kx, (input_size, 3 * H), jnp.float32),
            "b_x": jnp.zeros((3 * H,), jnp.float32).at[H:2 * H].set(update_bias),
            "W_hh": w_h_init(kh, (H, 3 * H), jnp.float32),
            "b_hn": jnp.zeros((H,), jnp.float32),
        }
        if learn_initial_state:
            params["h0"] = jnp.zeros((H,), jnp.float32)
        return params

    def initial_carry(params: Params, batch_size: int) -> jax.Array:
        return _zero_state(params, "h0", batch_size, H)

    def project(params: Params, xs: jax.Array) -> jax.Array:
        _check_input(xs, params, "W_xh", "gru")
        return _dot(xs, params["W_xh"], dtype) + params["b_x"]

    def recurrent_step(params: Params, h: jax.Array, xp_t: jax.Array):
        hp = _dot(h, params["W_hh"], dtype)
        xr, xz, xn = jnp.split(xp_t, 3, axis=-1)
        hr, hz, hn = jnp.split(hp, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + params["b_hn"]))
        h = (1.0 - z) * n + z * h
        return h, h

    cell = Cell("gru", H, init, initial_carry, project, recurrent_step, lambda h: h)
    return _with_backend(_maybe_fused(cell, fused, "gru", dtype), backend, fused, dtype)


# ----------------------------------------------------------------------------
# Multiplicative RNN (Sutskever, Martens & Hinton 2011)
#   f_t = diag(W_fx x_t) W_fh h_{t-1};  h_t = tanh(W_hf f_t + W_hx x_t + b_h)
# The input chooses the recurrent matrix: W_hh(x) = W_fh diag(W_fx x) W_hf,
# factored through F factors so that it costs O(H F), not O(V H^2).
# ----------------------------------------------------------------------------

def mrnn(
    hidden_size: int,
    factors: int | None = None,
    *,
    learn_initial_state: bool = False,
    input_init: str | inits.Initializer = "glorot",
    factor_init: str | inits.Initializer = "glorot",
    dtype=None,
) -> Cell:
    """Multiplicative RNN with ``factors`` F (default F = H).

    Params: ``W_fx`` [D, F], ``W_fh`` [H, F], ``W_hf`` [F, H], ``W_hx`` [D, H],
    ``b_h`` [H]; ``h0`` if learned.
    """
    _check_size("hidden_size", hidden_size)
    _check_size("factors", factors, allow_none=True)
    H, F = hidden_size, factors or hidden_size
    x_init, f_init = inits.by_name(input_init), inits.by_name(factor_init)

    def init(key: jax.Array, input_size: int) -> Params:
        _check_size("input_size", input_size)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        params = {
            # The input's gain on each factor starts near 1 so that the initial
            # transition is a well-scaled product, not close to zero.
            "W_fx": 1.0 + 0.1 * jax.random.normal(k1, (input_size, F), jnp.float32),
            "W_fh": f_init(k2, (H, F), jnp.float32),
            "W_hf": f_init(k3, (F, H), jnp.float32),
            "W_hx": x_init(k4, (input_size, H), jnp.float32),
            "b_h": jnp.zeros((H,), jnp.float32),
        }
        if learn_initial_state:
            params["h0"] = jnp.zeros((H,), jnp.float32)
        return params

    def initial_carry(params: Params, batch_size: int) -> jax.Array:
        return _zero_state(params, "h0", batch_size, H)

    def project(params: Params, xs: jax.Array) -> jax.Array:
        _check_input(xs, params, "W_fx", "mrnn")
        # [..., F + H]: the factor gains and the direct input drive, side by side.
        return jnp.concatenate(
            [_dot(xs, params["W_fx"], dtype), _dot(xs, params["W_hx"], dtype) + params["b_h"]],
            axis=-1)

    def recurrent_step(params: Params, h: jax.Array, xp_t: jax.Array):
        fx, hx = xp_t[..., :F], xp_t[..., F:]
        f = fx * _dot(h, params["W_fh"], dtype)
        h = jnp.tanh(_dot(f, params["W_hf"], dtype) + hx)
        return h, h

    return Cell(f"mrnn[F={F}]", H, init, initial_carry, project, recurrent_step, lambda h: h)


def steep(cell: Cell, beta: float) -> Cell:
    """``cell`` with its pre-activations multiplied by ``beta`` (vanilla cells).

    act(beta * (x W_xh + h W_hh + b)): the same function class, but the units
    saturate at smaller weights, and gradient descent finds saturated
    (automaton-like) solutions sooner. The params are the base cell's, unscaled;
    a fused cell stays fused.
    """
    if beta == 1.0:
        return cell
    if not cell.name.startswith("vanilla"):
        raise ValueError(f"--steepness applies to vanilla cells (tanh, logistic, ...), not {cell.name}")

    def scaled(p: Params) -> Params:
        # beta * (x W_xh + h W_hh + b_h) == x (beta W_xh) + h (beta W_hh) + beta b_h
        return {k: beta * v if k in ("W_xh", "W_hh", "b_h") else v for k, v in p.items()}

    def project(p: Params, xs: jax.Array) -> jax.Array:
        return cell.project(scaled(p), xs)

    def recurrent_step(p: Params, h: jax.Array, xp: jax.Array):
        return cell.recurrent_step(scaled(p), h, xp)

    new = cell._replace(name=f"{cell.name}*{beta:g}", project=project,
                        recurrent_step=recurrent_step, unroll=None)
    base_unroll = cell.unroll
    if base_unroll is None:
        return new

    def unroll(p: Params, xs: jax.Array, **kw):
        # The cell's own (fused) unroll, on the scaled weights.
        return base_unroll(scaled(p), xs, **kw)

    if is_step_equivalent(base_unroll):   # still the generic scan's computation, faster
        mark_step_equivalent(unroll, project, recurrent_step)
    return new._replace(unroll=unroll)


CELL_NAMES = ("tanh", "relu", "identity", "logistic", "threshold", "irnn", "lstm", "gru", "mrnn")


def by_name(name: str, hidden_size: int, **kwargs) -> Cell:
    """Build a cell from a name: one of ``CELL_NAMES``.

    ``tanh``/``relu``/``identity``/``logistic``/``threshold`` are vanilla cells with that
    activation; ``irnn`` is a ReLU cell with identity recurrent initialisation.
    """
    if name in ("tanh", "relu", "identity", "logistic", "threshold", "linear", "sigmoid"):
        return vanilla(hidden_size, name, **kwargs)
    if name == "irnn":
        kwargs.setdefault("recurrent_init", "identity")
        kwargs.setdefault("input_init", "normal")
        return vanilla(hidden_size, "relu", **kwargs)
    if name == "lstm":
        return lstm(hidden_size, **kwargs)
    if name == "gru":
        return gru(hidden_size, **kwargs)
    if name == "mrnn":
        return mrnn(hidden_size, **kwargs)
    raise ValueError(f"unknown cell {name!r}; accepted: {', '.join(CELL_NAMES)}")
