"""Losses and the metrics derived from them, all pure functions with optional masks.

Every loss here returns a scalar *mean over the unmasked positions*, so that it can be
fed to ``jax.grad`` directly; the ``*_sum`` variants return ``(sum, count)`` so that an
evaluation can add many batches exactly before dividing once.

A mask is any array (bool or float) that broadcasts against the per-position loss after
trailing axes are added, e.g. ``[T, B]`` for ``logits[T, B, V]`` or ``preds[T, B, D]``.
Masked positions contribute nothing to the loss nor to its gradient. If a mask selects
nothing, the mean is 0 (not NaN).

Units: cross-entropy is in nats. ``bits_per_character(nats) = nats / ln 2`` and
``perplexity(nats) = exp(nats)`` turn a mean per-token cross-entropy into the numbers
language-modelling papers report.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

LN2 = math.log(2.0)


def _expand_mask(mask: Array | None, ndim: int, like: Array) -> Array:
    """Float mask with trailing unit axes so it broadcasts against an ``ndim`` array."""
    if mask is None:
        return jnp.ones((), like.dtype)
    mask = jnp.asarray(mask)
    if mask.ndim > ndim:
        raise ValueError(f"mask has {mask.ndim} axes {mask.shape}, more than the {ndim} "
                         f"axes of the per-position loss {like.shape}")
    return mask.astype(like.dtype).reshape(mask.shape + (1,) * (ndim - mask.ndim))


def _masked_sum_and_count(values: Array, mask: Array | None) -> tuple[Array, Array]:
    """(sum of values where mask, number of unmasked elements) as float scalars."""
    m = _expand_mask(mask, values.ndim, values)
    m = jnp.broadcast_to(m, values.shape)
    return jnp.sum(values * m), jnp.sum(m)


def _safe_mean(total: Array, count: Array) -> Array:
    return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------- classification

def token_cross_entropy(logits: Array, targets: Array) -> Array:
    """Per-position cross-entropy in nats.

    Args:
      logits: [..., V] unnormalised log-probabilities.
      targets: [...] integer class ids in [0, V).
    Returns:
      [...] -log softmax(logits)[target].
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} need targets of shape {logits.shape[:-1]}, "
                         f"got {targets.shape}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy_sum(logits: Array, targets: Array,
                      mask: Array | None = None) -> tuple[Array, Array]:
    """(summed nats, number of counted positions); logits [..., V], targets [...]."""
    return _masked_sum_and_count(token_cross_entropy(logits, targets), mask)


def cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean softmax cross-entropy in nats over unmasked positions.

    Args:
      logits: [..., V]; targets: [...] ints; mask: broadcastable to [...] (1 = count).
    """
    return _safe_mean(*cross_entropy_sum(logits, targets, mask))


def accuracy_sum(logits: Array, targets: Array,
                 mask: Array | None = None) -> tuple[Array, Array]:
    """(number of correct argmax predictions, number of counted positions)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} need targets of shape {logits.shape[:-1]}, "
                         f"got {targets.shape}")
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _masked_sum_and_count(correct, mask)


def accuracy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Fraction of unmasked positions where argmax(logits) equals the target."""
    return _safe_mean(*accuracy_sum(logits, targets, mask))


def sigmoid_binary_cross_entropy(logits: Array, targets: Array,
                                 mask: Array | None = None) -> Array:
    """Mean binary cross-entropy (nats) of independent sigmoid outputs.

    Args:
      logits: [...] pre-sigmoid scores; targets: [...] in {0, 1} (or probabilities);
      mask: broadcastable to [...].
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} must match")
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    # log(1 + exp(-|x|)) form: stable for large |x|.
    per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return _safe_mean(*_masked_sum_and_count(per, mask))


# ----------------------------------------------------------------------------- regression

def squared_error_sum(predictions: Array, targets: Array,
                      mask: Array | None = None) -> tuple[Array, Array]:
    """(sum of squared errors, number of counted elements); shapes [..., D] or [...]."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} "
                         f"must have the same shape")
    err = jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    return _masked_sum_and_count(err, mask)


def squared_error(predictions: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean squared error over unmasked elements (a [T, B] mask covers all D features)."""
    return _safe_mean(*squared_error_sum(predictions, targets, mask))


# ----------------------------------------------------------------------------- unit changes

def bits_per_character(nats_per_token: Array | float) -> Array | float:
    """Mean cross-entropy in nats per character -> bits per character."""
    return nats_per_token / LN2  # finite for every finite float: no overflow here


def perplexity(nats_per_token: Array | float) -> Array | float:
    """Mean cross-entropy in nats per token -> perplexity exp(nats); inf past float range."""
    if isinstance(nats_per_token, (int, float)):
        try:
            return math.exp(nats_per_token)
        except OverflowError:  # a diverged run (nats ~ 1e7): report inf, not a crash
            return math.inf
    return jnp.exp(nats_per_token)
