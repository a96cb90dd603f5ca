"""Optimizers by name: moved to :mod:`rnnjax.optim` (``rnnjax.optim.factory``)."""
# TEMPORARY re-export: removed when experiments/ use rnnjax.optim

from rnnjax.optim.factory import (OPTIMIZERS, SCHEDULES, anneal_on_plateau, from_config,  # noqa: F401
                                  learning_rate_of, make, schedule_shape, with_learning_rate)
