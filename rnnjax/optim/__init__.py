"""Optimisation: optimizers by name (:mod:`.factory`), gradient remedies as optax
transformations (:mod:`.transforms`) and Hessian-free (:mod:`.hessian_free`,
imported on its own: ``from rnnjax.optim import hessian_free``).

``from_config(config)`` is the builder the experiments use; ``make(name, rate, ...)``
the same by keyword.
"""

from rnnjax.optim.factory import (OPTIMIZERS, SCHEDULES, anneal_on_plateau, from_config,
                                  learning_rate_of, make, schedule_shape, with_learning_rate)
from rnnjax.optim.transforms import (ClipState, RepairState, clip_by_global_norm, clip_grads,
                                     metrics_of, repair_grads, repair_nonfinite)

__all__ = ["OPTIMIZERS", "SCHEDULES", "from_config", "make", "schedule_shape",
           "anneal_on_plateau", "learning_rate_of", "with_learning_rate", "ClipState",
           "RepairState", "clip_by_global_norm", "repair_nonfinite", "clip_grads",
           "repair_grads", "metrics_of"]
