"""Gradient remedies: moved to :mod:`rnnjax.optim.transforms`; the train step is
:func:`rnnjax.train.make_train_step` (``clip_norm``, ``nan_repair``, ``param_norms``)."""
# TEMPORARY re-export: removed when experiments/ use rnnjax.optim

from __future__ import annotations

import functools

from rnnjax import train
from rnnjax.optim.transforms import clip_grads as clip_by_global_norm  # noqa: F401
from rnnjax.optim.transforms import repair_grads as repair_nonfinite  # noqa: F401

# The old remedies step: per-parameter gradient norms in its metrics.
make_train_step = functools.partial(train.make_train_step, param_norms=True)
