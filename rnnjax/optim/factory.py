"""Optimizers and learning-rate schedules by name, as optax transformations.

``from_config(config)`` builds the optimizer an experiment's settings describe
(name, rate, schedule, clipping, the NaN/Inf repair): the one builder every
experiment uses, so every schedule setting works everywhere.

``make(name, learning_rate, *, schedule="constant", steps=..., ...)`` returns an
optax ``GradientTransformation`` whose state holds the peak learning rate as
an array (``optax.inject_hyperparams``). Keeping the rate in the state, not in
the Python closure, lets one compiled step serve many learning rates: a sweep
stacks states that differ only in that value and vmaps the step
(:mod:`rnnjax.sweep`). The schedule multiplies the peak rate by a shape that
starts (or, after warmup, peaks) at 1.

Names: sgd, momentum, nesterov, rmsprop, adam, adamw.
Schedules: constant, cosine, warmup_cosine, exponential, step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rnnjax.optim import transforms

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "step")


def schedule_shape(
    schedule: str,
    *,
    steps: int | None = None,
    warmup_steps: int = 0,
    decay_rate: float = 0.5,
    decay_steps: int | None = None,
    decay_begin: int = 0,
    end_fraction: float = 0.0,
) -> optax.Schedule:
    """A schedule with peak value 1 (multiply by the peak learning rate).

    constant: 1. cosine: 1 -> end_fraction over ``steps``. warmup_cosine: 0 -> 1
    linearly over ``warmup_steps``, then cosine to end_fraction at ``steps``.
    exponential: decay_rate ** (t / decay_steps), smooth. step: the same with
    ``t // decay_steps`` (staircase). Both hold 1 for the first ``decay_begin`` steps
    and count t from there, so the staircase's first drop comes at decay_begin +
    decay_steps (Zaremba et al. 2014: lr 1 for 4 epochs, then halved every epoch, is
    ``step`` with decay_begin = 3 epochs, decay_steps = 1 epoch, decay_rate = 0.5).
    """
    if schedule == "constant":
        return optax.constant_schedule(1.0)
    if schedule in ("cosine", "warmup_cosine"):
        if not steps or steps < 1:
            raise ValueError(f"schedule {schedule!r} needs steps >= 1 (the decay length), got {steps!r}")
        if schedule == "cosine":
            return optax.cosine_decay_schedule(1.0, steps, alpha=end_fraction)
        if not 0 <= warmup_steps < steps:
            raise ValueError(f"warmup_steps must be in [0, steps={steps}), got {warmup_steps!r}")
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps, steps, end_value=end_fraction)
    if schedule in ("exponential", "step"):
        decay_steps = decay_steps or (max(1, steps // 4) if steps else None)
        if not decay_steps:
            raise ValueError(f"schedule {schedule!r} needs decay_steps or steps")
        if not 0 < decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate!r}")
        if decay_begin < 0:
            raise ValueError(f"decay_begin must be >= 0, got {decay_begin!r}")
        return optax.exponential_decay(1.0, decay_steps, decay_rate, transition_begin=decay_begin,
                                       staircase=schedule == "step")
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")


def _base(name: str, momentum: float, weight_decay: float, b1: float, b2: float,
          eps: float, decay: float) -> optax.GradientTransformation:
    """The optimizer's direction, without the (negative) learning rate."""
    if name == "sgd":
        return optax.identity()
    if name == "momentum":
        return optax.trace(decay=momentum, nesterov=False)
    if name == "nesterov":
        return optax.trace(decay=momentum, nesterov=True)
    if name == "rmsprop":
        return optax.scale_by_rms(decay=decay, eps=eps)
    if name == "adam":
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    if name == "adamw":
        return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                           optax.add_decayed_weights(weight_decay))
    raise ValueError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")


def make(
    name: str,
    learning_rate: float,
    *,
    schedule: str = "constant",
    steps: int | None = None,
    warmup_steps: int = 0,
    decay_rate: float = 0.5,
    decay_steps: int | None = None,
    decay_begin: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    rms_decay: float = 0.9,
    before: tuple[optax.GradientTransformation, ...] = (),
) -> optax.GradientTransformation:
    """Optimizer ``name`` with peak ``learning_rate`` shaped by ``schedule``.

    The peak rate lives in the optimizer state (``hyperparams["learning_rate"]``)
    so that :func:`with_learning_rate` can change it without recompiling.
    ``before``: gradient transformations run ahead of the optimizer (e.g. clipping);
    they sit inside the same ``inject_hyperparams`` state.
    """
    try:
        usable = math.isfinite(float(learning_rate)) and float(learning_rate) > 0
    except (TypeError, ValueError):
        usable = False
    if not usable:
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
    base = _base(name, momentum, weight_decay, b1, b2, eps, rms_decay)
    shape = schedule_shape(schedule, steps=steps, warmup_steps=warmup_steps,
                           decay_rate=decay_rate, decay_steps=decay_steps,
                           decay_begin=decay_begin)

    def factory(learning_rate: jax.Array) -> optax.GradientTransformation:
        # The transformations `before` sit inside inject_hyperparams, so the state
        # keeps its `hyperparams` (learning_rate_of, with_learning_rate, sweeps).
        return optax.chain(*before, base,
                           optax.scale_by_schedule(lambda t: -learning_rate * shape(t)))

    return optax.inject_hyperparams(factory)(learning_rate=jnp.asarray(learning_rate, jnp.float32))


def from_config(config: Any) -> optax.GradientTransformation:
    """The optimizer that ``config``'s attributes describe (any object, e.g. a frozen dataclass).

    Reads ``optimizer, learning_rate, lr_schedule, steps, warmup_steps, decay_rate,
    decay_steps`` (0 means "a quarter of steps"), ``decay_begin`` and, optionally,
    ``clip_norm`` (None or 0: off) and ``nan_repair`` (default False). The gradient
    transformations run in Pascanu et al.'s order: the NaN/Inf repair
    (:func:`rnnjax.optim.transforms.repair_nonfinite`), then clipping by global
    norm (:func:`rnnjax.optim.transforms.clip_by_global_norm`), then the
    optimizer. Their per-step reports (``clipped``, ``repaired`` and running
    totals) reach the train step's metrics through
    :func:`rnnjax.optim.transforms.metrics_of`. Without clipping and repair the
    result is exactly ``make(...)`` (same state, same numbers).
    """
    required = ("optimizer", "learning_rate", "lr_schedule", "steps", "warmup_steps",
                "decay_rate", "decay_steps", "decay_begin")
    missing = [name for name in required if not hasattr(config, name)]
    if missing:
        raise ValueError(f"from_config needs a config with the settings {', '.join(required)}; "
                         f"{type(config).__name__} lacks {', '.join(missing)}")
    before: list[optax.GradientTransformation] = []
    if getattr(config, "nan_repair", False):
        before.append(transforms.repair_nonfinite())
    clip_norm = getattr(config, "clip_norm", None)
    if clip_norm:
        before.append(transforms.clip_by_global_norm(clip_norm))
    return make(config.optimizer, config.learning_rate, schedule=config.lr_schedule,
                steps=config.steps, warmup_steps=config.warmup_steps,
                decay_rate=config.decay_rate, decay_steps=config.decay_steps or None,
                decay_begin=config.decay_begin, before=tuple(before))


def anneal_on_plateau(metric: str, factor: float, *, min_improvement: float = 0.0):
    """An ``after_eval`` hook for :func:`rnnjax.train.run`: multiply the peak learning
    rate by ``factor`` after every evaluation whose ``metric`` (a key of the logged
    record, e.g. ``"eval_valid_nats"``, lower is better) is not below the best earlier
    value by more than ``min_improvement``. The rule of Mikolov's RNNLM toolkit and
    the PyTorch word-LM example (which divide by 4), for optimizers built by
    :func:`make`. The decision is a pure function of the logged history, so a resumed
    run anneals exactly as an uninterrupted one; the rate itself lives in the
    optimizer state and is checkpointed with it.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor!r}")

    def after_eval(state, history):
        values = [r[metric] for r in history if metric in r]
        if factor == 1 or len(values) < 2 or values[-1] < min(values[:-1]) - min_improvement:
            return state
        lr = learning_rate_of(state.opt_state) * factor
        return state._replace(opt_state=with_learning_rate(state.opt_state, lr))

    return after_eval


def learning_rate_of(opt_state: Any) -> jax.Array:
    """The peak learning rate stored in an optimizer state made by :func:`make`."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state: Any, learning_rate: float | jax.Array) -> Any:
    """``opt_state`` (from :func:`make`) with its peak learning rate replaced."""
    if not hasattr(opt_state, "hyperparams") or "learning_rate" not in opt_state.hyperparams:
        raise ValueError("with_learning_rate needs the state of an optimizer built by "
                         "rnnjax.optim.make or from_config (optax.inject_hyperparams)")
    old = opt_state.hyperparams["learning_rate"]
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, old.dtype).reshape(old.shape)
    return opt_state._replace(hyperparams=hyper)

