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

The gates use one ``tanh`` per element: ``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5``,
with the 1/2 folded into the gate columns of the weights and inputs.

Two modes, both exact (the generic scan's math; ``tests/test_fused.py``):

* ``jvp`` (the default, ``cells.lstm(H)``): a ``jax.custom_jvp`` whose tangent
  recurrence is written by hand, with the weights' tangent entering through one
  matmul over all steps. Reverse mode is JAX's transpose of that tangent scan,
  which is the BPTT above. Every transformation works: ``grad``, ``jvp``,
  ``linearize``/``linear_transpose`` (Gauss-Newton products), ``hessian``, ``vmap``.
* ``vjp`` (``cells.lstm(H, fused="vjp")``): a ``jax.custom_vjp`` with the backward
  pass written directly; 5-15% faster in our measurements, but forward mode
  (``jax.jvp``, ``jacfwd``, ``linearize``) raises ``TypeError: can't apply
  forward-mode autodiff (jvp) to a custom_vjp function``. ``grad`` of ``grad`` works.

``fused=False`` gives the plain differentiable ``lax.scan``. ``remat=True`` falls
back to it too (it rematerialises each step), as do bfloat16 cells (``dtype``).

Shapes: T steps, B batch, H hidden, G = gates * H.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.cells import Cell, LSTMCarry, Params

__all__ = ["VANILLA_ACTIVATIONS", "MODES", "attach", "vanilla_unroll", "lstm_unroll", "gru_unroll"]


# Activations whose derivative is a function of the activation's output, so the
# backward pass needs only the stored states.
def _d_tanh(h):
    return 1.0 - h * h


def _d_relu(h):
    return (h > 0).astype(h.dtype)


def _d_identity(h):
    return jnp.ones_like(h)


def _d_logistic(h):
    return h * (1.0 - h)


VANILLA_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (jnp.tanh, _d_tanh),
    "relu": (jax.nn.relu, _d_relu),
    "identity": (lambda z: z, _d_identity),
    "logistic": (jax.nn.sigmoid, _d_logistic),
}


def _transposed(w: jax.Array) -> jax.Array:
    """W^T laid out row-major once; the barrier stops XLA folding it back into each dot."""
    return lax.optimization_barrier(jnp.transpose(w))


def _previous(first: jax.Array, seq: jax.Array) -> jax.Array:
    """[T, ...] sequence of the states *before* each step: first, seq[0], ..., seq[T-2]."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _weight_grad(h_prev: jax.Array, dz: jax.Array) -> jax.Array:
    """sum_t h_prev[t]^T dz[t], [T, B, H] x [T, B, G] -> [H, G]: one matmul over all steps.

    The [H, B*T] operand is laid out row-major first (``_transposed``): XLA:CPU's dot
    contracting over the leading dimension of both operands ran at 36 GFLOP/s on one
    core for the LSTM's [256, 3200] x [3200, 1024] against 60 GFLOP/s after the
    explicit transpose. The whole vjp-mode train step (bench.lm_step's model) gained
    1.24-1.29x under data parallelism on two CPU devices and stayed within noise on
    one device, where XLA already chose the fast form.
    """
    return _transposed(_batch_major(h_prev)) @ _batch_major(dz)


def _batch_major(x: jax.Array) -> jax.Array:
    """[T, B, K] -> [B*T, K]. B is the major part of the merged axis, so that a batch
    split over devices (rnnjax.parallel) stays a split of the merged axis."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, x.shape[-1])


def _keep(mask, like):
    """[T, B, 1] float mask (1 = real step) in the dtype of ``like``."""
    return mask[..., None].astype(like.dtype)


# ----------------------------------------------------------------------------
# Vanilla RNN: h_t = act(xp_t + h_{t-1} W)
# ----------------------------------------------------------------------------

def _vanilla_forward(act_name, unroll, w, h0, xp, mask):
    act = VANILLA_ACTIVATIONS[act_name][0]
    if mask is None:
        def body(h, xp_t):
            h = act(xp_t + h @ w)
            return h, h
        return lax.scan(body, h0, xp, unroll=unroll)

    def body(h, inp):
        xp_t, m_t = inp
        h = jnp.where(m_t[:, None], act(xp_t + h @ w), h)
        return h, h
    return lax.scan(body, h0, (xp, mask), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _vanilla_core(act_name, unroll, w, h0, xp, mask):
    """-> (h_T [B, H], hs [T, B, H]); hs are the carries (frozen on padded steps)."""
    return _vanilla_forward(act_name, unroll, w, h0, xp, mask)


def _vanilla_fwd(act_name, unroll, w, h0, xp, mask):
    final, hs = _vanilla_forward(act_name, unroll, w, h0, xp, mask)
    return (final, hs), (w, h0, hs, mask)


def _vanilla_bwd(act_name, unroll, res, cotangents):
    w, h0, hs, mask = res
    d_final, d_hs = cotangents
    deriv = VANILLA_ACTIVATIONS[act_name][1](hs)            # act'(z_t), from h_t
    w_t = _transposed(w)
    if mask is None:
        def body(dh, inp):
            d_hs_t, deriv_t = inp
            g = dh + d_hs_t                                 # dL/dh_t
            return (g * deriv_t) @ w_t, g
        dh0, gs = lax.scan(body, d_final, (d_hs, deriv), reverse=True, unroll=unroll)
    else:
        keep = _keep(mask, hs)
        deriv = deriv * keep                                # padded steps: no error signal
        pass_through = 1.0 - keep                           # ... the state's gradient passes

        def body(dh, inp):
            d_hs_t, deriv_t, pass_t = inp
            g = dh + d_hs_t
            return (g * deriv_t) @ w_t + g * pass_t, g
        dh0, gs = lax.scan(body, d_final, (d_hs, deriv, pass_through), reverse=True,
                           unroll=unroll)
    dz = gs * deriv                                         # dL/dz_t for all t at once
    return _weight_grad(_previous(h0, hs), dz), dh0, dz, None


_vanilla_core.defvjp(_vanilla_fwd, _vanilla_bwd)


def vanilla_unroll(act_name: str, mode: str = "jvp"):
    """The core of a vanilla cell's fused unroll: ``core(params, h0, xp, mask, unroll)``."""
    if act_name not in VANILLA_ACTIVATIONS:
        raise ValueError(f"no fused vanilla unroll for activation {act_name!r}; "
                         f"accepted: {sorted(VANILLA_ACTIVATIONS)}")

    fn = _vanilla_core_j if mode == "jvp" else _vanilla_core

    def core(params, h0, xp, mask, unroll):
        return fn(act_name, unroll, params["W_hh"], h0, xp, mask)
    return core


# ----------------------------------------------------------------------------
# LSTM, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
# ----------------------------------------------------------------------------

def _lstm_scale(hidden: int, dtype) -> jax.Array:
    """Per-column factor: 1/2 on the sigmoid gates (i, f, o), 1 on g."""
    half, one = jnp.full((hidden,), 0.5, dtype), jnp.ones((hidden,), dtype)
    return jnp.concatenate([half, half, one, half])


def _lstm_forward(unroll, w, c0, h0, xp, mask, save):
    H = h0.shape[-1]
    s = _lstm_scale(H, xp.dtype)
    w_s, xp_s, shift = w * s, xp * s, 1.0 - s     # a = tanh(z * s); gate = a * s + (1 - s)

    def cell(c, h, xp_t):
        gates = jnp.tanh(xp_t + h @ w_s) * s + shift
        i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        c_new = f * c + i * g
        return gates, c_new, o * jnp.tanh(c_new)

    if mask is None:
        def body(carry, xp_t):
            gates, c, h = cell(*carry, xp_t)
            return (c, h), ((gates, c, h) if save else h)
        (c, h), ys = lax.scan(body, (c0, h0), xp_s, unroll=unroll)
    else:
        def body(carry, inp):
            xp_t, m_t = inp
            gates, c, h = cell(*carry, xp_t)
            m = m_t[:, None]
            c, h = jnp.where(m, c, carry[0]), jnp.where(m, h, carry[1])
            return (c, h), ((gates, c, h) if save else h)
        (c, h), ys = lax.scan(body, (c0, h0), (xp_s, mask), unroll=unroll)
    return (c, h), ys


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm_core(unroll, w, c0, h0, xp, mask):
    """-> ((c_T, h_T), hs [T, B, H])."""
    return _lstm_forward(unroll, w, c0, h0, xp, mask, save=False)


def _lstm_fwd(unroll, w, c0, h0, xp, mask):
    final, (gates, cs, hs) = _lstm_forward(unroll, w, c0, h0, xp, mask, save=True)
    return (final, hs), (w, c0, h0, gates, cs, hs, mask)


def _lstm_bwd(unroll, res, cotangents):
    w, c0, h0, gates, cs, hs, mask = res
    (dc_final, dh_final), d_hs = cotangents
    H = h0.shape[-1]
    # Everything that does not depend on the backward recurrence, for all t at once.
    i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    tc = jnp.tanh(cs)
    c_prev = _previous(c0, cs)
    to_c = o * (1.0 - tc * tc)                      # dh_t -> dc_t
    # dz_{i,f,g} = dc_t * k_ifg ; dz_o = dh_t * k_o
    k_ifg = jnp.concatenate([g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g)], -1)
    k_o = tc * o * (1.0 - o)
    if mask is not None:  # padded steps: no error signal, the carries' gradients pass through
        keep = _keep(mask, hs)
        to_c, k_ifg, k_o, f = to_c * keep, k_ifg * keep, k_o * keep, jnp.where(keep > 0, f, 1.0)
        pass_through = 1.0 - keep
    w_t = _transposed(w)

    def grads(dh, dc, inp):
        d_hs_t, to_c_t, k_ifg_t, k_o_t, f_t = inp[:5]
        gh = dh + d_hs_t                            # dL/dh_t
        dc = dc + gh * to_c_t                       # dL/dc_t
        dz = jnp.concatenate([jnp.tile(dc, (1, 3)) * k_ifg_t, gh * k_o_t], -1)
        return gh, dc, dz, dc * f_t

    if mask is None:
        def body(carry, inp):
            gh, dc, dz, dc_prev = grads(*carry, inp)
            return (dz @ w_t, dc_prev), dz
        inputs = (d_hs, to_c, k_ifg, k_o, f)
    else:
        def body(carry, inp):
            gh, dc, dz, dc_prev = grads(*carry, inp)
            return (dz @ w_t + gh * inp[5], dc_prev), dz
        inputs = (d_hs, to_c, k_ifg, k_o, f, pass_through)
    (dh0, dc0), dz = lax.scan(body, (dh_final, dc_final), inputs, reverse=True, unroll=unroll)
    return _weight_grad(_previous(h0, hs), dz), dc0, dh0, dz, None


_lstm_core.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_unroll(mode: str = "jvp"):
    fn = _lstm_core_j if mode == "jvp" else _lstm_core

    def core(params, carry, xp, mask, unroll):
        (c, h), hs = fn(unroll, params["W_hh"], carry.c, carry.h, xp, mask)
        return LSTMCarry(c, h), hs
    return core


# ----------------------------------------------------------------------------
# GRU, gates r, z, n: n = tanh(xn + r (h W_hn + b_hn)), h' = n + z (h - n)
# ----------------------------------------------------------------------------

def _gru_forward(unroll, w, b_hn, h0, xp, mask, save):
    H = h0.shape[-1]
    half = jnp.full((2 * H,), 0.5, xp.dtype)
    w_s = jnp.concatenate([w[:, :2 * H] * half, w[:, 2 * H:]], -1)
    xrz, xn = xp[..., :2 * H] * half, xp[..., 2 * H:]

    def cell(h, xrz_t, xn_t):
        hp = h @ w_s
        rz = jnp.tanh(xrz_t + hp[:, :2 * H]) * 0.5 + 0.5
        r, z = rz[:, :H], rz[:, H:]
        q = hp[:, 2 * H:] + b_hn
        n = jnp.tanh(xn_t + r * q)
        return rz, q, n, n + z * (h - n)

    if mask is None:
        def body(h, inp):
            rz, q, n, h = cell(h, *inp)
            return h, ((rz, q, n, h) if save else h)
        return lax.scan(body, h0, (xrz, xn), unroll=unroll)

    def body(h_old, inp):
        xrz_t, xn_t, m_t = inp
        rz, q, n, h = cell(h_old, xrz_t, xn_t)
        h = jnp.where(m_t[:, None], h, h_old)
        return h, ((rz, q, n, h) if save else h)
    return lax.scan(body, h0, (xrz, xn, mask), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru_core(unroll, w, b_hn, h0, xp, mask):
    """-> (h_T [B, H], hs [T, B, H])."""
    return _gru_forward(unroll, w, b_hn, h0, xp, mask, save=False)


def _gru_fwd(unroll, w, b_hn, h0, xp, mask):
    final, (rz, q, n, hs) = _gru_forward(unroll, w, b_hn, h0, xp, mask, save=True)
    return (final, hs), (w, h0, rz, q, n, hs, mask)


def _gru_bwd(unroll, res, cotangents):
    w, h0, rz, q, n, hs, mask = res
    d_final, d_hs = cotangents
    H = h0.shape[-1]
    r, z = rz[..., :H], rz[..., H:]
    h_prev = _previous(h0, hs)
    # With gh = dL/dh_t: d(n's pre-activation) = gh * k_n, and the recurrent
    # pre-activations' errors (r, z, and the W_hn h + b_hn term) are gh * k_rzq.
    k_n = (1.0 - z) * (1.0 - n * n)
    k_rzq = jnp.concatenate([k_n * q * r * (1.0 - r), (h_prev - n) * z * (1.0 - z), k_n * r], -1)
    direct = z                                      # dh_{t-1} += gh * z
    if mask is not None:  # padded steps: no error signal, dh passes through unchanged
        keep = _keep(mask, hs)
        k_n, k_rzq = k_n * keep, k_rzq * keep
        direct = jnp.where(keep > 0, direct, 1.0)
    w_t = _transposed(w)

    def body(dh, inp):
        d_hs_t, k_rzq_t, direct_t = inp
        gh = dh + d_hs_t
        return gh * direct_t + (jnp.tile(gh, (1, 3)) * k_rzq_t) @ w_t, gh
    dh0, gh = lax.scan(body, d_final, (d_hs, k_rzq, direct), reverse=True, unroll=unroll)
    d_hp = jnp.tile(gh, (1, 1, 3)) * k_rzq          # [T, B, 3H], errors of h W_hh (+ b_hn)
    d_xp = jnp.concatenate([d_hp[..., :2 * H], gh * k_n], -1)
    d_b_hn = jnp.sum(d_hp[..., 2 * H:], axis=(0, 1))
    return _weight_grad(h_prev, d_hp), d_b_hn, dh0, d_xp, None


_gru_core.defvjp(_gru_fwd, _gru_bwd)


def gru_unroll(mode: str = "jvp"):
    fn = _gru_core_j if mode == "jvp" else _gru_core

    def core(params, h0, xp, mask, unroll):
        return fn(unroll, params["W_hh"], params["b_hn"], h0, xp, mask)
    return core


# ----------------------------------------------------------------------------
# Hooking a core into a Cell
# ----------------------------------------------------------------------------

def _fused_unroll(cell: Cell, core) -> Callable:
    """A ``Cell.unroll`` override: project outside, the fused core inside."""

    def unroll(params: Params, xs: jax.Array, *, carry, lengths, reverse, unroll, remat):
        if remat:  # the fused backward already stores only what it needs; remat -> generic
            from rnnjax import recurrence
            return recurrence.unroll(cell._replace(unroll=None), params, xs, carry=carry,
                                     lengths=lengths, reverse=reverse, unroll=unroll, remat=True)
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

    # The step functions this override computes; recurrence.unroll ignores the override
    # on a cell whose project/recurrent_step were replaced afterwards (e.g. by _replace).
    unroll.steps = (cell.project, cell.recurrent_step)
    unroll.core = core
    return unroll


def with_projection(cell: Cell, project: Callable) -> Cell:
    """``cell`` with another input projection ``project(params, xs) -> [..., G]``
    (e.g. a table lookup for one-hot inputs), keeping its fused unroll if it has one.

    ``cell._replace(project=...)`` alone would make ``recurrence.unroll`` fall back to
    the generic scan, since the fused override projects with the old function.
    """
    from rnnjax import recurrence
    new = cell._replace(project=project)
    core = getattr(cell.unroll, "core", None)
    if core is None or not recurrence._has_valid_override(cell):
        return new   # not fused (or a stale override): the generic scan, as before
    return new._replace(unroll=_fused_unroll(new, core))


MODES = ("jvp", "vjp")


def attach(cell: Cell, kind: str, activation: str | None = None, mode: str = "jvp") -> Cell:
    """``cell`` with its ``unroll`` set to the fused unroll of ``kind``.

    Args:
      cell: a float32 vanilla, LSTM or GRU cell from ``rnnjax.cells``.
      kind: ``vanilla``, ``lstm`` or ``gru``.
      activation: for ``vanilla``, one of ``VANILLA_ACTIVATIONS``.
      mode: ``jvp`` (default: a custom JVP; every kind of autodiff works) or
        ``vjp`` (a custom VJP; reverse mode only, 5-15% faster).
    """
    if mode not in MODES:
        raise ValueError(f"unknown fused mode {mode!r}; accepted: {', '.join(MODES)}")
    if kind == "vanilla":
        core = vanilla_unroll(activation, mode)
    elif kind == "lstm":
        core = lstm_unroll(mode)
    elif kind == "gru":
        core = gru_unroll(mode)
    else:
        raise ValueError(f"no fused unroll for {kind!r}; accepted: vanilla, lstm, gru")
    return cell._replace(unroll=_fused_unroll(cell, core))


# ============================================================================
# custom_jvp versions: the tangent recurrence written by hand, so that JAX's
# transpose of it is the BPTT above (and forward mode works too).
# ============================================================================

@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _vanilla_core_j(act_name, unroll, w, h0, xp, mask):
    return _vanilla_forward(act_name, unroll, w, h0, xp, mask)


@_vanilla_core_j.defjvp
def _vanilla_jvp(act_name, unroll, primals, tangents):
    w, h0, xp, mask = primals
    dw, dh0, dxp, _ = tangents
    final, hs = _vanilla_forward(act_name, unroll, w, h0, xp, mask)
    deriv = VANILLA_ACTIVATIONS[act_name][1](hs)
    # The tangent of the pre-activations, except the recurrent term, for all t at once:
    # its transpose is dW = sum_t h_{t-1}^T dz_t, one large matmul.
    u = dxp + jnp.matmul(_previous(h0, hs), dw)
    w_l = _loop_weight(w)
    if mask is None:
        def body(dh, inp):
            u_t, deriv_t = inp
            dh = deriv_t * (u_t + _times_w(dh, w_l))
            return dh, dh
        d_final, d_hs = lax.scan(body, dh0, (u, deriv), unroll=unroll)
    else:
        keep = _keep(mask, hs)
        deriv, pass_through = deriv * keep, 1.0 - keep

        def body(dh, inp):
            u_t, deriv_t, pass_t = inp
            dh = deriv_t * (u_t + _times_w(dh, w_l)) + pass_t * dh
            return dh, dh
        d_final, d_hs = lax.scan(body, dh0, (u, deriv, pass_through), unroll=unroll)
    return (final, hs), (d_final, d_hs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _lstm_core_j(unroll, w, c0, h0, xp, mask):
    return _lstm_forward(unroll, w, c0, h0, xp, mask, save=False)


@_lstm_core_j.defjvp
def _lstm_jvp(unroll, primals, tangents):
    w, c0, h0, xp, mask = primals
    dw, dc0, dh0, dxp, _ = tangents
    final, (gates, cs, hs) = _lstm_forward(unroll, w, c0, h0, xp, mask, save=True)
    H = h0.shape[-1]
    i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    tc = jnp.tanh(cs)
    # dc_t = f dc_{t-1} + sum_blocks(dz_{i,f,g} * k_ifg);  dh_t = dz_o * k_o + to_h dc_t
    k_ifg = jnp.concatenate([g * i * (1.0 - i), _previous(c0, cs) * f * (1.0 - f),
                             i * (1.0 - g * g)], -1)
    k_o = tc * o * (1.0 - o)
    to_h = o * (1.0 - tc * tc)
    u = dxp + jnp.matmul(_previous(h0, hs), dw)
    B = h0.shape[0]
    if mask is not None:
        keep = _keep(mask, hs)
        k_ifg, k_o, to_h = k_ifg * keep, k_o * keep, to_h * keep
        f = jnp.where(keep > 0, f, 1.0)
        pass_through = 1.0 - keep
    w_l = _loop_weight(w)
    k = jnp.concatenate([k_ifg, k_o], -1)          # [T, B, 4H]
    # The gate blocks are picked by 0/1 weights over a [B, 4, H] view, not by slicing
    # dz: the transpose of a slice is a pad, and XLA:CPU's fused pad-and-add in the
    # backward loop cost ~100 us per step against ~30 us for this broadcast-multiply.
    to_c_blocks = jnp.asarray([1.0, 1.0, 1.0, 0.0], u.dtype)[:, None]   # i, f, g -> dc
    to_h_blocks = jnp.asarray([0.0, 0.0, 0.0, 1.0], u.dtype)[:, None]   # o -> dh

    def step(dc, dh, u_t, k_t, to_h_t, f_t):
        m = ((u_t + _times_w(dh, w_l)) * k_t).reshape(B, 4, H)
        dc = f_t * dc + jnp.sum(m * to_c_blocks, axis=1)
        return dc, jnp.sum(m * to_h_blocks, axis=1) + to_h_t * dc

    if mask is None:
        def body(carry, inp):
            dc, dh = step(*carry, *inp)
            return (dc, dh), dh
        inputs = (u, k, to_h, f)
    else:
        def body(carry, inp):
            dc, dh = step(*carry, *inp[:4])
            dh = dh + inp[4] * carry[1]
            return (dc, dh), dh
        inputs = (u, k, to_h, f, pass_through)
    d_final, d_hs = lax.scan(body, (dc0, dh0), inputs, unroll=unroll)
    return (final, hs), (d_final, d_hs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _gru_core_j(unroll, w, b_hn, h0, xp, mask):
    return _gru_forward(unroll, w, b_hn, h0, xp, mask, save=False)


@_gru_core_j.defjvp
def _gru_jvp(unroll, primals, tangents):
    w, b_hn, h0, xp, mask = primals
    dw, db_hn, dh0, dxp, _ = tangents
    final, (rz, q, n, hs) = _gru_forward(unroll, w, b_hn, h0, xp, mask, save=True)
    H, B = h0.shape[-1], h0.shape[0]
    r, z = rz[..., :H], rz[..., H:]
    h_prev = _previous(h0, hs)
    # With s_t = v_t + dh_{t-1} W (the tangent of h W_hh + [0, 0, b_hn] plus the input's r, z part):
    # dh_t = y_t + sum_blocks(s_t * coef_t) + z_t dh_{t-1}
    a1 = (1.0 - z) * (1.0 - n * n)
    coef = jnp.concatenate([a1 * q * r * (1.0 - r), (h_prev - n) * z * (1.0 - z), a1 * r], -1)
    uh = jnp.matmul(h_prev, dw)
    v = jnp.concatenate([dxp[..., :2 * H] + uh[..., :2 * H], uh[..., 2 * H:] + db_hn], -1)
    y = a1 * dxp[..., 2 * H:]
    direct = z
    if mask is not None:
        keep = _keep(mask, hs)
        coef, y = coef * keep, y * keep
        direct = jnp.where(keep > 0, direct, 1.0)
    w_l = _loop_weight(w)

    def body(dh, inp):
        v_t, y_t, coef_t, direct_t = inp
        s = v_t + _times_w(dh, w_l)
        dh = y_t + jnp.sum((s * coef_t).reshape(B, 3, H), axis=1) + direct_t * dh
        return dh, dh
    d_final, d_hs = lax.scan(body, dh0, (v, y, coef, direct), unroll=unroll)
    return (final, hs), (d_final, d_hs)


def _loop_weight(w):
    """W^T [G, H], laid out row-major once, for the tangent loops' ``_times_w``.

    The tangent loop multiplies by W through W^T (``dh @ (W^T)^T``), so that the
    loop JAX derives for reverse mode, its transpose, multiplies by the row-major
    W^T directly (``ct @ W^T``): the fast layout for the backward pass, which is
    what training runs; forward mode pays the transposed operand instead.
    """
    return _transposed(w)


def _times_w(dh, w_t):
    """dh @ W for dh [B, H], given w_t = W^T [G, H]."""
    return lax.dot_general(dh, w_t, (((1,), (1,)), ((), ())))
