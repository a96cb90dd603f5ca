"""Remedies for exploding gradients as optax gradient transformations.

* :func:`clip_by_global_norm` (Pascanu, Mikolov & Bengio 2013): if ‖g‖ >= θ,
  g <- θ g / ‖g‖.
* :func:`repair_nonfinite`, the NaN/Inf repair of their released code
  (pascanur/trainingRNNs): when the gradient norm is NaN, Inf, negative or above
  1e10 the numbers cannot be trusted, so the gradient becomes ``shrink · W_hh``
  for the recurrent matrices and zero for everything else. The update then
  shrinks ``W_hh`` (lowering its spectral radius), steering the model out of the
  region where the gradient blew up, instead of skipping the step. (Without the
  repair, :func:`rnnjax.train.make_train_step` skips a non-finite step.)

Both are ``optax.GradientTransformation``s: chain them ahead of an optimizer
(:func:`rnnjax.optim.from_config` does, repair first, as the released code).
Each keeps what it did in its state, a :class:`ClipState` or
:class:`RepairState` whose fields are metrics: a flag for the last update and a
running total. :func:`metrics_of` collects them from any optimizer state, and
:func:`rnnjax.train.make_train_step` adds them to the step's metrics.

The pure functions underneath, :func:`clip_grads` and :func:`repair_grads`,
work on a gradient pytree directly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["ClipState", "RepairState", "clip_by_global_norm", "repair_nonfinite",
           "clip_grads", "repair_grads", "metrics_of"]

PyTree = Any


class ClipState(NamedTuple):
    """clipped: float32 [] 1.0 when the last gradient was rescaled; total_clipped: int32 []."""

    clipped: jax.Array
    total_clipped: jax.Array


class RepairState(NamedTuple):
    """repaired: float32 [] 1.0 when the last gradient was replaced; total_repaired: int32 []."""

    repaired: jax.Array
    total_repaired: jax.Array


def clip_grads(grads: PyTree, max_norm: float) -> tuple[PyTree, jax.Array]:
    """``(clipped grads, norm before clipping)``: g <- max_norm g / ‖g‖ when ‖g‖ > max_norm."""
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), norm


def _is_recurrent(path) -> bool:
    return any(getattr(p, "key", None) == "W_hh" for p in path)


def repair_grads(grads: PyTree, params: PyTree, grad_norm: jax.Array, *,
                 shrink: float = 0.02, max_norm: float = 1e10) -> tuple[PyTree, jax.Array]:
    """Pascanu et al.'s repair: ``(grads or the repaired gradient, repaired?)``.

    If ``grad_norm`` is NaN, Inf, negative or > ``max_norm``, every leaf named
    ``W_hh`` gets gradient ``shrink * W_hh`` and every other leaf zero.
    """
    bad = ~jnp.isfinite(grad_norm) | (grad_norm < 0) | (grad_norm > max_norm)
    repaired = jax.tree_util.tree_map_with_path(
        lambda path, p: shrink * p if _is_recurrent(path) else jnp.zeros_like(p), params)
    return jax.tree.map(lambda r, g: jnp.where(bad, r, g), repaired, grads), bad


def _check_positive(name: str, value: float) -> None:
    try:
        ok = bool(value > 0) and bool(jnp.isfinite(value))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Clip the gradient to global norm ``max_norm`` (θ of Pascanu et al. 2013)."""
    _check_positive("clip_norm", max_norm)

    def init_fn(params: PyTree) -> ClipState:
        del params
        return ClipState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def update_fn(updates: PyTree, state: ClipState, params: PyTree = None):
        del params
        clipped, norm = clip_grads(updates, max_norm)
        hit = norm > max_norm
        return clipped, ClipState(hit.astype(jnp.float32),
                                  state.total_clipped + hit.astype(jnp.int32))

    return optax.GradientTransformation(init_fn, update_fn)


def repair_nonfinite(shrink: float = 0.02, max_norm: float = 1e10) -> optax.GradientTransformation:
    """Replace an untrustworthy gradient by ``shrink · W_hh`` (see :func:`repair_grads`).

    Needs ``params`` in ``update`` (optax passes them through ``chain`` and
    ``inject_hyperparams``).
    """
    _check_positive("shrink", shrink)
    _check_positive("max_norm", max_norm)

    def init_fn(params: PyTree) -> RepairState:
        del params
        return RepairState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def update_fn(updates: PyTree, state: RepairState, params: PyTree = None):
        if params is None:
            raise ValueError("repair_nonfinite needs params: call update(grads, state, params)")
        fixed, bad = repair_grads(updates, params, optax.tree.norm(updates),
                                  shrink=shrink, max_norm=max_norm)
        return fixed, RepairState(bad.astype(jnp.float32),
                                  state.total_repaired + bad.astype(jnp.int32))

    return optax.GradientTransformation(init_fn, update_fn)


_REPORTING = (ClipState, RepairState)


def metrics_of(opt_state: PyTree) -> dict[str, jax.Array]:
    """The metrics kept by the transformations of this module inside ``opt_state``.

    ``{"clipped", "total_clipped"}`` for a clip, ``{"repaired", "total_repaired"}``
    for a repair; empty for an optimizer without them. Found wherever they sit
    (inside ``chain``, ``inject_hyperparams``, ...).
    """
    out: dict[str, jax.Array] = {}
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _REPORTING))
    for node in nodes:
        if isinstance(node, _REPORTING):
            out.update(node._asdict())
    return out
