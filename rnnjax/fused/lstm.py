"""The LSTM's fused unroll, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t).

The gates use one ``tanh`` per element: ``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5``,
with the 1/2 folded into the gate columns of the weights and inputs.
Shapes: T steps, B batch, H hidden, 4H gates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.cell_base import LSTMCarry
from rnnjax.fused.common import (loop_weight, on_real, pass_through, previous, real_steps,
                                 times_w)

__all__ = ["core"]


def _scale(hidden: int, dtype) -> jax.Array:
    """Per-column factor: 1/2 on the sigmoid gates (i, f, o), 1 on g."""
    half, one = jnp.full((hidden,), 0.5, dtype), jnp.ones((hidden,), dtype)
    return jnp.concatenate([half, half, one, half])


def _forward(unroll, w, c0, h0, xp, mask, save):
    """-> ((c_T, h_T), hs [T, B, H]), or with ``save`` the gates [T, B, 4H], cs and hs."""
    H = h0.shape[-1]
    s = _scale(H, xp.dtype)
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


def _split(gates, H):
    return gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _core(unroll, w, c0, h0, xp, mask):
    return _forward(unroll, w, c0, h0, xp, mask, save=False)


@_core.defjvp
def _jvp(unroll, primals, tangents):
    w, c0, h0, xp, mask = primals
    dw, dc0, dh0, dxp, _ = tangents
    final, (gates, cs, hs) = _forward(unroll, w, c0, h0, xp, mask, save=True)
    H = h0.shape[-1]
    i, f, g, o = _split(gates, H)
    tc = jnp.tanh(cs)
    # dc_t = f dc_{t-1} + sum_blocks(dz_{i,f,g} * k_ifg);  dh_t = dz_o * k_o + to_h dc_t
    k_ifg = jnp.concatenate([g * i * (1.0 - i), previous(c0, cs) * f * (1.0 - f),
                             i * (1.0 - g * g)], -1)
    k_o = tc * o * (1.0 - o)
    to_h = o * (1.0 - tc * tc)
    u = dxp + jnp.matmul(previous(h0, hs), dw)
    B = h0.shape[0]
    if mask is not None:
        real = real_steps(mask)
        k_ifg, k_o, to_h = on_real(real, k_ifg), on_real(real, k_o), on_real(real, to_h)
        f = on_real(real, f, 1.0)
        passing = pass_through(real, hs.dtype)
    w_l = loop_weight(w)
    k = jnp.concatenate([k_ifg, k_o], -1)          # [T, B, 4H]
    # The gate blocks are picked by 0/1 weights over a [B, 4, H] view, not by slicing
    # dz: the transpose of a slice is a pad, and XLA:CPU's fused pad-and-add in the
    # backward loop cost ~100 us per step against ~30 us for this broadcast-multiply.
    to_c_blocks = jnp.asarray([1.0, 1.0, 1.0, 0.0], u.dtype)[:, None]   # i, f, g -> dc
    to_h_blocks = jnp.asarray([0.0, 0.0, 0.0, 1.0], u.dtype)[:, None]   # o -> dh

    def step(dc, dh, u_t, k_t, to_h_t, f_t):
        m = ((u_t + times_w(dh, w_l)) * k_t).reshape(B, 4, H)
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
        inputs = (u, k, to_h, f, passing)
    d_final, d_hs = lax.scan(body, (dc0, dh0), inputs, unroll=unroll)
    return (final, hs), (d_final, d_hs)


def core():
    """The fused recurrence of an LSTM: ``core(params, carry, xp, mask, unroll)``
    -> (LSTMCarry(c_T, h_T), hs [T, B, H]), with xp [T, B, 4H], mask [T, B] or None."""

    def run(params, carry, xp, mask, unroll):
        (c, h), hs = _core(unroll, params["W_hh"], carry.c, carry.h, xp, mask)
        return LSTMCarry(c, h), hs
    return run
