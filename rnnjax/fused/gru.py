"""The GRU's fused unroll, gates r, z, n: n = tanh(xn + r (h W_hn + b_hn)),
h' = n + z (h - n) (the cuDNN / PyTorch variant of ``rnnjax.cells.gru``).

The sigmoid gates use one ``tanh`` each, with the 1/2 folded into the r and z
columns. Shapes: T steps, B batch, H hidden, 3H gates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.fused.common import loop_weight, on_real, previous, real_steps, times_w

__all__ = ["core"]


def _forward(unroll, w, b_hn, h0, xp, mask, save):
    """-> (h_T, hs [T, B, H]), or with ``save`` (r|z, the W_hn h + b_hn term, n, hs)."""
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


def _coefficients(rz, q, n, h_prev, H):
    """With gh = dL/dh_t: d(n's pre-activation) = gh * k_n, and the recurrent
    pre-activations' errors (r, z, and the W_hn h + b_hn term) are gh * k_rzq."""
    r, z = rz[..., :H], rz[..., H:]
    k_n = (1.0 - z) * (1.0 - n * n)
    k_rzq = jnp.concatenate([k_n * q * r * (1.0 - r), (h_prev - n) * z * (1.0 - z), k_n * r], -1)
    return z, k_n, k_rzq


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _core(unroll, w, b_hn, h0, xp, mask):
    return _forward(unroll, w, b_hn, h0, xp, mask, save=False)


@_core.defjvp
def _jvp(unroll, primals, tangents):
    w, b_hn, h0, xp, mask = primals
    dw, db_hn, dh0, dxp, _ = tangents
    final, (rz, q, n, hs) = _forward(unroll, w, b_hn, h0, xp, mask, save=True)
    H, B = h0.shape[-1], h0.shape[0]
    h_prev = previous(h0, hs)
    # With s_t = v_t + dh_{t-1} W (the tangent of h W_hh + [0, 0, b_hn] plus the input's r, z part):
    # dh_t = y_t + sum_blocks(s_t * coef_t) + z_t dh_{t-1}
    direct, a1, coef = _coefficients(rz, q, n, h_prev, H)
    uh = jnp.matmul(h_prev, dw)
    v = jnp.concatenate([dxp[..., :2 * H] + uh[..., :2 * H], uh[..., 2 * H:] + db_hn], -1)
    y = a1 * dxp[..., 2 * H:]
    if mask is not None:
        real = real_steps(mask)
        coef, y, direct = on_real(real, coef), on_real(real, y), on_real(real, direct, 1.0)
    w_l = loop_weight(w)

    def body(dh, inp):
        v_t, y_t, coef_t, direct_t = inp
        s = v_t + times_w(dh, w_l)
        dh = y_t + jnp.sum((s * coef_t).reshape(B, 3, H), axis=1) + direct_t * dh
        return dh, dh
    d_final, d_hs = lax.scan(body, dh0, (v, y, coef, direct), unroll=unroll)
    return (final, hs), (d_final, d_hs)


def core():
    """The fused recurrence of a GRU: ``core(params, h0, xp, mask, unroll)``
    -> (h_T [B, H], hs [T, B, H]), with xp [T, B, 3H], mask [T, B] or None."""

    def run(params, h0, xp, mask, unroll):
        return _core(unroll, params["W_hh"], params["b_hn"], h0, xp, mask)
    return run
