"""Experiment settings as frozen dataclasses, and the absl flags made from them.

Every experiment module has the same shape (the Flax examples' ``main.py`` +
``train_and_evaluate``)::

    @dataclasses.dataclass(frozen=True)
    class Config(cli.TrainConfig):           # the common training settings, inherited
        steps: int = 1000                     # a new default for an inherited setting
        train_length: int = cli.field(10, "Length of the training sequences.",
                                      check=cli.positive)

    def run(config: Config, workdir: str | None) -> dict:
        cli.validate(config)                  # the same checks from Python as from flags
        ...

    def main(argv):
        cli.call(run, cli.from_flags(Config, argv))

    if __name__ == "__main__":
        cli.define_flags(Config)
        app.run(main)

A field is a flag of the same name (``--train_length``) with the field's default
and help. Flags are defined only when the module runs as a script, so importing
any number of experiments (a test, a notebook, a sweep) defines none and changes
nothing. From Python::

    config = dataclasses.replace(parity.Config(), steps=50, hidden=8)
    results = parity.run(config, "runs/parity")

A bad value raises :class:`ConfigError` naming the setting and what it accepts
(``steps=-1 is invalid: expected a positive integer``); from the command line the
same message names the flag (``--steps=-1 ...``) and nothing has run yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import math
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Iterable

import jax
from absl import app, flags, logging  # logging also defines --verbosity

from rnnjax import cells, compile_cache, distributed, errors, metrics, tensorboard
from rnnjax import workdir as workdir_lib
from rnnjax.optim import factory as optim_factory

FLAGS = flags.FLAGS

Check = Callable[[Any], "str | None"]  # returns what is accepted when the value is not


class ConfigError(ValueError):
    """A setting with a value the experiment cannot use: ``name=value is invalid: accepted``."""

    def __init__(self, name: str, value: Any, accepted: str):
        self.name, self.value, self.accepted = name, value, accepted
        super().__init__(f"{name}={value!r} is invalid: {accepted}")


# ----------------------------------------------------------------------------- checks

def positive(value: Any) -> str | None:
    """Accept numbers > 0 (integers for int fields: the type is checked separately)."""
    return None if value > 0 else "expected a positive number"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "expected a non-negative number"


def fraction(value: Any) -> str | None:
    """Accept rates in [0, 1)."""
    return None if 0 <= value < 1 else "expected a rate in [0, 1)"


def factor(value: Any) -> str | None:
    """Accept factors in (0, 1]."""
    return None if 0 < value <= 1 else "expected a factor in (0, 1]"


def at_least(bound: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= bound else f"expected at least {bound}"
    return check


def field(default: Any, help: str, *, check: Check | None = None,
          choices: Iterable[str] | None = None, allow_inf: bool = False,
          repeat: bool = False) -> Any:
    """A Config field that is also a flag: its default, help text and checks.

    Args:
      default: the default value (also the flag's default).
      help: the flag's help text.
      check: ``check(value) -> None | "what is accepted"``; not called for ``None``.
      choices: the accepted strings (the flag is an enum).
      allow_inf: accept ``inf`` for a float (every float must otherwise be finite).
      repeat: a ``tuple[str, ...]`` given by repeating the flag (``--grid=a=1,2 --grid=b=3``)
        instead of one comma-separated list.
    """
    meta = {"help": help, "check": check, "allow_inf": allow_inf, "repeat": repeat,
            "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("Config defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings every training experiment shares (the common flags)."""

    seed: int = field(0, "Seed of every PRNG stream (init, data, dropout).", check=non_negative)
    steps: int = field(1000, "Total number of training steps.", check=positive)
    batch_size: int = field(32, "Sequences per batch.", check=positive)
    optimizer: str = field("adam", "The optax optimizer.", choices=optim_factory.OPTIMIZERS)
    learning_rate: float = field(1e-3, "Peak learning rate.", check=positive)
    lr_schedule: str = field("constant", "Learning-rate schedule.", choices=optim_factory.SCHEDULES)
    warmup_steps: int = field(0, "Linear warmup steps for --lr_schedule=warmup_cosine.",
                              check=non_negative)
    decay_rate: float = field(0.5, "Factor per --decay_steps of --lr_schedule=exponential|step.",
                              check=factor)
    decay_steps: int = field(0, "Steps per decay of --lr_schedule=exponential|step "
                             "(0: a quarter of --steps).", check=non_negative)
    decay_begin: int = field(0, "Steps before --lr_schedule=exponential|step starts counting "
                             "(the step schedule's first drop is at decay_begin + decay_steps).",
                             check=non_negative)
    cell: str = field("tanh", "Recurrent cell.", choices=cells.CELL_NAMES)
    hidden: int = field(32, "Hidden units per layer.", check=positive)
    clip_norm: float | None = field(None, "Clip gradients to this global norm (Pascanu et al. "
                                    "2013); unset: no clipping.", check=positive)
    log_every: int = field(100, "Write a metrics.jsonl record every N steps.", check=positive)
    checkpoint_every: int = field(1000, "Save a checkpoint every N steps (0: never; ignored "
                                  "without a workdir).", check=non_negative)
    keep_checkpoints: int = field(3, "Keep the last K checkpoints.", check=positive)
    max_bad_steps: int = field(10, "Stop after this many non-finite (NaN/Inf) steps in a row; "
                               "their updates are skipped.", check=positive)
    progress: bool = field(True, "Show a progress bar.")
    tensorboard: bool = field(True, "Also write TensorBoard event files (<workdir>/tensorboard; "
                              "view with tensorboard --logdir runs).")

    def check(self) -> None:
        """Checks that involve several settings (``validate`` calls it after the field checks)."""
        if self.lr_schedule == "warmup_cosine" and self.warmup_steps >= self.steps:
            raise ConfigError("warmup_steps", self.warmup_steps,
                              f"must be smaller than steps={self.steps}")


Report = Callable[[int, dict[str, Any]], None]


def event_log(config: Any, workdir: str | None) -> tensorboard.EventLog:
    """The run's TensorBoard log (``<workdir>/tensorboard``; a log that writes nothing
    without a workdir, with ``tensorboard=False`` or outside process 0)."""
    return tensorboard.EventLog(workdir, enabled=getattr(config, "tensorboard", False),
                                process_index=jax.process_index())


def loop_kwargs(config: TrainConfig, workdir: str | None, report: Report | None = None,
                on_log: Callable[[dict[str, Any]], None] | None = None,
                events: tensorboard.EventLog | None = None) -> dict[str, Any]:
    """Keyword arguments of ``rnnjax.train.run`` from the common settings.

    Every logged record also goes to TensorBoard (``config.tensorboard``), to ``on_log``
    and to ``report(step, record)``, the callback through which a sweep watches a run
    (it may raise to stop the run, e.g. Optuna's pruning). Without a workdir there is
    nowhere to write checkpoints, so ``checkpoint_every`` is ignored.
    """
    events = events if events is not None else event_log(config, workdir)

    def log(record: dict[str, Any]) -> None:
        events.log(record)
        if on_log is not None:
            on_log(record)
        if report is not None:
            report(record["step"], record)

    return dict(steps=config.steps, log_every=config.log_every,
                checkpoint_every=(config.checkpoint_every or None) if workdir else None,
                keep=config.keep_checkpoints, max_bad_steps=config.max_bad_steps,
                progress=config.progress, on_log=log)


# ----------------------------------------------------------------------------- validation

def _metadata(cls: type) -> dict[str, dict[str, Any]]:
    """Each field's metadata; a field redeclared with a plain default keeps its base's."""
    meta: dict[str, dict[str, Any]] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.metadata or f.name not in meta:
                    meta[f.name] = dict(f.metadata)
    return meta


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _check_type(name: str, value: Any, tp: Any) -> None:
    base, optional = _split_optional(tp)
    if value is None:
        if not optional:
            raise ConfigError(name, value, "a value is required")
        return
    if base is bool:
        ok = isinstance(value, bool)
        accepted = "expected true or false"
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        accepted = "expected an integer"
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        accepted = "expected a number"
    elif base is str:
        ok = isinstance(value, str)
        accepted = "expected a string"
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        ok = isinstance(value, tuple) and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value)
        accepted = f"expected a tuple of {item.__name__}"
    else:
        return
    if not ok:
        raise ConfigError(name, value, accepted)


def validate(config: Any) -> None:
    """Raise :class:`ConfigError` for the first setting of ``config`` that is invalid.

    Checks each field's type, that floats are finite (NaN and Inf are never a
    sensible rate, threshold or temperature), its ``choices`` and ``check``; then the
    config's own ``check()`` for rules that involve several settings.
    """
    hints = _types(type(config))
    for name, meta in _metadata(type(config)).items():
        value = getattr(config, name)
        _check_type(name, value, hints.get(name))
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v) and not (
                    meta.get("allow_inf") and v == math.inf):
                raise ConfigError(name, value, "expected a finite number")
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(name, value, "accepted values are " + ", ".join(meta["choices"]))
        check = meta.get("check")
        if check is not None:
            for v in values:
                accepted = check(v)
                if accepted is not None:
                    if isinstance(value, int) and accepted == "expected a positive number":
                        accepted = "expected a positive integer"
                    if isinstance(value, int) and accepted == "expected a non-negative number":
                        accepted = "expected a non-negative integer"
                    raise ConfigError(name, value, accepted)
    own_check = getattr(config, "check", None)
    if callable(own_check):
        own_check()


# ----------------------------------------------------------------------------- flags

def define_flags(config_cls: type, flag_values: flags.FlagValues = FLAGS) -> None:
    """Define ``--workdir``, ``--compilation_cache`` and one flag per field of ``config_cls``."""
    flags.DEFINE_string("workdir", None, "Directory for metrics.jsonl, checkpoints and side "
                        "files; a rerun with the same workdir resumes from the last checkpoint. "
                        "Unset: run without writing files.", flag_values=flag_values)
    flags.DEFINE_string("compilation_cache", "auto", "Keep compiled XLA programs on disk, so "
                        "the next run with the same shapes loads them instead of compiling: "
                        "'auto' ($RNNJAX_COMPILATION_CACHE, else ~/.cache/rnnjax/xla), a "
                        "directory, or 'none'.", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "Multi-process training: process 0's "
                        "host:port, the same for every process (rnnjax.distributed).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Multi-process training: how many processes "
                         "take part.", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "Multi-process training: this process's index in "
                         "[0, --num_processes).", flag_values=flag_values)
    hints = _types(config_cls)
    for f in dataclasses.fields(config_cls):
        meta = _metadata(config_cls)[f.name]
        base, optional = _split_optional(hints[f.name])
        help_text = meta.get("help") or f.name
        kw = dict(flag_values=flag_values)
        if meta.get("choices") is not None:
            flags.DEFINE_enum(f.name, f.default, list(meta["choices"]), help_text, **kw)
        elif base is bool:
            flags.DEFINE_bool(f.name, f.default, help_text, **kw)
        elif base in (int, float) and optional:  # "--clip_norm=none" gives None back
            parser = _OptionalParser(flags.IntegerParser() if base is int else flags.FloatParser())
            flags.DEFINE(parser, f.name, f.default, help_text + " ('none': unset)",
                         serializer=flags.ArgumentSerializer(), **kw)
        elif base is int:
            flags.DEFINE_integer(f.name, f.default, help_text, **kw)
        elif base is float:
            flags.DEFINE_float(f.name, f.default, help_text, **kw)
        elif typing.get_origin(base) is tuple and meta.get("repeat"):
            flags.DEFINE_multi_string(f.name, list(f.default), help_text, **kw)
        elif typing.get_origin(base) is tuple:
            flags.DEFINE_list(f.name, [str(v) for v in f.default], help_text, **kw)
        else:
            flags.DEFINE_string(f.name, f.default, help_text, **kw)


class _OptionalParser(flags.ArgumentParser):
    """A number flag that also takes ``none`` (the unset value of an optional setting)."""

    def __init__(self, base: flags.ArgumentParser):
        self.base = base

    def parse(self, argument: Any) -> Any:
        if argument is None or (isinstance(argument, str) and argument.strip().lower() == "none"):
            return None
        return self.base.parse(argument)

    def flag_type(self) -> str:
        return self.base.flag_type()


def _flag_message(err: ConfigError, names: Iterable[str]) -> str:
    """The ConfigError's text with every setting named as its flag (``steps=`` -> ``--steps=``)."""
    text = str(err)
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(rf"(?<![-\w]){re.escape(name)}=", f"--{name}=", text)
    return text


def from_flags(config_cls: type, argv: list[str] | None = None,
               flag_values: flags.FlagValues = FLAGS) -> Any:
    """The validated Config that the parsed flags describe; ``app.UsageError`` naming the
    flag otherwise. Also applies the process-wide flags (``--verbosity`` default,
    ``--compilation_cache``). Call first thing in ``main``."""
    if argv is not None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "num_processes" in flag_values:  # before anything (a check counting devices) starts JAX
        join_processes(flag_values)
    hints = _types(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        value = flag_values[f.name].value
        base, _ = _split_optional(hints[f.name])
        if typing.get_origin(base) is tuple and value is not None:
            item = typing.get_args(base)[0]
            try:
                value = tuple(item(v) for v in value)
            except ValueError:
                raise app.UsageError(f"--{f.name}={','.join(value)!r} is invalid: expected a "
                                     f"comma-separated list of {item.__name__}") from None
        values[f.name] = value
    config = config_cls(**values)
    try:
        validate(config)
    except ConfigError as e:
        raise app.UsageError(_flag_message(e, values)) from None
    # Orbax and JAX log every checkpoint and backend probe at INFO; keep the terminal
    # for the progress bar and the results unless --verbosity is given (0: INFO).
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    apply_compilation_cache(flag_values["compilation_cache"].value)
    return config


def join_processes(flag_values: flags.FlagValues = FLAGS) -> None:
    """``jax.distributed.initialize`` when ``--num_processes`` (or ``--coordinator_address``)
    is given, with a one-line error for an incomplete or inconsistent set."""
    address = flag_values["coordinator_address"].value
    count, index = flag_values["num_processes"].value, flag_values["process_id"].value
    if address is None and count is None and index is None:
        return
    if count is not None and count < 1:
        raise app.UsageError(f"--num_processes={count} is invalid: expected a positive integer")
    if count is not None and index is not None and not 0 <= index < count:
        raise app.UsageError(f"--process_id={index} is invalid: expected an index in "
                             f"[0, {count}) (--num_processes={count})")
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise app.UsageError(f"--coordinator_address={address!r} is invalid: expected "
                             "host:port, e.g. localhost:1234")
    try:
        distributed.initialize(address, count, index)
    except (RuntimeError, ValueError) as e:  # JAX's own message: e.g. no cluster detected
        raise app.UsageError(f"--coordinator_address/--num_processes/--process_id: could not "
                             f"join the other processes ({str(e).splitlines()[0]})") from None


def parse_value(config_cls: type, name: str, text: str) -> Any:
    """``text`` as the value of setting ``name`` of ``config_cls`` (for sweeps: ``hidden=16``);
    ConfigError naming it when the setting does not exist or the text is not of its type."""
    hints = _types(config_cls)
    if name not in hints or name not in {f.name for f in dataclasses.fields(config_cls)}:
        raise ConfigError(name, text, f"not a setting of {config_cls.__module__}.Config")
    base, optional = _split_optional(hints[name])
    text = text.strip()
    try:
        if optional and text.lower() == "none":
            return None
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            return tuple(item(v) for v in text.split(",") if v)
        return base(text)
    except ValueError:
        raise ConfigError(name, text, f"expected {getattr(base, '__name__', base)}") from None


def apply_compilation_cache(value: str | None) -> None:
    """Turn the persistent compilation cache on or off as ``--compilation_cache`` says."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        compile_cache.disable()
        return
    try:
        compile_cache.enable(None if value == "auto" else value)
    except ValueError as e:
        raise app.UsageError(f"--compilation_cache={value!r} is invalid: {e} (or 'none')") from None


# Errors that are the user's to fix (a bad setting, a busy or mismatched workdir, a diverged
# run): main prints their one-line message instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, errors.RunError)


class _NoDiskFullTracebacks(std_logging.Filter):
    """Orbax logs a checkpoint save that failed on a full disk with its traceback (from its
    background thread, and asyncio may log the same error of a future nobody awaited)
    before or after rnnjax turns the failure into a one-line DiskFullError; the command
    shows only that line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not any(s in text for s in ("No space left on device", "RESOURCE_EXHAUSTED"))


def _quiet_closed_loops(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """``hook`` without the "Event loop is closed" that orbax's background threads leave
    when a failed save closed their event loop first (printed as a bare traceback)."""
    def quiet(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
            hook(unraisable)
    quiet.quiet_closed_loops = True
    return quiet


def call(run: Callable[..., Any], config: Any, workdir: str | None = None,
         flag_values: flags.FlagValues = FLAGS) -> Any:
    """``run(config, workdir)`` (workdir from ``--workdir`` by default), with the errors a
    user can fix printed as one line on stderr and exit status 1 instead of a traceback."""
    if workdir is None and "workdir" in flag_values:
        workdir = flag_values["workdir"].value
    for name in ("absl", "asyncio"):  # orbax's save thread; its never-retrieved futures
        logger = std_logging.getLogger(name)
        if not any(isinstance(f, _NoDiskFullTracebacks) for f in logger.filters):
            logger.addFilter(_NoDiskFullTracebacks())
    if not getattr(sys.unraisablehook, "quiet_closed_loops", False):
        sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
    try:
        return run(config, workdir)
    except ConfigError as e:
        sys.exit(f"error: {_flag_message(e, [f.name for f in dataclasses.fields(config)])}")
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


def as_dict(config: Any) -> dict[str, Any]:
    """The settings as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}


# ----------------------------------------------------------------------------- workdir

# Settings that may change when a run resumes: they do not shape the model, the optimizer
# state or the data order (a Config extends the set with a ``RESUMABLE`` class attribute).
RESUMABLE = frozenset({
    "steps", "max_minutes", "progress", "log_every", "eval_every", "checkpoint_every",
    "keep_checkpoints", "max_bad_steps", "sample_only", "sample_length", "temperature",
    "top_k", "prime", "eval_test", "format",
})


@contextlib.contextmanager
def workdir_session(workdir: str | None, config: Any):
    """Prepare ``workdir`` for a run of ``config``, before any work: create it, prove it
    writable, take its lock (a second run on it stops with an error naming the holder),
    refuse a rerun whose saved ``config.json`` differs in a setting that shapes the run
    (listing each one, saved vs given; nothing is written), then save the config. In a
    multi-process run only process 0 does this (the others write only their checkpoint
    shards)."""
    if not workdir or jax.process_index() != 0:  # in a multi-process run process 0 holds it
        yield
        return
    check_workdir(workdir)
    with workdir_lib.lock(workdir):
        workdir_lib.check_config(workdir, as_dict(config), ignore=RESUMABLE | frozenset(
            getattr(config, "RESUMABLE", ())))
        workdir_lib.save_config(workdir, as_dict(config))
        yield


def check_output_file(name: str, path: str | None) -> None:
    """ConfigError naming setting ``name`` unless ``path`` is a file that can be written
    (checked before any work; nothing is created). None passes."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ConfigError(name, path, "expected a file name, not a directory")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(name, path, f"expected a file that can be written ({probe!r} is not "
                          "a writable directory)")


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (a results file shared by runs).

    One ``write`` in append mode, so runs appending to the same file do not interleave;
    after a line cut short (a run killed while writing) the record starts a new line.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab+") as f:
        cut = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        f.write((("\n" if cut else "") + json.dumps(record) + "\n").encode())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a results file written by :func:`append_jsonl` ([] if none).

    A line that is not a JSON object (cut short by a killed run) is skipped with a
    warning naming the file and line (:func:`rnnjax.metrics.read_jsonl`).
    """
    return metrics.read_jsonl(path) if os.path.exists(path) else []


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` if needed and prove it is writable, or raise ConfigError."""
    try:
        os.makedirs(workdir, exist_ok=True)
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied")
    except OSError as e:
        raise ConfigError("workdir", workdir, "it must be a writable directory "
                          f"({e.strerror or e})") from None

