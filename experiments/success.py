"""The success check of the long-memory experiments (``long_memory``, ``hf_long_memory``).

At each ``--eval_every`` boundary (and at the last step) :meth:`Check.stop_fn` scores
the network on ``--eval_sequences`` fresh sequences; when that passes the success
rule it scores 10,000 more (Pascanu et al. 2013's test). The training loop asks
``stop_fn`` before it logs a step, so a solved problem or the ``--max_minutes`` cap
stops the run at that step; ``eval_fn`` then logs what the check measured and
``on_log`` prints one line per check. Training time excludes the checks.

    check = success.Check(config, error_rate)
    train.run(workdir, state, step_fn, batch_fn, eval_fn=check.eval_fn,
              stop_fn=check.stop_fn, on_log=check.on_log, ...)
    check.result["solved"], check.result["rate"], check.result["train_seconds"]
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rnnjax import train
from rnnjax.data import synthetic

Params = Any


def number(x: Any) -> float:
    """A logged value as a float: non-finite values are logged as strings ("nan", "inf")."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


class Check:
    """``stop_fn``, ``eval_fn`` and ``on_log`` for :func:`rnnjax.train.run`.

    config: has ``eval_every``, ``steps``, ``eval_sequences``, ``max_minutes`` and
      ``optimizer``. error_rate: ``(params, n) -> fraction of n fresh sequences wrong``.
    measure: ``params -> dict`` of more values to log at each check (e.g. the hidden
      states' gradient norms), logged as ``eval_<name>``.
    """

    def __init__(self, config: Any, error_rate: Callable[[Params, int], float],
                 measure: Callable[[Params], dict[str, Any]] | None = None):
        self.config, self.error_rate, self.measure = config, error_rate, measure
        self.start, self.eval_seconds = time.perf_counter(), 0.0
        self.result: dict[str, Any] = {"solved": False, "rate": float("nan"),
                                       "train_seconds": 0.0}
        self._measured: dict[str, Any] = {}

    def stop_fn(self, s: train.TrainState) -> bool:
        step, config, result = int(s.step), self.config, self.result
        if step % config.eval_every and step != config.steps:
            return False
        t = time.perf_counter()
        result.update(step=step, train_seconds=t - self.start - self.eval_seconds)
        result["rate"] = result["periodic_rate"] = self.error_rate(s.params, config.eval_sequences)
        self._measured = self.measure(s.params) if self.measure is not None else {}
        if synthetic.solved(result["rate"]):
            result["rate"] = self.error_rate(s.params, synthetic.NUM_TEST_SEQUENCES)
            result.update(solved=synthetic.solved(result["rate"]), full_test=True)
        self.eval_seconds += time.perf_counter() - t
        return result["solved"] or result["train_seconds"] >= 60 * config.max_minutes

    def eval_fn(self, s: train.TrainState) -> dict[str, Any]:
        if self.result.get("step") != int(s.step):
            self.stop_fn(s)  # the loop's last step when it is not a boundary
        return {"error_rate": self.result["periodic_rate"], **self._measured}

    def on_log(self, rec: dict[str, Any]) -> None:
        if "eval_error_rate" not in rec:
            return
        extra = (f"lambda {number(rec.get('damping')):.3g} rho {number(rec.get('rho')):.2f} "
                 f"cg {number(rec.get('cg_iters')):.0f} rate {number(rec.get('step_rate')):.2f}"
                 if self.config.optimizer == "hf" else f"|g| {number(rec.get('grad_norm')):.3g}")
        print(f"step {rec['step']:6d}  loss {number(rec['loss']):.4g}  wrong "
              f"{number(rec['eval_error_rate']):.4f}  {extra}  "
              f"train {self.result['train_seconds']:.0f}s", flush=True)
        if self.result.pop("full_test", False):
            print(f"  on {synthetic.NUM_TEST_SEQUENCES} sequences: wrong "
                  f"{self.result['rate']:.4f}", flush=True)

    def finish(self, state: train.TrainState) -> None:
        """Measure a rerun of a finished run (the loop trained nothing, so never checked)."""
        if "step" not in self.result:
            self.stop_fn(state._replace(step=self.config.steps))
