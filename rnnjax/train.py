"""Training engine: a train state pytree, pure train/eval steps, and the loop.

Everything a run needs to continue lives in one pytree, :class:`TrainState`;
the train step is a pure function ``step_fn(state, batch) -> (state, metrics)``
that is jitted once; the loop :func:`run` is the only place with side effects
(progress bar, ``metrics.jsonl``, orbax checkpoints, resume).

Quick start::

    import optax
    from rnnjax import train

    def loss_fn(params, batch, key):            # -> loss or (loss, aux_metrics)
        ...

    optimizer = optax.adam(1e-3)               # any optax GradientTransformation
    state = train.init_state(params, optimizer, seed=0)
    step_fn = train.make_train_step(loss_fn, optimizer, clip_norm=1.0)

    def batch_fn(step):                        # batches are a pure function of the step
        key = jax.random.fold_in(jax.random.key(seed), step)
        return make_batch(key)

    state, history = train.run(workdir, state, step_fn, batch_fn, steps=1000,
                               log_every=50, checkpoint_every=200, keep=3)

The public pieces
-----------------
``TrainState(step, params, opt_state, rng, bad_steps, total_bad_steps, extra)``
    A NamedTuple (so a pytree). ``step`` is an int32 scalar counting finished
    steps; ``rng`` is a PRNG key that never changes: the key of step ``s`` is
    ``jax.random.fold_in(rng, s)``, so randomness is a pure function of
    (seed, step) and resume is exact. ``bad_steps`` counts non-finite steps in
    a row, ``total_bad_steps`` all of them. ``extra`` is any pytree the step
    carries from one step to the next (for example the hidden state of
    truncated BPTT); it is checkpointed with the rest. Optimizers with their
    own state (Hessian-free, ...) put it in ``opt_state``.

``init_state(params, optimizer, *, seed=0 | rng=key, extra=None) -> TrainState``

``make_train_step(loss_fn, optimizer, *, clip_norm=None, has_aux=False,
uses_extra=False) -> step_fn``
    ``loss_fn(params, batch, key) -> loss`` (or ``(loss, aux)`` with
    ``has_aux=True``; ``aux`` a dict of scalar metrics). With
    ``uses_extra=True`` the signature is ``loss_fn(params, extra, batch, key)
    -> (loss, (new_extra, aux))``. Returns the pure, un-jitted
    ``step_fn(state, batch) -> (state, metrics)``; :func:`run` jits it (or
    jit it yourself). Metrics: ``loss``, ``grad_norm``, ``finite`` (1.0/0.0),
    ``bad_steps`` and the aux metrics. A step whose loss or gradient has a NaN
    or Inf leaves ``params``, ``opt_state`` and ``extra`` unchanged and counts
    itself in ``bad_steps``; ``step`` still advances, so the next batch is new.

``guarded_update(state, new_params, new_opt_state, finite, new_extra=None,
update_extra=False) -> TrainState``
    The guard and counters for optimizers that write their own step.

``make_eval_step(metric_fn) -> eval_fn(params, batch) -> metrics`` (jitted);
``evaluate(eval_step, params, batches) -> dict`` (means over batches).

``read_metrics(workdir) -> list[dict]``: the records of ``metrics.jsonl``.

``run(workdir, state, step_fn, batch_fn, *, steps, log_every=100,
checkpoint_every=None, keep=3, eval_fn=None, eval_every=None, on_log=None,
max_bad_steps=None, progress=True, jit=True, stop_fn=None, after_eval=None)
-> (state, history)``
    ``batch_fn(step: int) -> batch`` must be a pure function of the step index
    (the step about to run, counted from 0). ``eval_fn(state) -> dict`` of
    floats (called every ``eval_every`` steps and at the end; logged with an
    ``eval_`` prefix). ``on_log(record)`` is called with every logged record.
    If ``workdir`` already holds a checkpoint, the run restores the latest one
    (``state`` is the template) and continues from there: losses match an
    uninterrupted run bit for bit on CPU. ``steps`` is the total number of
    steps, not the number still to run. ``history`` is the list of all logged
    records in ``workdir/metrics.jsonl`` (earlier runs of the same workdir
    included). ``workdir=None`` trains without files (no checkpoints, no
    metrics file). Raises :class:`NonFiniteError` after ``max_bad_steps``
    non-finite steps in a row (no checkpoint is written during a bad streak,
    so the last good one is kept). For a stacked sweep the streak is the
    longest among its members: one diverging member stops the sweep unless
    ``max_bad_steps=None`` (its updates are skipped either way). With ``checkpoint_every`` set, the last step
    is checkpointed too. ``stop_fn(state) -> bool``, checked after every
    step, ends the run early (e.g. on a time budget) as if that step were the
    last: a record, a checkpoint (if ``checkpoint_every`` is set) and the eval.
    ``jit=False`` when ``step_fn`` is already jitted or wraps a jitted function
    with Python around it. ``after_eval(state, history) -> state``, called after
    each evaluation with the history that ends in its record, may change the
    state before it is checkpointed (e.g. :func:`rnnjax.optimizers.anneal_on_plateau`
    lowers the learning rate when validation stops improving).

A record is logged after every step ``s`` (counting finished steps) that is a
multiple of ``log_every``, ``eval_every`` or ``checkpoint_every`` and after the
last step; its train metrics are means over the steps since the previous
record (metrics named ``total_*``, running totals, are their value after the
last step), so checkpoints always fall on record boundaries and a resumed run logs
the same numbers as one that was never stopped. Each record has ``step``,
``loss`` (and the other step metrics), ``steps_per_sec`` and ``time``.

Vectorised states (a sweep made with :mod:`rnnjax.sweep`, a leading axis over
configurations) go through the same loop: their metrics are logged as lists.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import checkpoint as ckpt

PyTree = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[["TrainState", Any], tuple["TrainState", Metrics]]

METRICS_FILE = "metrics.jsonl"


class NonFiniteError(FloatingPointError):
    """Raised by :func:`run` after too many non-finite steps in a row."""


class TrainState(NamedTuple):
    """Everything a run needs to continue, as one pytree.

    step: int32 [] finished steps.
    params: the model parameters.
    opt_state: the optimizer state (optax, or any pytree of another optimizer).
    rng: a PRNG key, constant; step s uses ``jax.random.fold_in(rng, s)``.
    bad_steps: int32 [] non-finite steps in a row (0 after a good step).
    total_bad_steps: int32 [] non-finite steps in all.
    extra: any pytree carried across steps (e.g. a truncated-BPTT carry).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array
    bad_steps: jax.Array
    total_bad_steps: jax.Array
    extra: PyTree = None


def init_state(
    params: PyTree,
    optimizer: optax.GradientTransformation | None,
    *,
    seed: int | None = 0,
    rng: jax.Array | None = None,
    extra: PyTree = None,
    opt_state: PyTree = None,
) -> TrainState:
    """A fresh :class:`TrainState` at step 0.

    Give ``optimizer`` (its ``init`` makes the optimizer state) or an explicit
    ``opt_state`` for optimizers that are not optax transformations. The key
    is ``rng`` if given, else ``jax.random.key(seed)``.
    """
    if rng is None:
        if seed is None:
            raise ValueError("init_state needs a seed or an rng key")
        rng = jax.random.key(seed)
    if opt_state is None:
        if optimizer is None:
            raise ValueError("init_state needs an optimizer or an explicit opt_state")
        opt_state = optimizer.init(params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(zero, params, opt_state, rng, zero, zero, extra)


def step_key(state: TrainState) -> jax.Array:
    """The PRNG key of the step ``state`` is about to run (pure in (rng, step))."""
    return jax.random.fold_in(state.rng, state.step)


def all_finite(tree: PyTree) -> jax.Array:
    """bool [] : True when every floating leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    # jnp.where rather than lax.cond: it vectorises under vmap (sweeps) as is.
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def guarded_update(state: TrainState, new_params: PyTree, new_opt_state: PyTree,
                   finite: jax.Array, new_extra: PyTree = None,
                   update_extra: bool = False) -> TrainState:
    """Advance ``state`` by one step, keeping the old values if not ``finite``.

    A helper for optimizers that write their own step (e.g. Hessian-free):
    compute the candidate params/opt_state, then call this to get the
    non-finite guard and the step/bad-step counters for free.
    """
    params = _select(finite, new_params, state.params)
    opt_state = _select(finite, new_opt_state, state.opt_state)
    extra = _select(finite, new_extra, state.extra) if update_extra else state.extra
    bad = jnp.where(finite, 0, state.bad_steps + 1).astype(jnp.int32)
    total = (state.total_bad_steps + jnp.where(finite, 0, 1)).astype(jnp.int32)
    return TrainState(state.step + 1, params, opt_state, state.rng, bad, total, extra)


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    has_aux: bool = False,
    uses_extra: bool = False,
) -> StepFn:
    """Turn a loss function and an optax optimizer into a pure train step.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` (a float scalar), or
        ``-> (loss, aux)`` with ``has_aux``; with ``uses_extra``,
        ``loss_fn(params, extra, batch, key) -> (loss, (new_extra, aux))``.
        ``aux`` is a dict of scalar metrics (or None).
      optimizer: any optax ``GradientTransformation``.
      clip_norm: if set, gradients are rescaled to this global norm when their
        norm exceeds it (Pascanu et al. 2013), before the optimizer.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      uses_extra: whether ``loss_fn`` reads and returns ``state.extra``.

    Returns:
      ``step_fn(state, batch) -> (state, metrics)``, pure and not jitted.
    """
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm!r}")

    def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        key = step_key(state)
        if uses_extra:
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            (loss, (new_extra, aux)), grads = grad_fn(state.params, state.extra, batch, key)
        else:
            grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
            out, grads = grad_fn(state.params, batch, key)
            (loss, aux), new_extra = (out if has_aux else (out, None)), None
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & all_finite(grads)
        if clip_norm is not None:
            # Pascanu et al.: g <- theta * g / ||g|| when ||g|| >= theta.
            scale = jnp.minimum(1.0, clip_norm / jnp.maximum(grad_norm, 1e-30))
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        # Zero the non-finite gradients before the optimizer sees them, so the
        # discarded update cannot leave NaNs in float ops of its state either.
        grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_state = guarded_update(state, new_params, new_opt_state, finite,
                                   new_extra, update_extra=uses_extra)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "finite": finite.astype(jnp.float32), "bad_steps": new_state.bad_steps}
        metrics.update(aux or {})
        return new_state, metrics

    return step_fn


def make_eval_step(metric_fn: Callable[[PyTree, Any], Metrics]) -> Callable[[PyTree, Any], Metrics]:
    """Jit ``metric_fn(params, batch) -> dict of scalars`` as an eval step."""
    return jax.jit(metric_fn)


def evaluate(eval_step: Callable[[PyTree, Any], Metrics], params: PyTree,
             batches: Iterable[Any]) -> dict[str, float]:
    """Mean of ``eval_step(params, batch)`` over ``batches`` (equal weights)."""
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        for k, v in eval_step(params, batch).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    if n == 0:
        raise ValueError("evaluate got no batches")
    return {k: v / n for k, v in sums.items()}


# ----------------------------------------------------------------------------
# The loop.

def _to_json(x: Any) -> Any:
    arr = np.asarray(x)
    if arr.ndim == 0:
        v = arr.item()
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)
    return [_to_json(a) for a in arr]


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of ``workdir/metrics.jsonl`` (empty if there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: nothing after it is valid
    return records


def _truncate_metrics(workdir: str, last_step: int) -> list[dict[str, Any]]:
    """Drop records after ``last_step`` (logged by a run that was then killed)."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    path = os.path.join(workdir, METRICS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return kept


def _is_boundary(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


def run(
    workdir: str | None,
    state: TrainState,
    step_fn: StepFn,
    batch_fn: Callable[[int], Any],
    *,
    steps: int,
    log_every: int = 100,
    checkpoint_every: int | None = None,
    keep: int = 3,
    eval_fn: Callable[[TrainState], dict[str, Any]] | None = None,
    eval_every: int | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    max_bad_steps: int | None = None,
    progress: bool = True,
    jit: bool = True,
    stop_fn: Callable[[TrainState], bool] | None = None,
    after_eval: Callable[[TrainState, list[dict[str, Any]]], TrainState] | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train ``state`` with ``step_fn`` on ``batch_fn(step)`` up to ``steps``.

    See the module docstring for the contract. Resumes from the latest
    checkpoint in ``workdir`` when there is one.
    """
    for name, value in (("steps", steps), ("log_every", log_every)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name == "steps" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'steps' else 'positive'}"
                             f" integer, got {value!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every),
                        ("max_bad_steps", max_bad_steps), ("keep", keep)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if checkpoint_every and workdir is None:
        raise ValueError("checkpoint_every needs a workdir to write checkpoints to")

    manager = None
    history: list[dict[str, Any]] = []
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        manager = ckpt.manager(workdir, keep=keep)
        restored = ckpt.restore_latest(manager, state)
        if restored is not None:
            state = restored
        history = _truncate_metrics(workdir, int(np.max(np.asarray(state.step))))

    jitted = jax.jit(step_fn) if jit else step_fn
    start = int(np.max(np.asarray(state.step)))
    bar = None
    if progress and steps > start:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, dynamic_ncols=True, smoothing=0.1)

    metrics_file = open(os.path.join(workdir, METRICS_FILE), "a") if workdir else None
    window: list[Metrics] = []
    t_window = time.perf_counter()
    t_start = time.time()
    try:
        for s in range(start, steps):
            state, metrics = jitted(state, batch_fn(s))
            window.append(metrics)  # fetched at the next record: no sync per step
            if bar is not None:
                bar.update(1)  # tqdm redraws at most every 0.1 s
            done = s + 1
            if max_bad_steps is not None:
                streak = int(np.max(np.asarray(jax.device_get(state.bad_steps))))
                if streak >= max_bad_steps:
                    raise NonFiniteError(
                        f"{streak} non-finite steps in a row (loss or gradient NaN/Inf) at step "
                        f"{done}: stopping (max_bad_steps={max_bad_steps}). The updates were "
                        "skipped and the last good checkpoint in "
                        f"{workdir!r} is kept. Lower --learning_rate or set --clip_norm.")
            stop = stop_fn is not None and bool(stop_fn(state))
            last = done == steps or stop
            is_ckpt = (manager is not None and checkpoint_every is not None
                       and (_is_boundary(done, checkpoint_every) or last))
            is_eval = eval_fn is not None and _is_boundary(done, eval_every)
            if not (_is_boundary(done, log_every) or is_ckpt or is_eval or last):
                continue
            now = time.perf_counter()
            record: dict[str, Any] = {"step": done}
            fetched = jax.device_get(window)
            for k in fetched[0]:
                if k.startswith("total_"):  # a running total: its value after the last step
                    record[k] = _to_json(np.asarray(fetched[-1][k], np.float64))
                elif k != "bad_steps":  # a counter: logged from the state below
                    record[k] = _to_json(np.mean([np.asarray(m[k], np.float64) for m in fetched], 0))
            record["bad_steps"] = _to_json(jax.device_get(state.bad_steps))
            record["total_bad_steps"] = _to_json(jax.device_get(state.total_bad_steps))
            record["steps_per_sec"] = len(window) / max(now - t_window, 1e-9)
            evaluated = eval_fn is not None and (is_eval or last)
            if evaluated:
                record.update({f"eval_{k}": _to_json(v) for k, v in eval_fn(state).items()})
            record["time"] = time.time() - t_start
            history.append(record)
            if evaluated and after_eval is not None:
                state = after_eval(state, history)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if on_log is not None:
                on_log(record)
            if bar is not None:
                loss = record["loss"]
                loss_str = f"{loss:.4g}" if isinstance(loss, float) else f"{np.mean(loss):.4g} (mean)"
                bar.set_postfix_str(f"loss={loss_str} {record['steps_per_sec']:.1f} steps/s")
            # Never write a checkpoint inside a bad streak: it would push the
            # last good one out of the kept set.
            if is_ckpt and int(np.max(np.asarray(jax.device_get(state.bad_steps)))) == 0:
                ckpt.save(manager, done, state)
            window, t_window = [], time.perf_counter()
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        if metrics_file:
            metrics_file.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    return state, history
