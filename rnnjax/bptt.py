"""Backprop through time written out by hand, as in the lecture: a reference for ``jax.grad``.

The model is the vanilla RNN with a linear readout,

    z_t = x_t W_xh + h_{t-1} W_hh + b_h          pre-activations    [B, H]
    h_t = act(z_t)                                hidden units       [B, H]
    y_t = h_t W_hy + b_y                          outputs            [B, O]
    L   = sum_t loss(y_t, target_t)

with h_0 the (optionally learned) initial state. Writing ``a_bar`` for dL/da
(the lecture's error signals), the backward pass runs from t = T down to 1:

    y_bar_t = dloss/dy_t                          (output error signal)
    h_bar_t = y_bar_t W_hy^T + z_bar_{t+1} W_hh^T (two paths: output and the future)
    z_bar_t = h_bar_t * act'(z_t)                 (through the nonlinearity)

and because the weights are shared over time, their gradients are sums over t:

    W_hy_bar = sum_t h_t^T y_bar_t     b_y_bar = sum_t y_bar_t
    W_xh_bar = sum_t x_t^T z_bar_t     b_h_bar = sum_t z_bar_t
    W_hh_bar = sum_t h_{t-1}^T z_bar_t h0_bar  = z_bar_1 W_hh^T

The forward and backward passes are two ``lax.scan`` loops, so the reference is
jit-compiled and fast enough to test on long sequences. ``tests/test_bptt.py``
checks it against ``jax.grad`` through ``recurrence.unroll``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import cells

__all__ = ["ForwardCache", "forward", "backward", "loss_and_grads", "ACTIVATION_DERIVATIVES",
           "LOSSES"]


# act'(z) written in terms of z and h = act(z), whichever is cheaper.
ACTIVATION_DERIVATIVES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "tanh": lambda z, h: 1.0 - h * h,
    "relu": lambda z, h: (z > 0).astype(z.dtype),
    "identity": lambda z, h: jnp.ones_like(z),
    "logistic": lambda z, h: h * (1.0 - h),
    "threshold": lambda z, h: jnp.zeros_like(z),  # flat almost everywhere: no gradient
}


class ForwardCache(NamedTuple):
    """What the backward pass needs: xs [T, B, D], h_prev [T, B, H] (h_{t-1}),
    zs [T, B, H], hs [T, B, H] and the outputs ys [T, B, O]."""

    xs: jax.Array
    h_prev: jax.Array
    zs: jax.Array
    hs: jax.Array
    ys: jax.Array


def _squared_error(ys, targets):
    """0.5 * sum of squares, and its derivative y - target."""
    diff = ys - targets
    return 0.5 * jnp.sum(diff * diff), diff


def _softmax_cross_entropy(ys, targets):
    """Cross-entropy with integer targets [T, B]; derivative softmax(y) - onehot(target)."""
    logp = jax.nn.log_softmax(ys, axis=-1)
    onehot = jax.nn.one_hot(targets, ys.shape[-1], dtype=ys.dtype)
    return -jnp.sum(onehot * logp), jnp.exp(logp) - onehot


LOSSES = {"squared": _squared_error, "softmax_cross_entropy": _softmax_cross_entropy}


def forward(params: dict, xs: jax.Array, activation: str = "tanh") -> ForwardCache:
    """The forward pass over xs [T, B, D], keeping what the backward pass needs."""
    act = cells.ACTIVATIONS[activation]
    B, H = xs.shape[1], params["W_hh"].shape[0]
    h0 = jnp.broadcast_to(params["h0"], (B, H)) if "h0" in params else jnp.zeros((B, H), xs.dtype)

    def step(h_prev, x_t):
        z = x_t @ params["W_xh"] + h_prev @ params["W_hh"] + params["b_h"]
        h = act(z)
        return h, (h_prev, z, h)

    _, (h_prev, zs, hs) = jax.lax.scan(step, h0, xs)
    ys = hs @ params["W_hy"] + params["b_y"]
    return ForwardCache(xs, h_prev, zs, hs, ys)


def backward(params: dict, cache: ForwardCache, y_bar: jax.Array,
             activation: str = "tanh") -> dict:
    """The backward pass: from the output error signals y_bar [T, B, O] to all gradients."""
    if activation not in ACTIVATION_DERIVATIVES:
        raise ValueError(f"unknown activation {activation!r}; accepted: "
                         f"{sorted(ACTIVATION_DERIVATIVES)}")
    d_act = ACTIVATION_DERIVATIVES[activation]
    W_hh, W_hy = params["W_hh"], params["W_hy"]

    def step(z_bar_next, inputs):
        y_bar_t, z_t, h_t = inputs
        h_bar_t = y_bar_t @ W_hy.T + z_bar_next @ W_hh.T
        z_bar_t = h_bar_t * d_act(z_t, h_t)
        return z_bar_t, z_bar_t

    z_bar_end = jnp.zeros_like(cache.zs[0])  # nothing flows back from beyond T
    _, z_bars = jax.lax.scan(step, z_bar_end, (y_bar, cache.zs, cache.hs), reverse=True)

    # Shared weights: sum each step's contribution over time (and batch).
    grads = {
        "W_hy": jnp.einsum("tbh,tbo->ho", cache.hs, y_bar),
        "b_y": jnp.sum(y_bar, axis=(0, 1)),
        "W_xh": jnp.einsum("tbd,tbh->dh", cache.xs, z_bars),
        "W_hh": jnp.einsum("tbh,tbk->hk", cache.h_prev, z_bars),
        "b_h": jnp.sum(z_bars, axis=(0, 1)),
    }
    if "h0" in params:
        grads["h0"] = jnp.sum(z_bars[0] @ W_hh.T, axis=0)
    return grads


def loss_and_grads(params: dict, xs: jax.Array, targets: jax.Array, *,
                   activation: str = "tanh", loss: str = "squared") -> tuple[jax.Array, dict]:
    """Total loss and its gradients for every param, by the hand-written BPTT.

    Args:
      params: ``W_xh`` [D, H], ``W_hh`` [H, H], ``b_h`` [H], ``W_hy`` [H, O], ``b_y`` [O],
        optionally ``h0`` [H].
      xs: [T, B, D].
      targets: [T, B, O] for ``squared``; int [T, B] for ``softmax_cross_entropy``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; accepted: {sorted(LOSSES)}")
    cache = forward(params, xs, activation)
    value, y_bar = LOSSES[loss](cache.ys, targets)
    return value, backward(params, cache, y_bar, activation)
