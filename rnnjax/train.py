"""Training engine: a train state pytree, pure train/eval steps, and the loop.

Everything a run needs to continue lives in one pytree, :class:`TrainState`;
the train step is a pure function ``step_fn(state, batch) -> (state, metrics)``
that is jitted once; the loop :func:`run` is the only place with side effects
(progress bar, ``metrics.jsonl``, orbax checkpoints, resume).

Quick start::

    from rnnjax import optim, train

    def loss_fn(params, batch, key):            # -> loss or (loss, aux_metrics)
        ...

    optimizer = optim.make("adam", 1e-3, before=(optim.clip_by_global_norm(1.0),))
    state = train.init_state(params, optimizer, seed=0)   # any optax transformation works
    step_fn = train.make_train_step(loss_fn, optimizer)

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

``make_train_step(loss_fn, optimizer, *, clip_norm=None, nan_repair=False,
param_norms=False, has_aux=False, uses_extra=False) -> step_fn``
    ``loss_fn(params, batch, key) -> loss`` (or ``(loss, aux)`` with
    ``has_aux=True``; ``aux`` a dict of scalar metrics). With
    ``uses_extra=True`` the signature is ``loss_fn(params, extra, batch, key)
    -> (loss, (new_extra, aux))``. Returns the pure, un-jitted
    ``step_fn(state, batch) -> (state, metrics)``; :func:`run` jits it (or
    jit it yourself). Metrics: ``loss``, ``grad_norm``, ``finite`` (1.0 when
    the step was applied), ``bad_steps``, the reports of the gradient remedies
    in the optimizer (``clipped``, ``repaired``, ``total_*``;
    :mod:`rnnjax.optim.transforms`) and the aux metrics. A step whose loss,
    gradient, new parameters or new optimizer state has a NaN or Inf leaves
    ``params``, ``opt_state`` and ``extra`` unchanged and counts itself in
    ``bad_steps`` (unless the NaN/Inf repair fixed its gradient); ``step``
    still advances, so the next batch is new.

``guarded_update(state, new_params, new_opt_state, finite, new_extra=None,
update_extra=False) -> TrainState``
    The guard and counters for optimizers that write their own step.

``make_eval_step(metric_fn) -> eval_fn(params, batch) -> metrics`` (jitted);
``evaluate(eval_step, params, batches) -> dict`` (means over batches).

``read_metrics(workdir) -> list[dict]``: the records of ``metrics.jsonl``
(:func:`rnnjax.metrics.read`: a bad line is skipped with a warning).

``run(workdir, state, step_fn, batch_fn, *, steps, log_every=100,
checkpoint_every=None, keep=3, eval_fn=None, eval_every=None, on_log=None,
max_bad_steps=None, progress=True, jit=True, stop_fn=None, after_eval=None)
-> (state, history)``
    ``batch_fn(step: int) -> batch`` must be a pure function of the step index
    (the step about to run, counted from 0). ``eval_fn(state) -> dict`` of
    floats (called every ``eval_every`` steps and at the end; logged with an
    ``eval_`` prefix). ``on_log(record)`` is called with every logged record.
    If ``workdir`` already holds a checkpoint, the run restores the newest one
    that verifies (:mod:`rnnjax.checkpoint`; ``state`` is the template) and
    continues from there: losses match an
    uninterrupted run bit for bit on CPU. ``steps`` is the total number of
    steps, not the number still to run. ``history`` is the list of all logged
    records in ``workdir/metrics.jsonl`` (earlier runs of the same workdir
    included). ``workdir=None`` trains without files (no checkpoints, no
    metrics file). A workdir whose lock another process holds
    (:func:`rnnjax.workdir.lock`) is refused before anything is written; an
    initial state with a NaN or Inf too. A full disk ends the run with
    :class:`rnnjax.errors.DiskFullError` (one line: what was kept, what to do).
    Raises :class:`NonFiniteError` after ``max_bad_steps``
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
    state before it is checkpointed (e.g. :func:`rnnjax.optim.anneal_on_plateau`
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
import os
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import checkpoint as ckpt
from rnnjax import errors
from rnnjax import metrics as metrics_file_io
from rnnjax import workdir as workdir_safety
from rnnjax.optim import transforms

PyTree = Any
Metrics = dict[str, jax.Array]
StepFn = Callable[["TrainState", Any], tuple["TrainState", Metrics]]

METRICS_FILE = metrics_file_io.FILE

NonFiniteError = errors.NonFiniteError  # raised by run() after too many bad steps in a row


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
    non-finite guard and the step/bad-step counters for free. The candidates
    themselves are checked too: a step whose new params, optimizer state (or
    extra, with ``update_extra``) hold a NaN or Inf counts as non-finite, so a
    finite loss with an infinite learning rate cannot poison the state.
    """
    finite = finite & all_finite(new_params) & all_finite(new_opt_state)
    if update_extra:
        finite = finite & all_finite(new_extra)
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
    nan_repair: bool = False,
    param_norms: bool = False,
    has_aux: bool = False,
    uses_extra: bool = False,
) -> StepFn:
    """Turn a loss function and an optax optimizer into a pure train step.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> loss`` (a float scalar), or
        ``-> (loss, aux)`` with ``has_aux``; with ``uses_extra``,
        ``loss_fn(params, extra, batch, key) -> (loss, (new_extra, aux))``.
        ``aux`` is a dict of scalar metrics (or None).
      optimizer: any optax ``GradientTransformation``. Clipping and the NaN/Inf
        repair are best chained into it (:func:`rnnjax.optim.from_config`); their
        ``clipped``/``repaired`` flags and running totals join the metrics.
      clip_norm: if set, gradients are rescaled to this global norm when their
        norm exceeds it (Pascanu et al. 2013), before the optimizer (the same
        transformation as in the optimizer, without a running total).
      nan_repair: replace a NaN/Inf/huge gradient by ``0.02 · W_hh`` (Pascanu et
        al.'s repair, :func:`rnnjax.optim.transforms.repair_nonfinite`) instead of
        skipping the step; before clipping.
      param_norms: add the norm of each parameter's gradient as
        ``grad_norm/<name>`` (:func:`rnnjax.diagnostics.gradient_norm_metrics`).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      uses_extra: whether ``loss_fn`` reads and returns ``state.extra``.

    Returns:
      ``step_fn(state, batch) -> (state, metrics)``, pure and not jitted.
    """
    inline = []  # stateless use of the transformations, for the keyword arguments
    if nan_repair:
        inline.append(transforms.repair_nonfinite())
    if clip_norm is not None:
        inline.append(transforms.clip_by_global_norm(clip_norm))

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
        metrics = {"loss": loss, "grad_norm": grad_norm}
        if param_norms:
            from rnnjax import diagnostics  # plotting helpers are not needed otherwise
            metrics.update(diagnostics.gradient_norm_metrics(grads))
        updates = grads
        for t in inline:
            updates, t_state = t.update(updates, t.init(state.params), state.params)
            metrics.update({k: v for k, v in transforms.metrics_of(t_state).items()
                            if not k.startswith("total_")})
        # Non-finite gradients go to the optimizer as they are: a repair in it
        # may fix them; if not, guarded_update drops the candidate state.
        updates, new_opt_state = optimizer.update(updates, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        reports = transforms.metrics_of(new_opt_state)
        repaired = jnp.asarray(metrics.get("repaired", reports.get("repaired", 0.0))) > 0
        new_state = guarded_update(state, new_params, new_opt_state, finite | repaired,
                                   new_extra, update_extra=uses_extra)
        # Running totals from the state kept (a rejected step's count is rolled back).
        kept = transforms.metrics_of(new_state.opt_state)
        metrics.update({k: kept[k] if k.startswith("total_") else v for k, v in reports.items()})
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "finite": (new_state.bad_steps == 0).astype(jnp.float32),
                   "bad_steps": new_state.bad_steps, **metrics, **(aux or {})}
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

_to_json = metrics_file_io.to_json


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All valid records of ``workdir/metrics.jsonl`` (:func:`rnnjax.metrics.read`)."""
    return metrics_file_io.read(workdir)


def _display(value: Any) -> float:
    """A logged metric (a float, ``"nan"``, or a list of them for a sweep) as one float."""
    return float(np.mean(np.asarray(value, dtype=np.float64)))


def _streak(state: TrainState) -> int:
    return int(np.max(np.asarray(jax.device_get(state.bad_steps))))


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
    restored = None
    if workdir is not None:
        if jax.process_index() == 0:  # process 0 holds a multi-process run's lock
            workdir_safety.check_free(workdir)
        os.makedirs(workdir, exist_ok=True)
        manager = ckpt.manager(workdir, keep=keep)
        try:
            restored = ckpt.restore_latest(manager, state, quarantine=True)
        except BaseException:
            manager.close()
            raise
        if restored is not None:
            state = restored
    if restored is None and not bool(all_finite(state)):
        bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
               if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and not bool(jnp.all(jnp.isfinite(x)))]
        if manager is not None:
            manager.close()
        raise NonFiniteError(f"the initial state has non-finite values in {', '.join(bad[:4])}: "
                             "nothing was trained or written; check the initialisation settings "
                             "(e.g. a scale, radius or rate that is inf or nan)")
    if workdir is not None:
        history = metrics_file_io.truncate(workdir, int(np.max(np.asarray(state.step))))

    jitted = jax.jit(step_fn) if jit else step_fn
    start = int(np.max(np.asarray(state.step)))
    bar = None
    # In a multi-process run (rnnjax.distributed) every process trains and saves its part
    # of each checkpoint; only process 0 shows progress and writes metrics.
    primary = jax.process_index() == 0
    if progress and primary and steps > start:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, dynamic_ncols=True, smoothing=0.1)

    writing = "metrics.jsonl"

    def kept() -> str:
        if workdir is None:
            return "nothing was written (no workdir)"
        # From the disk: an asynchronous save that failed is not a kept checkpoint.
        last_saved = ckpt.latest_step(workdir)
        where = (f"checkpoint {last_saved}" if last_saved is not None else "no checkpoint yet")
        return f"{workdir!r} keeps {where} and the metrics up to it"

    metrics_file = None
    window: list[Metrics] = []
    t_window = time.perf_counter()
    t_start = time.time()
    try:
        metrics_file = (open(metrics_file_io.path_of(workdir), "a")
                        if workdir and primary else None)
        for s in range(start, steps):
            state, metrics = jitted(state, batch_fn(s))
            window.append(metrics)  # fetched at the next record: no sync per step
            if bar is not None:
                bar.update(1)  # tqdm redraws at most every 0.1 s
            done = s + 1
            if max_bad_steps is not None and _streak(state) >= max_bad_steps:
                raise NonFiniteError(
                    f"{_streak(state)} non-finite steps in a row (loss, gradient or updated "
                    f"parameters NaN/Inf) at step {done}, so the run stopped "
                    f"(max_bad_steps={max_bad_steps}); those updates were skipped and "
                    f"{kept()}. Lower --learning_rate, set --clip_norm or --nan_repair, "
                    "and run again")
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
                writing = f"the metrics of step {done}"
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if on_log is not None:
                on_log(record)
            if bar is not None:
                # Non-finite values are logged as strings ("nan"): convert back.
                loss = _display(record["loss"])
                mean = "" if np.ndim(record["loss"]) == 0 else " (mean)"
                bar.set_postfix_str(f"loss={loss:.4g}{mean} {record['steps_per_sec']:.1f} steps/s")
            # Never write a checkpoint inside a bad streak: it would push the
            # last good one out of the kept set.
            if is_ckpt and _streak(state) == 0:
                writing = f"checkpoint {done}"
                ckpt.save(manager, done, state)
            window, t_window = [], time.perf_counter()
            if stop:
                break
    except Exception as e:  # noqa: BLE001 - orbax reports a full disk as a ValueError
        if errors.disk_full(e, "", "") is None:
            raise
        if manager is not None:
            try:  # let the saves under way finish (or fail) before saying what is kept
                manager.wait_until_finished()
            except Exception:  # noqa: BLE001 - a second failure of the same full disk
                pass
        raise errors.disk_full(e, f"{writing} in {workdir!r}", kept()) from e
    finally:
        if bar is not None:
            bar.close()
        if metrics_file:
            try:
                metrics_file.close()
            except OSError:
                pass  # a failed flush of a full disk: reported above or below
        if manager is not None:
            failing = sys.exc_info()[1] is not None  # this finally runs for an error
            try:
                _finish_saves(manager, workdir)
            except errors.DiskFullError:
                if not failing:  # else the same full disk is already being reported
                    raise
    return state, history


def _finish_saves(manager: Any, workdir: str | None) -> None:
    """Wait for the pending asynchronous save and close the manager; a full disk (orbax
    may report it from either) becomes DiskFullError."""
    try:
        try:
            manager.wait_until_finished()
        finally:
            manager.close()
    except Exception as e:  # noqa: BLE001 - orbax may wrap the OSError
        full = errors.disk_full(e, f"a checkpoint in {workdir!r}",
                                f"its last complete checkpoint ({ckpt.latest_step(workdir)}) is "
                                "kept and the unfinished one is ignored on resume")
        if full is None:
            raise
        raise full from e
