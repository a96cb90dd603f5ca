"""Remedies for exploding gradients inside the train step.

* Clipping by global norm (Pascanu, Mikolov & Bengio 2013): if ‖g‖ >= θ,
  g <- θ g / ‖g‖.
* The NaN/Inf repair of their released code (pascanur/trainingRNNs): when the
  gradient norm is NaN, Inf, negative or above 1e10, the numbers cannot be
  trusted, so the gradient is replaced by ``shrink · W_hh`` for the recurrent
  matrices and zero for everything else. The update then shrinks ``W_hh``
  (lowering its spectral radius), steering the model out of the region where
  the gradient blew up, instead of skipping the step. (Without the repair,
  :func:`rnnjax.train.make_train_step` skips a non-finite step.)

The other remedies are choices of model, made where the cell is built:
``cells.by_name("irnn", H)`` (ReLU with identity init, Le et al. 2015),
``recurrent_init="orthogonal"``, ``spectral_radius=ρ``, ``cells.lstm``,
``cells.gru``.

:func:`make_train_step` has the contract of :func:`rnnjax.train.make_train_step`
(``loss_fn(params, batch, key)``, returns the pure ``step_fn(state, batch) ->
(state, metrics)``) and adds to the metrics the norm of each parameter's
gradient, ``grad_norm/<name>`` (read back with
:func:`rnnjax.diagnostics.parameter_gradient_norms`), and ``repaired``
(1.0 on a repaired step).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from rnnjax import diagnostics
from rnnjax.train import TrainState, all_finite, guarded_update, step_key

__all__ = ["clip_by_global_norm", "repair_nonfinite", "make_train_step"]

PyTree = Any


def clip_by_global_norm(grads: PyTree, max_norm: float) -> tuple[PyTree, jax.Array]:
    """``(clipped grads, norm before clipping)``: g <- max_norm g / ‖g‖ when ‖g‖ > max_norm."""
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), norm


def _is_recurrent(path) -> bool:
    return any(getattr(p, "key", None) == "W_hh" for p in path)


def repair_nonfinite(grads: PyTree, params: PyTree, grad_norm: jax.Array, *,
                     shrink: float = 0.02, max_norm: float = 1e10) -> tuple[PyTree, jax.Array]:
    """Pascanu et al.'s repair: ``(grads or the repaired gradient, repaired?)``.

    If ``grad_norm`` is NaN, Inf, negative or > ``max_norm``, every leaf named
    ``W_hh`` gets gradient ``shrink * W_hh`` and every other leaf zero.
    """
    bad = ~jnp.isfinite(grad_norm) | (grad_norm < 0) | (grad_norm > max_norm)
    repaired = jax.tree_util.tree_map_with_path(
        lambda path, p: shrink * p if _is_recurrent(path) else jnp.zeros_like(p), params)
    return jax.tree.map(lambda r, g: jnp.where(bad, r, g), repaired, grads), bad


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    nan_repair: bool = False,
    has_aux: bool = False,
    shrink: float = 0.02,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """A train step with clipping, the NaN/Inf repair and per-parameter gradient norms.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
      optimizer: an optax transformation.
      clip_norm: θ of clipping by global norm, or None.
      nan_repair: repair steps with a NaN/Inf/huge gradient (see module doc);
        without it such steps are skipped (params unchanged).
      shrink: the repair's factor on ``W_hh``.

    Metrics: ``loss``, ``grad_norm`` (before clipping), ``finite``, ``repaired``,
    ``bad_steps``, ``grad_norm/<param>`` and the aux metrics.
    """
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm!r}")

    def step_fn(state: TrainState, batch: Any):
        out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(
            state.params, batch, step_key(state))
        loss, aux = out if has_aux else (out, None)
        per_param = diagnostics.gradient_norm_metrics(grads)
        if clip_norm is not None:
            grads, grad_norm = clip_by_global_norm(grads, clip_norm)
        else:
            grad_norm = optax.tree.norm(grads)
        if nan_repair:
            grads, repaired = repair_nonfinite(grads, state.params, grad_norm, shrink=shrink)
        else:
            repaired = jnp.array(False)
        finite = all_finite(grads) & (jnp.isfinite(loss) | repaired)
        grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_state = guarded_update(state, new_params, new_opt_state, finite)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
                   "repaired": repaired.astype(jnp.float32), "bad_steps": new_state.bad_steps,
                   **per_param}
        metrics.update(aux or {})
        return new_state, metrics

    return step_fn
