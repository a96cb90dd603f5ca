"""Hyperparameter studies with Optuna: search spaces, shared storages, pruning, recovery.

A study lives in a storage that many worker processes share: a journal file
(``JournalStorage``; processes on one machine or on a shared filesystem, no
server) or a database URL (``sqlite:///study.db``, ``postgresql://host/db``; many
machines). Each worker asks the study for a point of the search space, trains,
reports its validation metric as it goes (so a pruner can stop a hopeless trial)
and returns the objective. A worker that is killed mid-trial leaves a RUNNING
trial behind; the next worker to start marks it failed and enqueues a retry with
the same parameters (and the same trial workdir, so the retry resumes from its
checkpoint). Optuna is an optional dependency (``pip install rnnjax[sweep]``).

    space = study.parse_space("learning_rate=log:1e-4:1e-1,hidden=int:32:512,cell=cat:tanh|lstm")
    s = study.load("demo", "runs/study.journal", direction="minimize", pruner="median")
    study.optimize(s, objective, n_trials=20)      # objective(trial) -> float
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
from typing import Any, Callable

KINDS = ("float", "log", "int", "logint", "cat")
PRUNERS = ("median", "asha", "none")
HEARTBEAT_SECONDS = 20.0   # a RUNNING trial whose heartbeat is older than GRACE is dead
GRACE_SECONDS = 90.0
MAX_RETRIES = 3


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("studies need Optuna: pip install 'rnnjax[sweep]' (optuna>=4)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclasses.dataclass(frozen=True)
class Param:
    """One axis of a search space: ``kind`` in KINDS, bounds or categorical ``choices``."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def parse_space(text: str) -> dict[str, Param]:
    """Parse ``NAME=KIND:ARGS,...`` into Params, or raise ValueError naming the item.

    Kinds: ``float:LOW:HIGH`` (uniform), ``log:LOW:HIGH`` (log-uniform float),
    ``int:LOW:HIGH``, ``logint:LOW:HIGH``, ``cat:A|B|C`` (strings; the experiment's
    Config converts them).
    """
    space: dict[str, Param] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, spec = item.partition("=")
        kind, _, args = spec.partition(":")
        name, kind = name.strip(), kind.strip()
        form = "NAME=float|log|int|logint:LOW:HIGH or NAME=cat:A|B"
        if not name or kind not in KINDS or not args:
            raise ValueError(f"{item!r} is not a search-space item: expected {form}")
        if name in space:
            raise ValueError(f"{name!r} is given twice in the search space")
        if kind == "cat":
            choices = tuple(c.strip() for c in args.split("|") if c.strip())
            if not choices:
                raise ValueError(f"{item!r}: expected at least one choice, e.g. {name}=cat:a|b")
            space[name] = Param(name, kind, choices=choices)
            continue
        try:
            low, high = (float(v) for v in args.split(":"))
        except ValueError:
            raise ValueError(f"{item!r}: expected two numbers LOW:HIGH, e.g. {name}={kind}:1:10") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{item!r}: expected finite LOW < HIGH")
        if kind in ("log", "logint") and low <= 0:
            raise ValueError(f"{item!r}: a log scale needs LOW > 0")
        if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
            raise ValueError(f"{item!r}: integer bounds expected")
        space[name] = Param(name, kind, low, high)
    if not space:
        raise ValueError(f"{text!r} declares no parameter: expected e.g. learning_rate=log:1e-4:1e-1")
    return space


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's point of ``space`` (floats, ints or category strings)."""
    point: dict[str, Any] = {}
    for p in space.values():
        if p.kind == "cat":
            point[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind in ("int", "logint"):
            point[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.kind == "logint")
        else:
            point[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "log")
    return point


def storage(spec: str) -> Any:
    """An Optuna storage: a database URL (``sqlite:///...``, ``postgresql://...``, with
    heartbeats and retries of dead workers' trials) or a journal file path."""
    optuna = _optuna()
    if "://" in spec:
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
            optuna.storages.RetryFailedTrialCallback
        return optuna.storages.RDBStorage(
            spec, heartbeat_interval=int(HEARTBEAT_SECONDS), grace_period=int(GRACE_SECONDS),
            failed_trial_callback=retry(max_retry=MAX_RETRIES))
    os.makedirs(os.path.dirname(os.path.abspath(spec)), exist_ok=True)
    journal = optuna.storages.journal
    return optuna.storages.JournalStorage(journal.JournalFileBackend(spec))


def make_pruner(name: str) -> Any:
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner {name!r} is invalid: accepted: {', '.join(PRUNERS)}")


def load(name: str, storage_spec: str, *, direction: str = "minimize", pruner: str = "median",
         seed: int | None = None) -> Any:
    """Create the study, or join it when it exists (the same command on many workers)."""
    optuna = _optuna()
    return optuna.create_study(
        study_name=name, storage=storage(storage_spec), direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(pruner),
        load_if_exists=True)


# ----------------------------------------------------------------------------- dead workers

def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead(attrs: dict[str, Any], now: float) -> bool:
    host, _, pid = str(attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return now - float(attrs.get("heartbeat", now)) > GRACE_SECONDS


def recover_dead_trials(study: Any) -> list[int]:
    """Mark RUNNING trials of dead workers failed and enqueue each once more (same
    parameters and user attributes, so it reuses its workdir); returns their numbers.
    Database storages do this with Optuna's own heartbeat; journal files through
    the ``worker``/``heartbeat`` attributes :class:`Heartbeat` writes."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if "worker" not in t.user_attrs or not _is_dead(t.user_attrs, now):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=state.FAIL)
        except Exception:  # another worker marked it first (the state is no longer RUNNING)
            continue
        retries = int(t.user_attrs.get("retries", 0))
        if retries < MAX_RETRIES:
            attrs = {k: v for k, v in t.user_attrs.items() if k not in ("worker", "heartbeat")}
            study.enqueue_trial(t.params, user_attrs={**attrs, "retries": retries + 1,
                                                      "retry_of": t.number})
        recovered.append(t.number)
    return recovered


class Heartbeat:
    """While a trial runs: its ``worker`` (host:pid) and a ``heartbeat`` time every
    HEARTBEAT_SECONDS, so other workers can tell a live trial from a killed one."""

    def __init__(self, trial: Any):
        self.trial, self._stop = trial, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> "Heartbeat":
        self.trial.set_user_attr("worker", _worker_id())
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def optimize(study: Any, objective: Callable[[Any], float], n_trials: int) -> None:
    """Run trials in this process until the study holds ``n_trials`` finished ones
    (complete, pruned or failed), counting every worker's; failed trials of killed
    workers are retried first."""
    optuna = _optuna()
    state = optuna.trial.TrialState

    def wrapped(trial: Any) -> float:
        with Heartbeat(trial):
            return objective(trial)

    while True:
        recover_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        done = sum(t.state in (state.COMPLETE, state.PRUNED, state.FAIL)
                   and t.number not in retried for t in trials)
        running = sum(t.state == state.RUNNING for t in trials)
        waiting = any(t.state == state.WAITING for t in trials)
        if not waiting and done + running >= n_trials:  # the rest is other workers' to finish
            return
        study.optimize(wrapped, n_trials=1, catch=(Exception,), gc_after_trial=True)


# ----------------------------------------------------------------------------- results

def trials_table(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, parameters, duration in seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **t.params, "seconds": seconds})
    return rows


def plot(study: Any, outdir: str) -> list[str]:
    """PNGs: optimisation history, parameter importances (with two or more complete
    trials and parameters that vary), and the objective against each parameter."""
    optuna = _optuna()
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    plots = {"history": lambda: vis.plot_optimization_history(study),
             "slice": lambda: vis.plot_slice(study)}
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 1:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        plots["importance"] = lambda: vis.plot_param_importances(study, evaluator=evaluator)
    paths = []
    os.makedirs(outdir, exist_ok=True)
    for name, make in plots.items():
        try:
            ax = make()
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varies
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        path = os.path.join(outdir, f"study_{name}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
