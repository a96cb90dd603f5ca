"""Optuna studies shared by worker processes (rnnjax.study)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from rnnjax import study  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "study_worker.py")


def _worker(journal, n_trials, sleep, log):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, WORKER, str(journal), str(n_trials), str(sleep),
                             str(log)], env=env)


def _trials(journal):
    return study.load("test", str(journal)).get_trials(deepcopy=False)


@pytest.mark.parametrize("text, fragment", [
    ("lr=log:0:1", "LOW > 0"), ("lr=uniform:0:1", "expected NAME="), ("h=int:1.5:4", "integer"),
    ("c=cat:", "expected NAME="), ("lr=log:1e-3:1e-1,lr=log:1e-3:1e-2", "twice"),
    ("", "declares no parameter"), ("x=float:2:1", "LOW < HIGH"), ("x=float:a:b", "two numbers"),
])
def test_parse_space_rejects_bad_items(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        study.parse_space(text)


def test_parse_space_kinds():
    space = study.parse_space("learning_rate=log:1e-4:1e-1,hidden=int:32:512,cell=cat:tanh|lstm|gru")
    assert space["learning_rate"].kind == "log" and space["learning_rate"].low == 1e-4
    assert space["hidden"].kind == "int" and space["hidden"].high == 512
    assert space["cell"].choices == ("tanh", "lstm", "gru")
    trial = optuna.trial.FixedTrial({"learning_rate": 1e-2, "hidden": 64, "cell": "gru"})
    assert study.suggest(trial, space) == {"learning_rate": 1e-2, "hidden": 64, "cell": "gru"}


def test_two_workers_share_a_journal_and_prune(tmp_path):
    journal, log = tmp_path / "study.journal", tmp_path / "log.txt"
    procs = [_worker(journal, 8, 0.0, log) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    trials = _trials(journal)
    state = optuna.trial.TrialState
    finished = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
    assert len(finished) >= 8 and all(t.state != state.RUNNING for t in trials)
    numbers = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert len(numbers) == len(set(numbers))          # no trial ran twice
    assert len({line.split()[1] for line in log.read_text().splitlines()}) == 2  # both worked
    best = study.load("test", str(journal)).best_trial
    assert best.value == min(t.value for t in trials if t.state == state.COMPLETE)


def test_a_killed_worker_leaves_its_trial_retried(tmp_path):
    journal, log = tmp_path / "study.journal", tmp_path / "log.txt"
    victim = _worker(journal, 3, 2.0, log)   # slow trials: killed inside the first one
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = optuna.trial.TrialState
    assert [t.state for t in _trials(journal)] == [state.RUNNING]   # left behind
    assert _worker(journal, 3, 0.0, log).wait(timeout=240) == 0      # the command rerun
    trials = _trials(journal)
    assert trials[0].state == state.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    assert retries[0].state in (state.COMPLETE, state.PRUNED)
    done = [t for t in trials if t.state in (state.COMPLETE, state.PRUNED)]
    assert len(done) == 3


def test_plots_and_table(tmp_path):
    s = study.load("plots", str(tmp_path / "j.journal"), pruner="none", seed=0)
    s.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2 + t.suggest_int("n", 1, 3),
               n_trials=6)
    rows = study.trials_table(s)
    assert len(rows) == 6 and {"number", "state", "value", "x", "n"} <= set(rows[0])
    paths = study.plot(s, str(tmp_path / "png"))
    assert {os.path.basename(p) for p in paths} >= {"study_history.png", "study_importance.png"}
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_the_median_pruner_stops_a_trial_in_a_hopeless_region(tmp_path):
    s = study.load("prune", str(tmp_path / "j.journal"), pruner="median", seed=0)
    for x in (3.0, 2.5, 3.5, -5.0):           # three good points, then a hopeless one
        s.enqueue_trial({"x": x})

    def objective(trial):
        x = trial.suggest_float("x", -10, 10)
        for step in range(4):
            trial.report((x - 3.0) ** 2 + 100.0 * (x < 0), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return (x - 3.0) ** 2 + 100.0 * (x < 0)

    study.optimize(s, objective, 4)
    states = {t.params["x"]: t.state for t in s.get_trials(deepcopy=False)}
    assert states[-5.0] == optuna.trial.TrialState.PRUNED
    assert states[3.0] == optuna.trial.TrialState.COMPLETE
