"""rnnjax: recurrent neural networks as pure JAX functions.

Cells are NamedTuples of pure functions (``rnnjax.cells``); ``rnnjax.recurrence``
unrolls them with ``jax.lax.scan``. See README.md for a tour.
"""

from rnnjax import cells, initializers, recurrence
from rnnjax.cells import Cell, LSTMCarry
from rnnjax.recurrence import bidirectional, sequence_mask, stack, unroll

__version__ = "0.1.0"

__all__ = ["cells", "initializers", "recurrence", "Cell", "LSTMCarry", "unroll", "stack",
           "bidirectional", "sequence_mask"]
