"""Train a cell on a long-term-dependency problem, with remedies, and diagnose its gradients.

Trains one network (a cell unrolled over the inputs, a linear readout at every
step; the task's mask scores only the steps that matter) on one problem of
:mod:`rnnjax.data.synthetic` at one length T, until it is solved (under 1% of
10,000 fresh sequences wrong, Pascanu et al. 2013), or ``--steps`` updates, or
``--max_minutes`` of training time. Every ``--eval_every`` steps it records the
error rate on ``--eval_sequences`` fresh sequences and ‖∂L/∂h_t‖ for every t on a
fixed diagnostic batch, into ``metrics.jsonl`` (with the per-parameter gradient
norms of every step). At the end it writes, beside ``metrics.jsonl`` in
``--workdir``:

* ``diagnosis.json``: the verdict (vanishing / exploding / healthy, rate per step,
  effective horizon) at the start and at the end, the spectral radius of W_hh,
  the largest Lyapunov exponent, and the outcome;
* ``gradient_vs_lag.png``: ‖∂L/∂h_{T-k}‖ against the lag k at several training steps;
* ``gradient_heatmap.png``: the per-step norms across training;
* ``parameter_gradient_norms.png``: each parameter's gradient norm across training
  (first-order optimizers).

Remedies are flags: ``--clip_norm=θ`` (clipping by global norm), ``--nan_repair``
(Pascanu et al.'s NaN/Inf repair), ``--cell=irnn`` (ReLU + identity init),
``--cell=lstm|gru``, ``--recurrent_init=orthogonal|identity|glorot|normal``,
``--spectral_radius=ρ``; ``--optimizer=hf`` trains with Hessian-free (Martens &
Sutskever 2011; ``--cg_iters``, ``--hf_lambda``, ``--hf_mu``, ``--curvature_batch_size``),
so the networks it finds get the same diagnosis.

    python -m experiments.long_memory --task=addition --seq_len=50 --cell=lstm \
        --hidden=64 --batch_size=64 --learning_rate=1e-2 --steps=2000 --workdir=/tmp/lm
    python -m experiments.long_memory --task=temporal_order --seq_len=20 --cell=tanh \
        --clip_norm=1 --nan_repair --optimizer=sgd --learning_rate=0.01 --workdir=/tmp/lm2
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import flags as common
from experiments import hf_flags
from rnnjax import cells, diagnostics, optimizers, recurrence, remedies, train
from rnnjax.data import synthetic
from rnnjax.optim import hessian_free

FLAGS = flags.FLAGS

RECURRENT_INITS = ("default", "orthogonal", "identity", "glorot", "normal")

common.define("string", "task", "addition", "One of: " + ", ".join(synthetic.LONG_MEMORY_TASKS) + ".")
common.define("integer", "seq_len", 20, "Sequence length T.")
common.define("integer", "eval_every", 50, "Check the error rate and the gradient flow every N updates.")
common.define("integer", "eval_sequences", 1000, "Fresh sequences in the periodic check.")
common.define("float", "max_minutes", 5.0, "Stop after this much training wall time (minutes).")
common.define("string", "results", None, "Append the outcome as one JSON line to this file.")
common.define("string", "recurrent_init", "default",
              "Initialiser of W_hh: " + ", ".join(RECURRENT_INITS) + " (default: the cell's own, "
              "orthogonal; identity for irnn).")
common.define("float", "spectral_radius", None, "Rescale W_hh (each gate block) to this spectral radius.")
common.define("bool", "nan_repair", False, "Pascanu et al.'s repair of NaN/Inf gradients (W_hh shrinks) "
              "instead of skipping the step.")
common.define("integer", "diagnostic_batch", 32, "Sequences in the fixed batch for ∂L/∂h_t.")
common.define("bool", "plots", True, "Write the diagnosis plots into --workdir at the end.")


def build_model(cell: cells.Cell, task: synthetic.Task, key: jax.Array):
    """Params and ``net(params, inputs [T, B, D]) -> (outputs [T, B, O], hs [T, B, H])``."""
    k_cell, k_out = jax.random.split(key)
    H = cell.hidden_size
    params = {"cell": cell.init(k_cell, task.input_size),
              "W_o": jax.random.normal(k_out, (H, task.output_size)) / np.sqrt(H),
              "b_o": jnp.zeros((task.output_size,))}

    def readout(p, hs):
        return hs @ p["W_o"] + p["b_o"]

    def net(p, inputs):
        _, hs = recurrence.unroll(cell, p["cell"], inputs)
        return readout(p, hs), hs

    return params, net, readout


def hf_state_and_step(net, task: synthetic.Task, params) -> tuple[train.TrainState, Any]:
    """TrainState and step of ``--optimizer=hf`` for ``net(params, batch) -> (outputs
    [T, B, O], hiddens [T, B, H])``: squared error for regression tasks, softmax
    cross-entropy otherwise; the hiddens are what ``--hf_mu`` damps."""
    output_loss = (hessian_free.squared_error() if task.kind == "regression"
                   else hessian_free.softmax_cross_entropy())
    opt = hf_flags.make_hf(net, output_loss, net_returns_hidden=True, example_axes=1)
    state = train.init_state(params, None, opt_state=opt.init(params), seed=FLAGS.seed)
    return state, hessian_free.make_train_step(
        opt, curvature_batch_size=FLAGS.curvature_batch_size, example_axes=1)


def make_cell() -> cells.Cell:
    kwargs: dict[str, Any] = {}
    if FLAGS.recurrent_init != "default":
        kwargs["recurrent_init"] = FLAGS.recurrent_init
    if FLAGS.spectral_radius is not None:
        kwargs["spectral_radius"] = FLAGS.spectral_radius
    if FLAGS.cell == "mrnn" and kwargs:
        raise app.UsageError("--recurrent_init/--spectral_radius do not apply to --cell=mrnn "
                             "(it has no W_hh)")
    return cells.by_name(FLAGS.cell, FLAGS.hidden, **kwargs)


def validate() -> dict[str, Any]:
    cfg = common.validate(optimizers_allowed=optimizers.OPTIMIZERS + ("hf",))
    cfg.update(hf_flags.validate())
    if FLAGS.optimizer == "hf" and (FLAGS.nan_repair or FLAGS.clip_norm is not None):
        raise app.UsageError("--nan_repair and --clip_norm are first-order remedies: leave them "
                             "unset with --optimizer=hf (its damping and line search bound the step)")
    common.check_choice("task", FLAGS.task, synthetic.LONG_MEMORY_TASKS)
    common.check_choice("recurrent_init", FLAGS.recurrent_init, RECURRENT_INITS)
    for name in ("eval_every", "eval_sequences", "diagnostic_batch"):
        common.check_positive_int(name, FLAGS[name].value)
    task = synthetic.get(FLAGS.task)
    if not isinstance(FLAGS.seq_len, int) or FLAGS.seq_len < task.min_seq_len:
        raise app.UsageError(f"--seq_len={FLAGS.seq_len} is invalid: task {task.name} needs "
                             f"an integer >= {task.min_seq_len}.")
    if FLAGS.spectral_radius is not None and not FLAGS.spectral_radius > 0:
        raise app.UsageError(f"--spectral_radius={FLAGS.spectral_radius} is invalid: expected a "
                             "positive number (or leave it unset).")
    if not FLAGS.max_minutes > 0:
        raise app.UsageError(f"--max_minutes={FLAGS.max_minutes} is invalid: expected a "
                             "positive number.")
    cfg.update(task=FLAGS.task, seq_len=FLAGS.seq_len, recurrent_init=FLAGS.recurrent_init,
               spectral_radius=FLAGS.spectral_radius, nan_repair=FLAGS.nan_repair,
               eval_every=FLAGS.eval_every, max_minutes=FLAGS.max_minutes)
    return cfg


def make_hidden_norms(cell, readout, task):
    """A jitted ``(params, batch) -> ‖∂L/∂h_t‖ [T]`` of the task's loss."""
    def norms(params, batch):
        return diagnostics.hidden_gradient_norms(
            cell, params["cell"], batch.inputs, lambda hs: task.loss(readout(params, hs), batch))
    return jax.jit(norms)


def gradient_report(cell, params, hidden_norms, batch) -> dict[str, Any]:
    """Verdict, spectral radius and Lyapunov exponent of ``params`` on ``batch``."""
    v = diagnostics.verdict(np.asarray(hidden_norms(params, batch)))
    js = diagnostics.state_jacobians(cell, params["cell"], batch.inputs)
    report = {"verdict": v.kind, "rate_per_step": v.rate_per_step, "horizon": v.horizon,
              "span": v.span, "summary": str(v),
              "lyapunov_exponent": float(diagnostics.lyapunov_exponents(js, num=1)[0])}
    try:
        report["spectral_radius"] = diagnostics.recurrent_spectral_radius(params["cell"])
    except ValueError:
        report["spectral_radius"] = None
    return report


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def main(argv) -> None:
    del argv
    run_from_flags()


def run_from_flags() -> dict[str, Any]:
    """Run one experiment as the flags say; returns the outcome (also in diagnosis.json)."""
    cfg = validate()
    task = synthetic.get(FLAGS.task)
    workdir = FLAGS.workdir
    if workdir is not None:
        common.save_config(workdir, cfg)

    key = jax.random.key(FLAGS.seed)
    cell = make_cell()
    params, net, readout = build_model(cell, task, jax.random.fold_in(key, 0))
    data_key = jax.random.fold_in(key, 1)
    eval_key = jax.random.fold_in(key, 2)          # never used for training data
    T, B = FLAGS.seq_len, FLAGS.batch_size
    diag_batch = task.generate(jax.random.fold_in(key, 3), FLAGS.diagnostic_batch, T)

    def batch_fn(step: int) -> synthetic.Batch:
        return task.generate(jax.random.fold_in(data_key, step), B, T)

    def loss_fn(p, batch, k):
        return task.loss(net(p, batch.inputs)[0], batch)

    if FLAGS.optimizer == "hf":
        state, step_fn = hf_state_and_step(lambda p, b: net(p, b.inputs), task, params)
    else:
        optimizer = common.make_optimizer()
        state = train.init_state(params, optimizer, seed=FLAGS.seed)
        step_fn = remedies.make_train_step(loss_fn, optimizer, clip_norm=FLAGS.clip_norm,
                                           nan_repair=FLAGS.nan_repair)
    t0 = time.perf_counter()
    step_fn = jax.jit(step_fn).lower(state, batch_fn(0)).compile()  # compile time kept apart
    compile_seconds = time.perf_counter() - t0
    predict = jax.jit(lambda p, xs: net(p, xs)[0])

    eval_batch = min(FLAGS.eval_sequences, 1000)  # one shape for every check: one compile

    def error_rate(p, n: int) -> float:
        return synthetic.evaluate(task, lambda xs: predict(p, xs), eval_key, T,
                                  num_sequences=n, batch_size=eval_batch)

    hidden_norms = make_hidden_norms(cell, readout, task)
    start_report = gradient_report(cell, state.params, hidden_norms, diag_batch)
    print(f"at the start: {start_report['summary']}", flush=True)
    snapshots = {0: np.asarray(hidden_norms(state.params, diag_batch))}
    last_check: dict[str, float] = {"eval_seconds": 0.0}

    def eval_fn(s: train.TrainState) -> dict[str, Any]:
        t = time.perf_counter()
        rate = error_rate(s.params, FLAGS.eval_sequences)
        norms = np.asarray(hidden_norms(s.params, diag_batch))
        snapshots[int(s.step)] = norms
        last_check["error_rate"] = rate
        last_check["eval_seconds"] += time.perf_counter() - t
        return {"error_rate": rate, "hidden_grad_norms": norms}

    train_time, solved, rate = 0.0, False, float("nan")
    history: list[dict[str, Any]] = []
    while int(state.step) < FLAGS.steps and train_time < 60 * FLAGS.max_minutes:
        target = min(int(state.step) + FLAGS.eval_every, FLAGS.steps)
        t0, e0 = time.perf_counter(), last_check["eval_seconds"]
        # eval_fn runs at the end of each chunk; its time is excluded below.
        state, hist = train.run(workdir, state, step_fn, batch_fn, steps=target,
                                log_every=FLAGS.eval_every, eval_fn=eval_fn,
                                eval_every=FLAGS.eval_every, max_bad_steps=FLAGS.max_bad_steps,
                                progress=False, jit=False)
        train_time += (time.perf_counter() - t0) - (last_check["eval_seconds"] - e0)
        history = hist
        rate = last_check["error_rate"]
        rec = hist[-1]
        print(f"step {int(state.step):6d}  loss {rec['loss']:.4g}  wrong {rate:.4f}  "
              f"|g| {rec['grad_norm']:.3g}  train {train_time:.0f}s", flush=True)
        if synthetic.solved(rate):
            rate = error_rate(state.params, synthetic.NUM_TEST_SEQUENCES)
            solved = synthetic.solved(rate)
            print(f"  on {synthetic.NUM_TEST_SEQUENCES} sequences: wrong {rate:.4f}", flush=True)
            if solved:
                break

    end_report = gradient_report(cell, state.params, hidden_norms, diag_batch)
    print(f"at the end: {end_report['summary']}", flush=True)
    outcome = dict(cfg, cell_name=cell.name, solved=solved, error_rate=rate,
                   updates=int(state.step), train_seconds=round(train_time, 1),
                   compile_seconds=round(compile_seconds, 1),
                   final_loss=_finite_or_none(float(history[-1]["loss"])) if history else None,
                   repaired_steps=_repaired_steps(history),
                   start=start_report, end=end_report)
    if FLAGS.optimizer == "hf":
        hs = state.opt_state
        outcome.update(grad_evals=int(hs.grad_evals), curvature_products=int(hs.curvature_products),
                       final_damping=float(hs.damping))
    if workdir is not None:
        if FLAGS.plots:
            write_plots(workdir, snapshots, task, cell)
        with open(os.path.join(workdir, "diagnosis.json"), "w") as f:
            json.dump(outcome, f, indent=1)
    print(json.dumps({k: v for k, v in outcome.items() if k not in ("start", "end")}))
    if FLAGS.results:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results)), exist_ok=True)
        with open(FLAGS.results, "a") as f:
            f.write(json.dumps(outcome) + "\n")
    return outcome


def _repaired_steps(history: list[dict[str, Any]]) -> int:
    """Steps the NaN/Inf repair changed: each record holds the mean since the previous one."""
    total, prev = 0.0, 0
    for r in history:
        total += float(r.get("repaired", 0.0)) * (r["step"] - prev)
        prev = r["step"]
    return int(round(total))


def write_plots(workdir: str, snapshots: dict[int, np.ndarray], task, cell) -> None:
    steps = sorted(snapshots)
    title = f"{cell.name} on {task.name}, T={FLAGS.seq_len}"
    picks = sorted(set(steps[i] for i in np.linspace(0, len(steps) - 1, min(5, len(steps)))
                       .round().astype(int)))
    diagnostics.plot_gradient_vs_lag({f"step {s}": snapshots[s] for s in picks},
                                     os.path.join(workdir, "gradient_vs_lag.png"), title=title)
    diagnostics.plot_gradient_heatmap(steps, np.stack([snapshots[s] for s in steps]),
                                      os.path.join(workdir, "gradient_heatmap.png"), title=title)
    if FLAGS.optimizer == "hf":
        return  # the HF step does not log per-parameter gradient norms
    p_steps, p_norms = diagnostics.parameter_gradient_norms(workdir)
    diagnostics.plot_parameter_gradient_norms(
        p_steps, p_norms, os.path.join(workdir, "parameter_gradient_norms.png"), title=title)


if __name__ == "__main__":
    app.run(main)
