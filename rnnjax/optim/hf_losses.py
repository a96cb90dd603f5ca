"""Losses on a network's outputs with their Hessian-vector products in closed form.

The output half of the Gauss–Newton split of :mod:`rnnjax.optim.hessian_free`:
``G = Jᵀ H_L J`` needs ``H_L v``, the Hessian of the loss with respect to the
outputs times a vector, and is positive semi-definite when the loss is convex in
the outputs (the matching pairs softmax + cross-entropy, logistic + binary
cross-entropy, linear + squared error; Schraudolph 2002, Martens 2010).
The products are computed in the outputs' dtype (float64 under ``jax_enable_x64``
with float64 params).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import losses

Batch = Any
Array = jax.Array

__all__ = ["OutputLoss", "softmax_cross_entropy", "sigmoid_cross_entropy", "squared_error",
           "autodiff_loss", "for_kind"]


class OutputLoss(NamedTuple):
    """A loss on the network's outputs and the product of its Hessian with a vector.

    loss: ``loss(outputs, batch) -> scalar``.
    hessian_vp: ``hessian_vp(outputs, batch, v) -> H_L v`` (v and H_L v shaped
      like ``outputs``), H_L the Hessian of ``loss`` with respect to ``outputs``.
    """

    name: str
    loss: Callable[[Array, Batch], Array]
    hessian_vp: Callable[[Array, Batch, Array], Array]


def _default_targets(batch: Batch) -> Array:
    """``batch["targets"]`` for a dict, ``batch.targets`` otherwise (e.g. synthetic.Batch)."""
    return batch["targets"] if isinstance(batch, dict) else batch.targets


def _default_mask(batch: Batch) -> Array | None:
    """``batch.get("mask")`` for a dict, ``batch.mask`` (or None) otherwise."""
    return batch.get("mask") if isinstance(batch, dict) else getattr(batch, "mask", None)


def _wide(outputs: Array) -> bool:
    """Outputs wider than float32 (float64 under x64): the loss is computed here in their
    dtype, since :mod:`rnnjax.losses` computes in float32."""
    return jnp.finfo(outputs.dtype).bits > 32


def _position_weights(mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
    """Weights w (broadcast to ``shape``) with loss = Σ w·ℓ: mask / number counted."""
    if mask is None:
        m = jnp.ones(shape, dtype)
    else:
        mask = jnp.asarray(mask)
        if mask.ndim > len(shape):
            raise ValueError(f"mask has shape {mask.shape}, more axes than the outputs' "
                             f"per-position shape {shape}")
        m = jnp.broadcast_to(mask.astype(dtype).reshape(mask.shape + (1,) * (len(shape) - mask.ndim)),
                             shape)
    return m / jnp.maximum(jnp.sum(m), 1.0)


def softmax_cross_entropy(targets: Callable[[Batch], Array] = _default_targets,
                          mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Softmax outputs with cross-entropy: mean nats over unmasked positions.

    outputs: logits [..., V]; targets [...] ints; mask broadcastable to [...].
    H_L v = w ⊙ (p ⊙ v − p (pᵀv)) per position, p = softmax(logits), w = mask / count.
    """

    def loss(outputs, batch):
        if not _wide(outputs):
            return losses.cross_entropy(outputs, targets(batch), mask(batch))
        w = _position_weights(mask(batch), outputs.shape[:-1], outputs.dtype)
        logp = jax.nn.log_softmax(outputs, axis=-1)
        picked = jnp.take_along_axis(logp, targets(batch)[..., None].astype(jnp.int32), -1)
        return -jnp.sum(w * picked[..., 0])

    def hessian_vp(outputs, batch, v):
        p = jax.nn.softmax(outputs, axis=-1)
        w = _position_weights(mask(batch), outputs.shape[:-1], p.dtype)[..., None]
        return (w * (p * v - p * jnp.sum(p * v, axis=-1, keepdims=True))).astype(v.dtype)

    return OutputLoss("softmax_cross_entropy", loss, hessian_vp)


def sigmoid_cross_entropy(targets: Callable[[Batch], Array] = _default_targets,
                          mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Logistic outputs with binary cross-entropy: mean nats over unmasked elements.

    outputs: logits [...]; targets [...] in {0, 1}; mask broadcastable to [...].
    H_L v = w ⊙ σ(z)(1 − σ(z)) ⊙ v, w = mask / count.
    """

    def loss(outputs, batch):
        if not _wide(outputs):
            return losses.sigmoid_binary_cross_entropy(outputs, targets(batch), mask(batch))
        w = _position_weights(mask(batch), outputs.shape, outputs.dtype)
        y = targets(batch).astype(outputs.dtype)
        return jnp.sum(w * (jax.nn.softplus(outputs) - y * outputs))

    def hessian_vp(outputs, batch, v):
        s = jax.nn.sigmoid(outputs)
        w = _position_weights(mask(batch), outputs.shape, s.dtype)
        return (w * s * (1.0 - s) * v).astype(v.dtype)

    return OutputLoss("sigmoid_cross_entropy", loss, hessian_vp)


def squared_error(targets: Callable[[Batch], Array] = _default_targets,
                  mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Linear outputs with squared error: mean of (z − y)² over unmasked elements.

    outputs [..., D] (or [...]); H_L v = 2 w ⊙ v, w = mask / count (the Hessian is
    constant, so here Gauss–Newton is the exact Hessian of the network's loss
    only where the network is linear in its params).
    """

    def loss(outputs, batch):
        if not _wide(outputs):
            return losses.squared_error(outputs, targets(batch), mask(batch))
        w = _position_weights(mask(batch), outputs.shape, outputs.dtype)
        return jnp.sum(w * jnp.square(outputs - targets(batch).astype(outputs.dtype)))

    def hessian_vp(outputs, batch, v):
        w = _position_weights(mask(batch), outputs.shape, outputs.dtype)
        return (2.0 * w * v).astype(v.dtype)

    return OutputLoss("squared_error", loss, hessian_vp)


def autodiff_loss(loss: Callable[[Array, Batch], Array], name: str = "autodiff") -> OutputLoss:
    """Any loss on outputs, with H_L v by forward-over-reverse differentiation.

    Exact, but positive semi-definite only when ``loss`` is convex in the outputs;
    prefer the closed forms above for the matching pairs.
    """

    def hessian_vp(outputs, batch, v):
        return jax.jvp(lambda o: jax.grad(loss)(o, batch), (outputs,), (v,))[1]

    return OutputLoss(name, loss, hessian_vp)


def for_kind(kind: str) -> OutputLoss:
    """The matching output loss of a task kind: ``"regression"`` -> squared error,
    ``"classification"`` -> softmax cross-entropy."""
    if kind == "regression":
        return squared_error()
    if kind == "classification":
        return softmax_cross_entropy()
    raise ValueError(f"unknown task kind {kind!r}; accepted: 'regression', 'classification'")
