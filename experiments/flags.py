"""The flags every experiment shares, defined once, and their validation.

An experiment module imports this file (which defines the flags on absl's
global FLAGS), may change defaults with ``flags.FLAGS.set_default``, and calls
:func:`validate` first thing in ``main`` so a bad value stops the run before
any work, with a message that names the flag and what it accepts::

    from absl import app
    from experiments import flags as common

    def main(argv):
        cfg = common.validate()           # raises app.UsageError on bad values
        ...

    if __name__ == "__main__":
        app.run(main)

``--helpfull`` lists them. :func:`validate` returns a plain dict of the common
flag values (the run's config, saved next to the checkpoints by
:func:`save_config`).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from absl import app, flags, logging  # logging also defines --verbosity

from rnnjax import cells, checkpoint, compile_cache, optimizers

FLAGS = flags.FLAGS

COMMON_FLAGS = (
    "workdir", "seed", "steps", "batch_size", "optimizer", "learning_rate", "lr_schedule",
    "warmup_steps", "decay_rate", "decay_steps", "decay_begin", "cell", "hidden", "clip_norm",
    "log_every", "checkpoint_every", "keep_checkpoints", "max_bad_steps", "progress",
)


def define(kind: str, name: str, *args, **kwargs) -> None:
    """``flags.DEFINE_<kind>(name, *args, **kwargs)``, unless this process already has --name.

    Experiments share flag names (--task, --eval_every, --max_minutes, ...). A process
    that imports two of them (the tests, a notebook, a sweep driver) keeps the first
    definition instead of failing with DuplicateFlagError. Every experiment defines its
    own flags through this function.
    """
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, *args, **kwargs)


def _define() -> None:
    # Each flag is defined once per process, whichever module (this one, or a
    # sweep driver that has its own --workdir) defines it first.
    define("string", "workdir", None, "Directory for metrics.jsonl, checkpoints and side "
           "files; a rerun with the same workdir resumes from the last checkpoint. "
           "Unset: train without writing files.")
    define("integer", "seed", 0, "Seed of every PRNG stream (init, data, dropout).")
    define("integer", "steps", 1000, "Total number of training steps (a positive integer).")
    define("integer", "batch_size", 32, "Sequences per batch (a positive integer).")
    define("string", "optimizer", "adam", "One of: " + ", ".join(optimizers.OPTIMIZERS) + ".")
    define("float", "learning_rate", 1e-3, "Peak learning rate (a positive number).")
    define("string", "lr_schedule", "constant",
           "Learning-rate schedule, one of: " + ", ".join(optimizers.SCHEDULES) + ".")
    define("integer", "warmup_steps", 0, "Linear warmup steps for --lr_schedule=warmup_cosine.")
    define("float", "decay_rate", 0.5, "Factor per --decay_steps of --lr_schedule=exponential|step.")
    define("integer", "decay_steps", 0, "Steps per decay of --lr_schedule=exponential|step "
           "(0: a quarter of --steps).")
    define("integer", "decay_begin", 0, "Steps before --lr_schedule=exponential|step starts "
           "counting (the step schedule's first drop is at decay_begin + decay_steps).")
    define("string", "cell", "tanh", "Recurrent cell, one of: " + ", ".join(cells.CELL_NAMES) + ".")
    define("integer", "hidden", 32, "Hidden units per layer (a positive integer).")
    define("float", "clip_norm", None, "Clip gradients to this global norm (Pascanu et al. "
           "2013); a positive number, or unset for no clipping.")
    define("integer", "log_every", 100, "Write a metrics.jsonl record every N steps.")
    define("integer", "checkpoint_every", 1000, "Save a checkpoint every N steps (0: never).")
    define("integer", "keep_checkpoints", 3, "Keep the last K checkpoints.")
    define("integer", "max_bad_steps", 10, "Stop after this many non-finite (NaN/Inf) steps "
           "in a row; their updates are skipped.")
    define("bool", "progress", True, "Show a progress bar.")
    define("string", "compilation_cache", "auto", "Keep compiled XLA programs on disk, so "
           "the next run with the same shapes loads them instead of compiling: 'auto' ("
           "$RNNJAX_COMPILATION_CACHE, else ~/.cache/rnnjax/xla), a directory, or 'none'. "
           "Entries go to a subdirectory per machine (rnnjax.compile_cache).")


_define()


def _fail(flag: str, value: Any, accepted: str) -> None:
    raise app.UsageError(f"--{flag}={value!r} is invalid: {accepted}.")


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise app.UsageError naming ``--name`` unless value is a positive int."""
    if value is None or not isinstance(value, int) or value < (0 if allow_zero else 1):
        _fail(name, value, "expected a " + ("non-negative" if allow_zero else "positive") + " integer")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise app.UsageError naming ``--name`` unless value is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        _fail(name, value, "accepted values are " + ", ".join(choices))


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` if needed and prove it is writable, or raise UsageError."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        _fail("workdir", workdir, f"it must be a writable directory ({e.strerror or e})")


def validate(cells_allowed: Iterable[str] | None = None,
             optimizers_allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """Check the common flags; return them as a dict. Call before any work.

    Args:
      cells_allowed: restrict --cell further (default: all of cells.CELL_NAMES).
      optimizers_allowed: restrict --optimizer (default: optimizers.OPTIMIZERS).

    Raises:
      app.UsageError naming the flag and the accepted values.
    """
    # Orbax and JAX log every checkpoint and backend probe at INFO; keep the terminal
    # for the progress bar and the results unless --verbosity is given (0: INFO).
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    for name in ("steps", "batch_size", "hidden", "log_every", "keep_checkpoints",
                 "max_bad_steps"):
        check_positive_int(name, FLAGS[name].value)
    for name in ("checkpoint_every", "warmup_steps", "decay_steps", "decay_begin"):
        check_positive_int(name, FLAGS[name].value, allow_zero=True)
    check_choice("optimizer", FLAGS.optimizer, optimizers_allowed or optimizers.OPTIMIZERS)
    check_choice("lr_schedule", FLAGS.lr_schedule, optimizers.SCHEDULES)
    check_choice("cell", FLAGS.cell, cells_allowed or cells.CELL_NAMES)
    if not FLAGS.learning_rate > 0:
        _fail("learning_rate", FLAGS.learning_rate, "expected a positive number")
    if not 0 < FLAGS.decay_rate <= 1:
        _fail("decay_rate", FLAGS.decay_rate, "expected a factor in (0, 1]")
    if FLAGS.clip_norm is not None and not FLAGS.clip_norm > 0:
        _fail("clip_norm", FLAGS.clip_norm, "expected a positive number (or leave it unset)")
    if FLAGS.lr_schedule == "warmup_cosine" and FLAGS.warmup_steps >= FLAGS.steps:
        _fail("warmup_steps", FLAGS.warmup_steps, f"must be smaller than --steps={FLAGS.steps}")
    if FLAGS.workdir is not None:
        check_workdir(FLAGS.workdir)
    apply_compilation_cache(FLAGS.compilation_cache)
    return {name: FLAGS[name].value for name in COMMON_FLAGS}


def apply_compilation_cache(value: str) -> None:
    """Turn the persistent compilation cache on or off as ``--compilation_cache`` says."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        compile_cache.disable()
        return
    try:
        compile_cache.enable(None if value == "auto" else value)
    except ValueError as e:
        _fail("compilation_cache", value, f"{e} (or 'none')")


def make_optimizer() -> Any:
    """The optax optimizer the common flags describe (call after validate)."""
    return optimizers.make(FLAGS.optimizer, FLAGS.learning_rate, schedule=FLAGS.lr_schedule,
                           steps=FLAGS.steps, warmup_steps=FLAGS.warmup_steps,
                           decay_rate=FLAGS.decay_rate, decay_steps=FLAGS.decay_steps or None,
                           decay_begin=FLAGS.decay_begin)


def loop_kwargs() -> dict[str, Any]:
    """Keyword arguments of rnnjax.train.run from the common flags. Without --workdir
    there is nowhere to write checkpoints, so --checkpoint_every is ignored."""
    return dict(steps=FLAGS.steps, log_every=FLAGS.log_every,
                checkpoint_every=(FLAGS.checkpoint_every or None) if FLAGS.workdir else None,
                keep=FLAGS.keep_checkpoints, max_bad_steps=FLAGS.max_bad_steps,
                progress=FLAGS.progress)


def save_config(workdir: str, config: dict[str, Any]) -> None:
    """Write the run's config as ``workdir/config.json`` (a side file)."""
    checkpoint.save_json(workdir, "config", config)


def device_summary() -> str:
    """What runs the computation, for logs and results: backend, devices, matmul precision.

    E.g. ``"gpu: 1 x NVIDIA H200, float32 matmul precision default (TF32 on NVIDIA GPUs)"``:
    a number read on a GPU at JAX's default precision is a TF32 number
    (``JAX_DEFAULT_MATMUL_PRECISION=highest`` gives full float32).
    """
    import jax

    devices = jax.devices()
    backend = jax.default_backend()
    precision = jax.config.jax_default_matmul_precision or "default"
    note = " (TF32 on NVIDIA GPUs)" if backend == "gpu" and precision == "default" else ""
    return (f"{backend}: {len(devices)} x {devices[0].device_kind}, "
            f"float32 matmul precision {precision}{note}")
