"""The vanilla cell's fused unroll: h_t = act(xp_t + h_{t-1} W), its forward pass and
its tangent recurrence (a ``jax.custom_jvp``; reverse mode is its transpose).

``act'`` is written as a function of the activation's output, so the tangent
recurrence needs only the stored states. Shapes: T steps, B batch, H hidden.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from rnnjax.fused.common import (loop_weight, on_real, pass_through, previous, real_steps,
                                 times_w)

__all__ = ["VANILLA_ACTIVATIONS", "core"]


def _d_tanh(h):
    return 1.0 - h * h


def _d_relu(h):
    return (h > 0).astype(h.dtype)


def _d_identity(h):
    return jnp.ones_like(h)


def _d_logistic(h):
    return h * (1.0 - h)


# Activations whose derivative is a function of the activation's output.
VANILLA_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (jnp.tanh, _d_tanh),
    "relu": (jax.nn.relu, _d_relu),
    "identity": (lambda z: z, _d_identity),
    "logistic": (jax.nn.sigmoid, _d_logistic),
}


def _forward(act_name, unroll, w, h0, xp, mask):
    """-> (h_T [B, H], hs [T, B, H]); hs are the carries (frozen on padded steps)."""
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _core(act_name, unroll, w, h0, xp, mask):
    return _forward(act_name, unroll, w, h0, xp, mask)


@_core.defjvp
def _jvp(act_name, unroll, primals, tangents):
    w, h0, xp, mask = primals
    dw, dh0, dxp, _ = tangents
    final, hs = _forward(act_name, unroll, w, h0, xp, mask)
    deriv = VANILLA_ACTIVATIONS[act_name][1](hs)
    # The tangent of the pre-activations, except the recurrent term, for all t at once:
    # its transpose is dW = sum_t h_{t-1}^T dz_t, one large matmul.
    u = dxp + jnp.matmul(previous(h0, hs), dw)
    w_l = loop_weight(w)
    if mask is None:
        def body(dh, inp):
            u_t, deriv_t = inp
            dh = deriv_t * (u_t + times_w(dh, w_l))
            return dh, dh
        d_final, d_hs = lax.scan(body, dh0, (u, deriv), unroll=unroll)
    else:
        real = real_steps(mask)
        deriv, passing = on_real(real, deriv), pass_through(real, hs.dtype)

        def body(dh, inp):
            u_t, deriv_t, pass_t = inp
            dh = deriv_t * (u_t + times_w(dh, w_l)) + pass_t * dh
            return dh, dh
        d_final, d_hs = lax.scan(body, dh0, (u, deriv, passing), unroll=unroll)
    return (final, hs), (d_final, d_hs)


def core(act_name: str):
    """The fused recurrence of a vanilla cell: ``core(params, h0, xp, mask, unroll)``
    -> (h_T [B, H], hs [T, B, H]), with xp [T, B, H] and mask [T, B] bool or None."""
    if act_name not in VANILLA_ACTIVATIONS:
        raise ValueError(f"no fused vanilla unroll for activation {act_name!r}; "
                         f"accepted: {sorted(VANILLA_ACTIVATIONS)}")

    def run(params, h0, xp, mask, unroll):
        return _core(act_name, unroll, params["W_hh"], h0, xp, mask)
    return run
