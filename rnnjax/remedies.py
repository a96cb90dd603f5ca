"""Gradient remedies: moved to :mod:`rnnjax.optim.transforms`; the train step is
:func:`rnnjax.train.make_train_step` (``clip_norm``, ``nan_repair``, ``param_norms``)."""
# TEMPORARY re-export: removed when experiments/ use rnnjax.optim

from __future__ import annotations

import jax.numpy as jnp

from rnnjax import train
from rnnjax.optim.transforms import clip_grads as clip_by_global_norm  # noqa: F401
from rnnjax.optim.transforms import repair_grads as repair_nonfinite  # noqa: F401


def make_train_step(loss_fn, optimizer, **kwargs):
    """The old remedies step: per-parameter gradient norms, and ``repaired`` always."""
    step = train.make_train_step(loss_fn, optimizer, param_norms=True, **kwargs)

    def step_fn(state, batch):
        new_state, metrics = step(state, batch)
        return new_state, {"repaired": jnp.zeros((), jnp.float32), **metrics}

    return step_fn
