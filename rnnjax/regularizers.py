"""Pascanu, Mikolov & Bengio (2013)'s regulariser Ω for vanilla tanh RNNs.

Ω keeps the error signal's norm from vanishing as it travels back in time: with
δ_t = ∂L/∂h_t (the total derivative, through all later steps) and
∂h_t/∂h_{t−1} = diag(1 − h_t²) W_hhᵀ (for ``h_t = tanh(x_t W_xh + h_{t−1} W_hh + b)``),

    Ω = Σ_t ( ‖δ_t diag(1 − h_t²) W_hhᵀ‖ / ‖δ_t‖ − 1 )²,

averaged over the batch and over the steps where ‖δ_t‖² ≥ ``bound``. As in the
paper (§3.3) only Ω's direct dependence on W_hh is differentiated: the hidden
states and the δ's are constants (``stop_gradient``). SGD-CR is plain SGD on
L + α·Ω with gradient clipping (chain ``optax.clip_by_global_norm`` or
:mod:`rnnjax.optim.transforms` before the SGD transformation); Pascanu et al.
used α = 2 in their released code (4 in the paper's text is not verified here),
clipping at 1, learning rate 0.01, batch 20.

Pascanu's released code (``RNN.py``) uses the ratio of *squared* norms;
``squared=True`` gives that form.

    >>> loss, omega = regularizers.loss_and_omega(readout_loss, params["W_hh"], hs)
    >>> total = loss + 2.0 * omega
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["backprop_deltas", "omega", "loss_and_omega"]


def backprop_deltas(w_hh: jax.Array, hs: jax.Array, direct: jax.Array) -> jax.Array:
    """Total derivatives δ_t = ∂L/∂h_t [T, B, H] of a tanh RNN from the direct ones.

    w_hh: [H, H]; hs: [T, B, H] the hidden states h_1..h_T; direct: [T, B, H]
    ∂L/∂h_t through the readout only. δ_T = direct_T and
    δ_{t−1} = direct_{t−1} + (δ_t ⊙ (1 − h_t²)) W_hhᵀ (a reverse scan).
    """

    def back(delta_next, inputs):
        d_t, h_next = inputs  # direct_t, and h_{t+1} (zeros past the end)
        delta = d_t + (delta_next * (1.0 - h_next ** 2)) @ w_hh.T
        return delta, delta

    h_next = jnp.concatenate([hs[1:], jnp.zeros_like(hs[:1])], axis=0)
    _, deltas = jax.lax.scan(back, jnp.zeros_like(hs[0]), (direct, h_next), reverse=True)
    return deltas


def omega(w_hh: jax.Array, hs: jax.Array, deltas: jax.Array, *, squared: bool = False,
          bound: float = 1e-20) -> jax.Array:
    """Ω of the trajectory (a scalar); its gradient flows to ``w_hh`` only.

    w_hh: [H, H]; hs, deltas: [T, B, H] (h_1..h_T and δ_1..δ_T; δ_1 is carried
    back to h_0, so every step counts). ``squared``: the ratio of squared norms
    (Pascanu's code) instead of norms (the paper's formula).
    """
    hs, deltas = jax.lax.stop_gradient(hs), jax.lax.stop_gradient(deltas)
    back = (deltas * (1.0 - hs ** 2)) @ w_hh.T  # [T, B, H]: δ_t ∂h_t/∂h_{t−1}
    num = jnp.sum(back ** 2, axis=-1)
    den = jnp.sum(deltas ** 2, axis=-1)
    valid = den >= bound
    ratio = num / jnp.where(valid, den, 1.0)
    ratio = ratio if squared else jnp.sqrt(ratio)
    terms = jnp.where(valid, (ratio - 1.0) ** 2, 0.0)
    counted = jnp.sum(jnp.mean(valid.astype(terms.dtype), axis=1))
    return jnp.sum(jnp.mean(terms, axis=1)) / jnp.maximum(counted, 1e-12)


def loss_and_omega(readout_loss: Callable[[jax.Array], jax.Array], w_hh: jax.Array,
                   hs: jax.Array, **kwargs) -> tuple[jax.Array, jax.Array]:
    """``(L, Ω)`` for a tanh RNN with hidden states ``hs`` [T, B, H].

    readout_loss: ``hs -> L`` (the readout and the task's loss on the hidden
    states); its vjp gives the direct ∂L/∂h_t, :func:`backprop_deltas` the total.
    Differentiate ``L + α·Ω`` with respect to the params as usual: L through the
    whole network, Ω through W_hh directly.
    """
    loss, vjp = jax.vjp(readout_loss, hs)
    (direct,) = vjp(jnp.ones_like(loss))
    deltas = backprop_deltas(jax.lax.stop_gradient(w_hh), jax.lax.stop_gradient(hs),
                             jax.lax.stop_gradient(direct))
    return loss, omega(w_hh, hs, deltas, **kwargs)
