r"""Train a cell on a long-term-dependency problem, with remedies, and diagnose its gradients.

Trains one network (a cell unrolled over the inputs, a linear readout at every
step: :mod:`rnnjax.models.tagger`; the task's mask scores only the steps that
matter) on one problem of :mod:`rnnjax.data.synthetic` at one length T, until it
is solved (under 1% of 10,000 fresh sequences wrong, Pascanu et al. 2013), or
``--steps`` updates, or ``--max_minutes`` of training time. Every ``--eval_every``
steps it records the error rate on ``--eval_sequences`` fresh sequences and
‖∂L/∂h_t‖ for every t on a fixed diagnostic batch, into ``metrics.jsonl`` (with
the per-parameter gradient norms of every step). With ``--workdir`` it saves a
checkpoint every ``--checkpoint_every`` steps and at the end, and a rerun with the
same settings resumes from the last one (the metrics before it are kept). At the
end it writes, into ``--workdir``:

* ``results.json`` (and ``diagnosis.json``, the same): the outcome, the verdict
  (vanishing / exploding / healthy, rate per step, effective horizon) at the start
  and at the end, the spectral radius of W_hh, the largest Lyapunov exponent;
* ``gradient_vs_lag.png``: ‖∂L/∂h_{T-k}‖ against the lag k at several training steps;
* ``gradient_heatmap.png``: the per-step norms across training;
* ``parameter_gradient_norms.png``: each parameter's gradient norm across training
  (first-order optimizers).

Remedies are settings: ``--clip_norm=θ`` (clipping by global norm), ``--nan_repair``
(Pascanu et al.'s NaN/Inf repair), ``--omega=α`` (Pascanu et al.'s regulariser Ω,
tanh cells; SGD-CR is ``--optimizer=sgd --learning_rate=0.01 --clip_norm=1
--omega=2``), ``--cell=irnn`` (ReLU + identity init), ``--cell=lstm|gru``,
``--recurrent_init=orthogonal|identity|glorot|normal|sparse``, ``--spectral_radius=ρ``;
``--optimizer=hf`` trains with Hessian-free (Martens & Sutskever 2011;
``--cg_iters``, ``--hf_lambda``, ``--hf_mu``, ``--curvature_batch_size``), and
``--hf_protocol=martens2011`` with every setting of their paper (100 tanh units,
sparse init with W_hh at spectral radius 1.1 and inputs scaled down, μ = 1/30, up to
300 CG steps, 10,000 fresh sequences for the gradient and separate 1,000-sequence
batches for the curvature and the line search).

``--lengths=10,20,50`` runs a sweep instead: each of ``--variants`` (a cell and its
remedies: tanh, tanh+clip, irnn, lstm, gru) at each length, one workdir per run
inside ``--workdir``, and the table of which variant solved which length
(``table.md``, ``results.jsonl``).

    python -m experiments.long_memory --task=addition --seq_len=50 --cell=lstm \
        --hidden=64 --batch_size=64 --learning_rate=1e-2 --steps=2000 --workdir=/tmp/lm
    python -m experiments.long_memory --task=temporal_order --seq_len=20 --cell=tanh \
        --clip_norm=1 --nan_repair --optimizer=sgd --learning_rate=0.01 --workdir=/tmp/lm2
    python -m experiments.long_memory --task=temporal_order --lengths=10,20,50 \
        --steps=1000 --max_minutes=1 --hidden=64 --learning_rate=3e-3 --eval_every=100 \
        --eval_sequences=500 --workdir=/tmp/long_memory_sweep

From Python: ``long_memory.run(dataclasses.replace(long_memory.Config(), task="xor",
seq_len=50), "runs/xor")``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import app

from experiments import cli, hf_config, success
from rnnjax import cells, checkpoint, diagnostics, plots, regularizers, train
from rnnjax.data import synthetic
from rnnjax.models import hf, tagger
from rnnjax.optim import factory, hessian_free

RECURRENT_INITS = ("default", "orthogonal", "identity", "glorot", "normal", "sparse")
HF_PROTOCOLS = ("none", "martens2011")
# Settings the paper's protocol fixes: with --hf_protocol they must keep their defaults.
PROTOCOL_SETTINGS = ("cell", "hidden", "recurrent_init", "spectral_radius", "batch_size",
                     "curvature_batch_size", "cg_iters", "hf_lambda", "hf_mu",
                     "hf_preconditioner")
# The sweep's variants: a cell and its remedies.
VARIANTS = {
    "tanh": dict(cell="tanh"),
    "tanh+clip": dict(cell="tanh", clip_norm=1.0, nan_repair=True),
    "irnn": dict(cell="irnn"),
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
}


def _variant(value: str) -> str | None:
    return None if value in VARIANTS else "accepted: a comma-separated subset of " + ", ".join(
        VARIANTS)


@dataclasses.dataclass(frozen=True)
class Config(hf_config.HessianFreeConfig, cli.TrainConfig):
    """The settings of ``python -m experiments.long_memory`` (its flags)."""

    task: str = cli.field("addition", "The problem.", choices=synthetic.LONG_MEMORY_TASKS)
    seq_len: int = cli.field(20, "Sequence length T.", check=cli.positive)
    eval_every: int = cli.field(50, "Check the error rate and the gradient flow every N updates.",
                                check=cli.positive)
    eval_sequences: int = cli.field(1000, "Fresh sequences in the periodic check.",
                                    check=cli.positive)
    max_minutes: float = cli.field(5.0, "Stop after this much training wall time (minutes; inf: "
                                   "no cap).", check=cli.positive, allow_inf=True)
    results: str | None = cli.field(None, "Append the outcome as one JSON line to this file.")
    recurrent_init: str = cli.field(
        "default", "Initialiser of W_hh (default: the cell's own, orthogonal; identity for irnn; "
        "sparse: 15 non-zero incoming weights per unit, Martens 2010).", choices=RECURRENT_INITS)
    spectral_radius: float | None = cli.field(None, "Rescale W_hh (each gate block) to this "
                                              "spectral radius.", check=cli.positive)
    nan_repair: bool = cli.field(False, "Pascanu et al.'s repair of NaN/Inf gradients (W_hh "
                                 "shrinks) instead of skipping the step.")
    omega: float = cli.field(0.0, "Weight alpha of Pascanu et al.'s regulariser Omega (tanh "
                             "cells, first-order optimizers; 0: off). SGD-CR: --optimizer=sgd "
                             "--learning_rate=0.01 --clip_norm=1 --omega=2.",
                             check=cli.non_negative)
    hf_protocol: str = cli.field("none", "Martens & Sutskever 2011's whole protocol with "
                                 "--optimizer=hf: 100 tanh units, sparse init, mu=1/30, up to "
                                 "300 CG steps, 10,000 sequences per gradient, separate "
                                 "1,000-sequence curvature and line-search batches.",
                                 choices=HF_PROTOCOLS)
    diagnostic_batch: int = cli.field(32, "Sequences in the fixed batch for dL/dh_t.",
                                      check=cli.positive)
    plots: bool = cli.field(True, "Write the diagnosis plots into --workdir at the end.")
    lengths: tuple[int, ...] = cli.field((), "Sweep: run every --variants at each of these "
                                         "lengths T (instead of the one --seq_len), one workdir "
                                         "each inside --workdir; writes table.md.",
                                         check=cli.positive)
    variants: tuple[str, ...] = cli.field(tuple(VARIANTS), "Sweep: the variants (cell and "
                                          "remedies), from: " + ", ".join(VARIANTS) + ".",
                                          check=_variant)
    skip_longer_after_failure: bool = cli.field(True, "Sweep: do not run a variant at longer T "
                                                "once it failed at a shorter one.")

    RESUMABLE = frozenset({"max_minutes", "results", "plots", "eval_sequences",
                           "diagnostic_batch", "lengths", "variants",
                           "skip_longer_after_failure"})

    def check(self) -> None:
        task = synthetic.get(self.task)
        for T in (self.seq_len, *self.lengths):
            if T < task.min_seq_len:
                name = "seq_len" if T == self.seq_len else "lengths"
                raise cli.ConfigError(name, getattr(self, name), f"task {task.name} needs an "
                                      f"integer >= {task.min_seq_len}")
        if self.optimizer == "hf" and (self.nan_repair or self.clip_norm is not None):
            name = "clip_norm" if self.clip_norm is not None else "nan_repair"
            raise cli.ConfigError(name, getattr(self, name), "nan_repair and clip_norm are "
                                  "first-order remedies: leave them unset with optimizer=hf "
                                  "(its damping and line search bound the step)")
        if self.cell == "mrnn" and (self.recurrent_init != "default"
                                    or self.spectral_radius is not None):
            raise cli.ConfigError("cell", self.cell, "recurrent_init/spectral_radius do not "
                                  "apply to cell=mrnn (it has no W_hh)")
        if self.omega > 0 and (self.optimizer == "hf" or self.cell not in ("tanh",)):
            raise cli.ConfigError("omega", self.omega, "Omega is defined for tanh cells trained "
                                  "by a first-order optimizer: set cell=tanh and an optax "
                                  "optimizer, or omega=0")
        if self.hf_protocol != "none":
            if self.optimizer != "hf":
                raise cli.ConfigError("hf_protocol", self.hf_protocol, "needs optimizer=hf")
            defaults = {f.name: f.default for f in dataclasses.fields(type(self))}
            for name in PROTOCOL_SETTINGS:
                if getattr(self, name) != defaults[name]:
                    raise cli.ConfigError(name, getattr(self, name), f"set by hf_protocol="
                                          f"{self.hf_protocol}: leave it at its default")
        if self.lengths and not self.variants:
            raise cli.ConfigError("variants", self.variants, _variant(""))
        super().check()


# ----------------------------------------------------------------------------- model

def protocol_of(config: Config) -> hessian_free.Protocol | None:
    """The Hessian-free protocol ``--hf_protocol`` names (None: the flags' settings)."""
    return hessian_free.martens2011() if config.hf_protocol == "martens2011" else None


def make_cell(config: Config) -> cells.Cell:
    """The cell of ``--cell``/``--hidden`` with ``--recurrent_init``/``--spectral_radius``."""
    protocol = protocol_of(config)
    if protocol is not None:
        return hf.protocol_cell(protocol)
    kwargs: dict[str, Any] = {}
    if config.recurrent_init != "default":
        kwargs["recurrent_init"] = config.recurrent_init
    if config.spectral_radius is not None:
        kwargs["spectral_radius"] = config.spectral_radius
    return cells.by_name(config.cell, config.hidden, **kwargs)


def make_loss(model: tagger.Tagger, task: synthetic.Task, omega: float) -> Callable:
    """``loss_fn(params, batch, key)`` of the first-order step: the task's loss, plus
    ``omega``·Ω (Pascanu et al. 2013) when ``omega`` > 0."""
    if omega == 0:
        return lambda p, batch, key: task.loss(model.apply(p, batch.inputs), batch)

    def loss_fn(p, batch, key):
        hs = model.hiddens(p, batch.inputs)
        loss, reg = regularizers.loss_and_omega(
            lambda h: task.loss(model.readout(p, h), batch), p["cell"]["W_hh"], hs)
        return loss + omega * reg, {"task_loss": loss, "omega": reg}

    return loss_fn


def state_and_step(config: Config, model: tagger.Tagger, task: synthetic.Task,
                   params: Any) -> tuple[train.TrainState, Callable]:
    """The TrainState and the pure train step of ``config.optimizer``."""
    if config.optimizer == "hf":
        net = lambda p, batch: model.outputs_and_hiddens(p, batch.inputs)
        settings = protocol_of(config) or {n: getattr(config, n) for n in hf_config.HF_FIELDS}
        return hf.state_and_step(net, task.kind, params, settings, seed=config.seed)
    optimizer = factory.from_config(config)
    state = train.init_state(params, optimizer, seed=config.seed)
    return state, train.make_train_step(make_loss(model, task, config.omega), optimizer,
                                        param_norms=True, has_aux=config.omega > 0)


def make_batch_fn(config: Config, task: synthetic.Task, key: jax.Array) -> Callable[[int], Any]:
    """``batch_fn(step)``: a fresh batch (the protocol's three independent draws)."""
    T, protocol = config.seq_len, protocol_of(config)
    if protocol is None:
        return lambda step: task.generate(jax.random.fold_in(key, step), config.batch_size, T)

    def draws(step: int):
        k_grad, k_curv, k_eval = jax.random.split(jax.random.fold_in(key, step), 3)
        return (task.generate(k_grad, protocol.gradient_batch, T),
                task.generate(k_curv, protocol.curvature_batch, T),
                task.generate(k_eval, protocol.eval_batch, T))

    return draws


# ----------------------------------------------------------------------------- diagnosis

def make_hidden_norms(model: tagger.Tagger, task: synthetic.Task):
    """A jitted ``(params, batch) -> ‖∂L/∂h_t‖ [T]`` of the task's loss."""
    def norms(params, batch):
        return diagnostics.hidden_gradient_norms(
            model.cell, params["cell"], batch.inputs,
            lambda hs: task.loss(model.readout(params, hs), batch))
    return jax.jit(norms)


def gradient_report(cell: cells.Cell, params, hidden_norms, batch) -> dict[str, Any]:
    """Verdict, spectral radius and Lyapunov exponent of ``params`` on ``batch``."""
    v = diagnostics.verdict(np.asarray(hidden_norms(params, batch)))
    js = diagnostics.state_jacobians(cell, params["cell"], batch.inputs)
    report = {"verdict": v.kind, "rate_per_step": _finite_or_none(v.rate_per_step),
              "horizon": v.horizon, "span": v.span, "summary": str(v),
              "lyapunov_exponent": _finite_or_none(
                  float(diagnostics.lyapunov_exponents(js, num=1)[0]))}
    try:
        report["spectral_radius"] = diagnostics.recurrent_spectral_radius(params["cell"])
    except ValueError:
        report["spectral_radius"] = None
    return report


def _finite_or_none(x: Any) -> float | None:
    x = success.number(x)
    return x if math.isfinite(x) else None


def _repaired_steps(history: list[dict[str, Any]]) -> int:
    """Steps the NaN/Inf repair changed (its running total, last logged)."""
    totals = [r["total_repaired"] for r in history if "total_repaired" in r]
    return int(success.number(totals[-1])) if totals else 0


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Train and diagnose as ``config`` says (a sweep when ``config.lengths`` is set);
    write ``results.json`` into ``workdir`` and return the outcome."""
    cli.validate(config)
    cli.check_output_file("results", config.results)
    if config.lengths:
        return sweep(config, workdir)
    with cli.workdir_session(workdir, config):
        outcome = train_and_diagnose(config, workdir)
    if config.results:
        cli.append_jsonl(config.results, outcome)
    return outcome


def train_and_diagnose(config: Config, workdir: str | None) -> dict[str, Any]:
    """One run (validated ``config``, prepared ``workdir``): the outcome dict."""
    task = synthetic.get(config.task)
    key = jax.random.key(config.seed)
    cell = make_cell(config)
    model = tagger.make(cell, task.input_size, task.output_size)
    params = model.init(jax.random.fold_in(key, 0))
    batch_fn = make_batch_fn(config, task, jax.random.fold_in(key, 1))
    eval_key = jax.random.fold_in(key, 2)          # never used for training data
    T = config.seq_len
    diag_batch = task.generate(jax.random.fold_in(key, 3), config.diagnostic_batch, T)
    state, step_fn = state_and_step(config, model, task, params)

    t0 = time.perf_counter()
    step_fn = jax.jit(step_fn).lower(state, batch_fn(0)).compile()  # compile time kept apart
    compile_seconds = time.perf_counter() - t0
    predict = jax.jit(model.apply)
    eval_batch = min(config.eval_sequences, 1000)  # one shape for every check: one compile

    def error_rate(p, n: int) -> float:
        return synthetic.evaluate(task, lambda xs: predict(p, xs), eval_key, T,
                                  num_sequences=n, batch_size=eval_batch)

    hidden_norms = make_hidden_norms(model, task)
    start_report = gradient_report(cell, state.params, hidden_norms, diag_batch)
    print(f"at the start: {start_report['summary']}", flush=True)

    check = success.Check(config, error_rate, lambda p: {
        "hidden_grad_norms": np.asarray(hidden_norms(p, diag_batch))})
    loop = {**cli.loop_kwargs(config, workdir, on_log=check.on_log),
            "log_every": config.eval_every}
    state, history = train.run(workdir, state, step_fn, batch_fn, eval_fn=check.eval_fn,
                               eval_every=config.eval_every, jit=False, stop_fn=check.stop_fn,
                               **loop)
    check.finish(state)

    end_report = gradient_report(cell, state.params, hidden_norms, diag_batch)
    print(f"at the end: {end_report['summary']}", flush=True)
    outcome = dict(cli.as_dict(config), workdir=workdir, cell_name=cell.name,
                   solved=check.result["solved"],
                   error_rate=_finite_or_none(check.result["rate"]), updates=int(state.step),
                   train_seconds=round(check.result["train_seconds"], 1),
                   compile_seconds=round(compile_seconds, 1),
                   final_loss=_finite_or_none(history[-1]["loss"]) if history else None,
                   repaired_steps=_repaired_steps(history), start=start_report, end=end_report)
    if config.optimizer == "hf":
        hs = state.opt_state
        outcome.update(grad_evals=int(hs.grad_evals), curvature_products=int(hs.curvature_products),
                       loss_evals=int(hs.loss_evals), final_damping=float(hs.damping))
    if workdir is not None:
        if config.plots:
            snapshots = {0: np.asarray(hidden_norms(params, diag_batch))} | {
                r["step"]: np.asarray(r["eval_hidden_grad_norms"], np.float64)
                for r in history if "eval_hidden_grad_norms" in r}
            write_plots(workdir, snapshots, config, cell)
        checkpoint.save_json(workdir, "diagnosis", outcome)
        checkpoint.save_json(workdir, "results", outcome)
    print(json.dumps({k: v for k, v in outcome.items() if k not in ("start", "end")}))
    return outcome


def write_plots(workdir: str, snapshots: dict[int, np.ndarray], config: Config,
                cell: cells.Cell) -> None:
    """The diagnosis PNGs in ``workdir``, also as TensorBoard images."""
    steps = sorted(snapshots)
    title = f"{cell.name} on {config.task}, T={config.seq_len}"
    picks = sorted(set(steps[i] for i in np.linspace(0, len(steps) - 1, min(5, len(steps)))
                       .round().astype(int)))
    paths = [os.path.join(workdir, "gradient_vs_lag.png"),
             os.path.join(workdir, "gradient_heatmap.png")]
    plots.plot_gradient_vs_lag({f"step {s}": snapshots[s] for s in picks}, paths[0], title=title)
    plots.plot_gradient_heatmap(steps, np.stack([snapshots[s] for s in steps]), paths[1],
                                title=title)
    if config.optimizer != "hf":  # the HF step does not log per-parameter gradient norms
        p_steps, p_norms = plots.parameter_gradient_norms(workdir)
        paths.append(os.path.join(workdir, "parameter_gradient_norms.png"))
        plots.plot_parameter_gradient_norms(p_steps, p_norms, paths[-1], title=title)
    with cli.event_log(config, workdir) as events:
        for path in paths:
            events.image("diagnosis/" + os.path.basename(path)[:-4], path, steps[-1])


# ----------------------------------------------------------------------------- sweep

def sweep(config: Config, workdir: str | None) -> dict[str, Any]:
    """Each of ``config.variants`` at each of ``config.lengths`` (shorter first), under the
    same budget; one workdir per run inside ``workdir``; the table of what was solved.
    ``results.jsonl`` keeps every run, so a sweep into the same workdir adds to the table."""
    if not workdir:
        raise cli.ConfigError("workdir", workdir, "a sweep needs a workdir for its runs and table")
    with cli.workdir_session(workdir, config):
        results_path = os.path.join(workdir, "results.jsonl")
        failed: set[str] = set()
        for T in sorted(config.lengths):
            for v in config.variants:
                if v in failed and config.skip_longer_after_failure:
                    r = {"variant": v, "seq_len": T, "status": "skipped"}
                else:
                    r = sweep_one(config, v, T, workdir)
                    if r["status"] != "solved":
                        failed.add(v)
                cli.append_jsonl(results_path, r)
                print(json.dumps(r), flush=True)
        # A measured result replaces a "skipped" one, from this sweep or an earlier one.
        recorded: dict[tuple[str, int], dict] = {}
        for r in cli.read_jsonl(results_path):
            k = (r["variant"], r["seq_len"])
            if r["status"] != "skipped" or k not in recorded:
                recorded[k] = r
        md = table(list(recorded.values()), sorted({T for _, T in recorded}),
                   [v for v in VARIANTS if any(k[0] == v for k in recorded)], config.steps)
        with open(os.path.join(workdir, "table.md"), "w") as f:
            f.write(md + "\n")
        print(md)
        results = {"runs": list(recorded.values()), "table": md}
        checkpoint.save_json(workdir, "results", results)
    return results


def sweep_one(config: Config, variant: str, T: int, workdir: str) -> dict[str, Any]:
    """One run of the sweep (its own workdir, no checkpoints): a row of the table."""
    run_config = dataclasses.replace(config, seq_len=T, lengths=(), checkpoint_every=0,
                                     progress=False, results=None, **VARIANTS[variant])
    run_dir = os.path.join(workdir, f"{variant.replace('+', '_')}_T{T}")
    t0 = time.time()
    try:
        cli.validate(run_config)
        with cli.workdir_session(run_dir, run_config):
            d = train_and_diagnose(run_config, run_dir)
    except train.NonFiniteError as e:
        return {"variant": variant, "seq_len": T, "status": "non-finite",
                "message": str(e)[:200], "wall_seconds": round(time.time() - t0, 1)}
    return {"variant": variant, "seq_len": T, "status": "solved" if d["solved"] else "failed",
            "updates": d["updates"], "train_seconds": d["train_seconds"],
            "error_rate": d["error_rate"], "wall_seconds": round(time.time() - t0, 1),
            "verdict_start": d["start"]["summary"], "verdict_end": d["end"]["summary"]}


def cell_text(r: dict | None, steps: int) -> str:
    """One cell of the sweep's table (``steps``: the budget, to mark a time cap)."""
    if r is None:
        return "–"
    if r["status"] == "skipped":
        return "skipped"
    if r["status"] == "solved":
        return f"**yes**: {r['updates']} steps, {r['train_seconds']:.0f} s"
    if r["status"] == "non-finite":
        return "no (stopped: non-finite gradients)"
    if r["status"] == "failed":
        rate = r["error_rate"]
        wrong = "?" if rate is None else f"{rate:.0%}"
        return (f"no ({wrong} wrong after {r['updates']} steps"
                + (", time cap)" if r["updates"] < steps else ")"))
    return r["status"]


def table(results: list[dict], lengths: list[int], variants: list[str], steps: int) -> str:
    """The markdown table: a row per length, a column per variant."""
    by = {(r["variant"], r["seq_len"]): r for r in results}
    lines = ["| T | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for T in lengths:
        lines.append(f"| {T} | " + " | ".join(cell_text(by.get((v, T)), steps)
                                              for v in variants) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
