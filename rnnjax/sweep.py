"""Many configurations trained at once with ``jax.vmap``, and grids of runs.

Configurations that differ only in *values* (seeds, learning rates, any array
in the state) can share one compiled program: stack their train states along
a new leading axis and vmap the train step over it. The stacked state is an
ordinary :class:`rnnjax.train.TrainState` with a leading axis ``[N, ...]`` on
every leaf, so it goes through the same loop, checkpoints and metrics file as
a single run (its metrics are logged as lists of N values).

    opt = optim.make("adam", 1e-3)          # the rate lives in the state
    def init_one(key, lr):
        state = train.init_state(init_params(key), opt, rng=key)
        return state._replace(opt_state=optim.with_learning_rate(state.opt_state, lr))
    states = sweep.init_many(init_one, jax.random.split(key, 6), jnp.array([1e-3, 3e-3] * 3))
    step = sweep.vmap_step(train.make_train_step(loss_fn, opt))   # same batch for all
    states, history = train.run(workdir, states, step, batch_fn, steps=1000)
    best = sweep.member(states, int(jnp.argmin(history[-1]["loss"])))

Shapes: N configurations; every leaf of a stacked state is [N, ...].

For configurations that differ in *shapes* or code (hidden size, cell), run
them as separate processes: ``python -m experiments.sweep`` (see there);
:func:`grid` expands such a grid into a list of configurations.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp

PyTree = Any


def init_many(init_fn: Callable[..., PyTree], *args: Any) -> PyTree:
    """``jax.vmap(init_fn)(*args)``: one state per row of the arguments.

    Every argument has a leading axis N (e.g. N keys from ``jax.random.split``
    and N learning rates); returns the states stacked along axis 0.
    """
    sizes = {jax.tree.leaves(a)[0].shape[0] for a in args if jax.tree.leaves(a)}
    if len(sizes) > 1:
        raise ValueError(f"init_many: all arguments need the same leading size N, got {sorted(sizes)}")
    return jax.vmap(init_fn)(*args)


def vmap_step(step_fn: Callable[[PyTree, Any], tuple[PyTree, Any]], *,
              batch_axis: int | None = None) -> Callable[[PyTree, Any], tuple[PyTree, Any]]:
    """A train step over stacked states: ``vmap(step_fn)``.

    Args:
      step_fn: ``step_fn(state, batch) -> (state, metrics)`` for one configuration.
      batch_axis: None if every configuration sees the same batch (fair
        comparisons of learning rates); an int if the batch has a leading axis
        of N per-configuration batches (e.g. different data seeds).
    """
    return jax.vmap(step_fn, in_axes=(0, batch_axis))


def size(stacked: PyTree) -> int:
    """N, the number of configurations in a stacked pytree."""
    leaves = jax.tree.leaves(stacked)
    if not leaves:
        raise ValueError("size: the stacked pytree has no leaves")
    return leaves[0].shape[0]


def member(stacked: PyTree, i: int) -> PyTree:
    """Configuration ``i`` of a stacked pytree (leaves [N, ...] -> [...])."""
    n = size(stacked)
    if not -n <= i < n:
        raise IndexError(f"member {i} of a sweep of {n} configurations")
    return jax.tree.map(lambda x: x[i], stacked)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack pytrees of the same structure along a new leading axis."""
    if not trees:
        raise ValueError("stack: nothing to stack")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(stacked: PyTree) -> list[PyTree]:
    """The inverse of :func:`stack`."""
    return [member(stacked, i) for i in range(size(stacked))]


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """The cartesian product of named value lists, in order.

    >>> grid(learning_rate=[1e-3, 1e-2], hidden=[8])
    [{'learning_rate': 0.001, 'hidden': 8}, {'learning_rate': 0.01, 'hidden': 8}]
    """
    names = list(axes)
    values = [list(v) for v in axes.values()]
    for name, v in zip(names, values):
        if not v:
            raise ValueError(f"grid axis {name!r} has no values")
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]
