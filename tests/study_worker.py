"""A worker of a test study (tests/test_study.py): a quadratic objective in 'x' reported
over 'steps' steps, optionally sleeping so that a test can kill it mid-trial.

    python tests/study_worker.py JOURNAL N_TRIALS SLEEP_SECONDS LOG
"""

import os
import sys
import time

from rnnjax import study


def main(journal: str, n_trials: int, sleep: float, log: str) -> None:
    s = study.load("test", journal, direction="minimize", pruner="median", seed=os.getpid())
    space = study.parse_space("x=float:-10:10,depth=int:1:4")

    def objective(trial):
        point = study.suggest(trial, space)
        with open(log, "a") as f:
            f.write(f"{trial.number} {os.getpid()} {trial.user_attrs.get('retry_of', '')}\n")
        for step in range(5):
            value = (point["x"] - 3.0) ** 2 + 100.0 * (point["x"] < 0) + 1.0 / (step + 1)
            trial.report(value, step)
            if trial.should_prune():
                import optuna
                raise optuna.TrialPruned()
            time.sleep(sleep)
        return (point["x"] - 3.0) ** 2 + 100.0 * (point["x"] < 0)

    study.optimize(s, objective, n_trials)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
