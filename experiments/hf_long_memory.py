r"""Long-term-dependency problems: Hessian-free against first-order optimizers.

Trains one network on one problem of :mod:`rnnjax.data.synthetic` until it is
solved (under 1% of 10,000 fresh sequences wrong, Pascanu et al. 2013), or until
``--steps`` updates or ``--max_minutes`` of training time, and prints (and with
``--results`` appends as a JSON line) the outcome: solved or not, error rate,
updates, gradient evaluations, Gauss–Newton products, training wall time. With
``--workdir`` it writes ``metrics.jsonl``, checkpoints (``--checkpoint_every``) and
``results.json`` there, and a rerun with the same settings resumes.

    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --hidden=50 --optimizer=hf --batch_size=1000 --curvature_batch_size=200 --cg_iters=100
    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --hidden=50 --optimizer=adam --learning_rate=1e-3 --batch_size=100
    python -m experiments.hf_long_memory --task=addition --seq_len=20 --cell=tanh \
        --optimizer=sgd --learning_rate=0.01 --clip_norm=1

The model is the cell unrolled over the inputs with a linear readout at every
step (:mod:`rnnjax.models.tagger`; outputs [T, B, O]); the task's mask scores
only the steps that matter. With ``--optimizer=hf`` the readout is the network
output of the Gauss–Newton split (squared error for regression tasks, softmax
cross-entropy otherwise; :mod:`rnnjax.models.hf`) and the hidden states
[T, B, H] are what structural damping (``--hf_mu``) penalises. Training time
excludes the periodic evaluations (``--eval_every`` updates, on
``--eval_sequences`` fresh sequences; the full 10,000-sequence test runs only
when that check passes). ``experiments.long_memory`` trains the same model with
the gradient diagnosis, the remedies and the paper's HF protocol.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import app

from experiments import cli, hf_config, success
from rnnjax import cells, checkpoint, train
from rnnjax.data import synthetic
from rnnjax.models import hf, tagger
from rnnjax.optim import factory


@dataclasses.dataclass(frozen=True)
class Config(hf_config.HessianFreeConfig, cli.TrainConfig):
    """The settings of ``python -m experiments.hf_long_memory`` (its flags)."""

    task: str = cli.field("addition", "The problem.", choices=synthetic.LONG_MEMORY_TASKS)
    seq_len: int = cli.field(20, "Sequence length T.", check=cli.positive)
    eval_every: int = cli.field(50, "Check the error rate every N updates.", check=cli.positive)
    eval_sequences: int = cli.field(1000, "Fresh sequences in the periodic check.",
                                    check=cli.positive)
    max_minutes: float = cli.field(5.0, "Stop after this much training wall time (minutes; inf: "
                                   "no cap).", check=cli.positive, allow_inf=True)
    results: str | None = cli.field(None, "Append the outcome as one JSON line to this file.")
    save_params: str | None = cli.field(None, "Save the trained params (.npz) here.")

    RESUMABLE = frozenset({"max_minutes", "results", "save_params", "eval_sequences"})

    def check(self) -> None:
        task = synthetic.get(self.task)
        if self.seq_len < task.min_seq_len:
            raise cli.ConfigError("seq_len", self.seq_len, f"task {task.name} needs an integer "
                                  f">= {task.min_seq_len}")
        if self.optimizer == "hf" and self.clip_norm is not None:
            raise cli.ConfigError("clip_norm", self.clip_norm, "a first-order remedy: leave it "
                                  "unset with optimizer=hf (its damping and line search bound "
                                  "the step)")
        super().check()


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Train until solved or out of budget; write ``results.json`` into ``workdir`` (and
    ``--results``, ``--save_params``); return the outcome."""
    cli.validate(config)
    cli.check_output_file("results", config.results)
    cli.check_output_file("save_params", config.save_params)
    with cli.workdir_session(workdir, config):
        outcome, params = train_until_solved(config, workdir)
        if workdir:
            checkpoint.save_json(workdir, "results", outcome)
    if config.results:
        cli.append_jsonl(config.results, outcome)
    if config.save_params:
        flat = {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(v)
                for path, v in jax.tree_util.tree_leaves_with_path(params)}
        os.makedirs(os.path.dirname(os.path.abspath(config.save_params)), exist_ok=True)
        np.savez(config.save_params, **flat)
    return outcome


def train_until_solved(config: Config, workdir: str | None) -> tuple[dict[str, Any], Any]:
    """One run: ``(outcome, trained params)``."""
    task = synthetic.get(config.task)
    key = jax.random.key(config.seed)
    model = tagger.make(cells.by_name(config.cell, config.hidden), task.input_size,
                        task.output_size)
    params = model.init(jax.random.fold_in(key, 0))
    data_key = jax.random.fold_in(key, 1)
    T, B = config.seq_len, config.batch_size

    def batch_fn(step: int) -> synthetic.Batch:
        return task.generate(jax.random.fold_in(data_key, step), B, T)

    if config.optimizer == "hf":
        net = lambda p, batch: model.outputs_and_hiddens(p, batch.inputs)
        state, step_fn = hf.state_and_step(
            net, task.kind, params, {n: getattr(config, n) for n in hf_config.HF_FIELDS},
            seed=config.seed)
    else:
        optimizer = factory.from_config(config)
        state = train.init_state(params, optimizer, seed=config.seed)
        step_fn = train.make_train_step(lambda p, b, k: task.loss(model.apply(p, b.inputs), b),
                                        optimizer)
    t0 = time.perf_counter()
    step_fn = jax.jit(step_fn).lower(state, batch_fn(0)).compile()  # compile time kept apart
    compile_seconds = time.perf_counter() - t0
    predict = jax.jit(model.apply)
    eval_key = jax.random.fold_in(key, 2)  # never used for training data

    def error_rate(p, n: int) -> float:
        return synthetic.evaluate(task, lambda xs: predict(p, xs), eval_key, T,
                                  num_sequences=n, batch_size=min(n, 1000))

    check = success.Check(config, error_rate)
    loop = {**cli.loop_kwargs(config, workdir, on_log=check.on_log),
            "log_every": config.eval_every}
    state, history = train.run(workdir, state, step_fn, batch_fn, eval_fn=check.eval_fn,
                               eval_every=config.eval_every, jit=False, stop_fn=check.stop_fn,
                               **loop)
    check.finish(state)

    updates = int(state.step)
    final_loss = success.number(history[-1]["loss"]) if history else float("nan")
    outcome = dict(cli.as_dict(config), workdir=workdir, solved=check.result["solved"],
                   error_rate=check.result["rate"], updates=updates,
                   train_seconds=round(check.result["train_seconds"], 1),
                   compile_seconds=round(compile_seconds, 1),
                   final_loss=final_loss if np.isfinite(final_loss) else None)
    if config.optimizer == "hf":
        hs = state.opt_state
        outcome.update(grad_evals=int(hs.grad_evals), curvature_products=int(hs.curvature_products),
                       loss_evals=int(hs.loss_evals), final_damping=float(hs.damping))
    else:
        outcome.update(grad_evals=updates, curvature_products=0)
    print(json.dumps(outcome))
    return outcome, state.params


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
