"""Long-term-dependency problems: Hessian-free against first-order optimizers.

Trains one network on one problem of :mod:`rnnjax.data.synthetic` until it is
solved (under 1% of 10,000 fresh sequences wrong, Pascanu et al. 2013), or until
``--steps`` updates or ``--max_minutes`` of training time, and prints (and with
``--results`` appends as a JSON line) the outcome: solved or not, error rate,
updates, gradient evaluations, Gauss–Newton products, training wall time.

    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --hidden=50 --optimizer=hf --batch_size=1000 --curvature_batch_size=200 --cg_iters=100
    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --hidden=50 --optimizer=adam --learning_rate=1e-3 --batch_size=100
    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --optimizer=sgd --learning_rate=0.01 --clip_norm=1

The model is the cell unrolled over the inputs with a linear readout at every
step (outputs [T, B, O]); the task's mask scores only the steps that matter.
With ``--optimizer=hf`` the readout is the network output of the Gauss–Newton
split (squared error for regression tasks, softmax cross-entropy otherwise) and
the hidden states [T, B, H] are what structural damping (``--hf_mu``) penalises.
Training time excludes the periodic evaluations (``--eval_every`` updates, on
``--eval_sequences`` fresh sequences; the full 10,000-sequence test runs only
when that check passes).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from experiments import flags as common
from experiments import hf_flags, long_memory
from rnnjax import cells, optimizers, train
from rnnjax.data import synthetic

FLAGS = flags.FLAGS

# --task, --seq_len, --eval_every, --eval_sequences, --max_minutes and --results are
# experiments.long_memory's (imported above): the same problems, the same flags.
common.define("string", "save_params", None, "Save the trained params (.npz) here.")


def build_model(cell: cells.Cell, task: synthetic.Task, key: jax.Array):
    """Params and ``net(params, batch) -> (outputs [T, B, O], hiddens [T, B, H])``: the
    model of ``experiments.long_memory`` (same init), reading ``batch.inputs``."""
    params, net_on_inputs, _ = long_memory.build_model(cell, task, key)
    return params, lambda p, batch: net_on_inputs(p, batch.inputs)


def main(argv):
    del argv
    cfg = common.validate(optimizers_allowed=optimizers.OPTIMIZERS + ("hf",))
    cfg.update(hf_flags.validate())
    common.check_choice("task", FLAGS.task, synthetic.LONG_MEMORY_TASKS)
    common.check_positive_int("eval_every", FLAGS.eval_every)
    common.check_positive_int("eval_sequences", FLAGS.eval_sequences)
    task = synthetic.get(FLAGS.task)
    if FLAGS.seq_len < task.min_seq_len:
        raise app.UsageError(f"--seq_len={FLAGS.seq_len} is invalid: task {task.name} needs "
                             f"at least {task.min_seq_len}.")
    cfg.update(task=FLAGS.task, seq_len=FLAGS.seq_len)

    key = jax.random.key(FLAGS.seed)
    cell = cells.by_name(FLAGS.cell, FLAGS.hidden)
    params, net = build_model(cell, task, jax.random.fold_in(key, 0))
    data_key = jax.random.fold_in(key, 1)
    T, B = FLAGS.seq_len, FLAGS.batch_size

    def batch_fn(step: int) -> synthetic.Batch:
        return task.generate(jax.random.fold_in(data_key, step), B, T)

    if FLAGS.optimizer == "hf":
        state, step_fn = long_memory.hf_state_and_step(net, task, params)
    else:
        optimizer = common.make_optimizer()
        state = train.init_state(params, optimizer, seed=FLAGS.seed)
        step_fn = train.make_train_step(lambda p, b, k: task.loss(net(p, b)[0], b), optimizer,
                                        clip_norm=FLAGS.clip_norm)
    t0 = time.perf_counter()
    step_fn = jax.jit(step_fn).lower(state, batch_fn(0)).compile()  # compile time kept apart
    compile_seconds = time.perf_counter() - t0
    predict = jax.jit(lambda p, xs: net(p, synthetic.Batch(xs, None, None))[0])
    eval_key = jax.random.fold_in(key, 2)  # never used for training data

    def error_rate(n: int) -> float:
        return synthetic.evaluate(task, lambda xs: predict(state.params, xs), eval_key, T,
                                  num_sequences=n, batch_size=min(n, 1000))

    train_time, solved, rate, history = 0.0, False, float("nan"), []
    while int(state.step) < FLAGS.steps and train_time < 60 * FLAGS.max_minutes:
        target = min(int(state.step) + FLAGS.eval_every, FLAGS.steps)
        t0 = time.perf_counter()
        state, hist = train.run(None, state, step_fn, batch_fn, steps=target,
                                log_every=FLAGS.eval_every, max_bad_steps=FLAGS.max_bad_steps,
                                progress=False, jit=False)
        jax.block_until_ready(state.params)
        train_time += time.perf_counter() - t0
        history += hist
        rate = error_rate(FLAGS.eval_sequences)
        rec = hist[-1]
        extra = (f" lambda {float(rec['damping']):.3g} rho {float(rec['rho']):.2f} "
                 f"cg {float(rec['cg_iters']):.0f} rate {float(rec['step_rate']):.2f}"
                 if FLAGS.optimizer == "hf" else f" |g| {float(rec['grad_norm']):.3g}")
        print(f"step {int(state.step):6d}  loss {rec['loss']:.4g}  wrong {rate:.4f}{extra}  "
              f"train {train_time:.0f}s", flush=True)
        if synthetic.solved(rate):
            rate = error_rate(synthetic.NUM_TEST_SEQUENCES)
            solved = synthetic.solved(rate)
            print(f"  on {synthetic.NUM_TEST_SEQUENCES} sequences: wrong {rate:.4f}", flush=True)
            if solved:
                break

    updates = int(state.step)
    outcome = dict(cfg, solved=solved, error_rate=rate, updates=updates,
                   train_seconds=round(train_time, 1),
                   compile_seconds=round(compile_seconds, 1), final_loss=history[-1]["loss"])
    if FLAGS.optimizer == "hf":
        hs = state.opt_state
        outcome.update(grad_evals=int(hs.grad_evals), curvature_products=int(hs.curvature_products),
                       loss_evals=int(hs.loss_evals), final_damping=float(hs.damping))
    else:
        outcome.update(grad_evals=updates, curvature_products=0)
    print(json.dumps(outcome))
    if FLAGS.results:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results)), exist_ok=True)
        with open(FLAGS.results, "a") as f:
            f.write(json.dumps(outcome) + "\n")
    if FLAGS.save_params:
        flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
                for path, v in jax.tree_util.tree_leaves_with_path(state.params)}
        np.savez(FLAGS.save_params, **flat)


if __name__ == "__main__":
    app.run(main)
