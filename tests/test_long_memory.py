"""The long-memory experiment end to end on tiny problems: solved and diagnosed, resumed,
swept, with Hessian-free, Omega and the paper's protocol; every bad setting refused.

The remedies inside the step (clipping, the NaN/Inf repair, per-parameter gradient
norms) are tested in test_optim.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest
from absl import app, flags

from experiments import cli, long_memory
from rnnjax import errors, plots, train
from rnnjax.data import synthetic
from rnnjax.models import tagger


def tiny(**changes) -> long_memory.Config:
    base = dict(task="temporal_order", seq_len=10, cell="tanh", hidden=16, batch_size=32,
                learning_rate=1e-2, steps=400, eval_every=50, eval_sequences=200,
                diagnostic_batch=8, checkpoint_every=0, progress=False)
    return dataclasses.replace(long_memory.Config(), **{**base, **changes})


def test_tiny_temporal_order_is_solved_and_diagnosed(tmp_path):
    """T = 10: solved by the success rule (10,000 fresh sequences), plots and verdicts written."""
    workdir = tmp_path / "run"
    results = tmp_path / "results.jsonl"
    long_memory.run(tiny(hidden=32, results=str(results), clip_norm=1.0, nan_repair=True),
                    str(workdir))
    d = json.loads((workdir / "diagnosis.json").read_text())
    assert d == json.loads((workdir / "results.json").read_text())
    assert d["solved"] and d["error_rate"] < 0.01
    assert d["updates"] < 400
    assert d["start"]["verdict"] in ("vanishing", "exploding", "healthy")
    assert 0 < d["end"]["horizon"] <= 10
    for png in ("gradient_vs_lag.png", "gradient_heatmap.png", "parameter_gradient_norms.png"):
        assert os.path.getsize(workdir / png) > 1000
    from rnnjax import tensorboard   # the same plots as TensorBoard images
    events = tensorboard.read_events(str(workdir / tensorboard.SUBDIR))
    assert {"diagnosis/gradient_vs_lag", "diagnosis/parameter_gradient_norms"} <= set(events)
    steps, norms = plots.parameter_gradient_norms(str(workdir))
    assert "cell/W_hh" in norms and len(steps) == len(norms["cell/W_hh"])
    records = train.read_metrics(str(workdir))
    assert len(records[-1]["eval_hidden_grad_norms"]) == 10
    assert json.loads(results.read_text().splitlines()[-1])["solved"] is True


def test_a_rerun_resumes_exactly_and_keeps_the_metrics(tmp_path):
    """Stopped at step 20 (checkpointed), rerun to 40: the same losses as one 40-step run."""
    config = tiny(task="addition", hidden=8, learning_rate=1e-3, steps=40, eval_every=10,
                  eval_sequences=50, checkpoint_every=10, plots=False)
    once = long_memory.run(config, str(tmp_path / "once"))
    first = long_memory.run(dataclasses.replace(config, steps=20), str(tmp_path / "twice"))
    assert first["updates"] == 20
    again = long_memory.run(config, str(tmp_path / "twice"))
    assert again["updates"] == once["updates"] == 40
    losses = lambda w: [(r["step"], r["loss"]) for r in train.read_metrics(str(tmp_path / w))]
    assert losses("twice") == losses("once") and [s for s, _ in losses("once")] == [10, 20, 30, 40]
    assert again["final_loss"] == once["final_loss"]
    # A finished run run again trains nothing and reports the same outcome.
    assert long_memory.run(config, str(tmp_path / "once"))["final_loss"] == once["final_loss"]
    # A rerun whose settings shape the run differently is refused, nothing written.
    with pytest.raises(errors.ConfigMismatchError, match="hidden: saved 8, given 9"):
        long_memory.run(dataclasses.replace(config, hidden=9), str(tmp_path / "once"))


def test_a_diverging_run_is_reported_without_a_crash(tmp_path, capsys):
    """Non-finite losses (logged as "nan") print as nan; the repair keeps the run going."""
    config = tiny(task="addition", optimizer="sgd", learning_rate=1e30, nan_repair=True,
                  steps=4, eval_every=2, eval_sequences=50, max_bad_steps=100, plots=False,
                  progress=True)
    outcome = long_memory.run(config, str(tmp_path / "w"))
    assert outcome["updates"] == 4 and not outcome["solved"]
    assert json.loads((tmp_path / "w" / "results.json").read_text())["updates"] == 4
    assert "step      4  loss nan  wrong 1.0000  |g| nan" in capsys.readouterr().out


def test_sweep_runs_every_variant_and_writes_the_table(tmp_path):
    config = tiny(lengths=(10,), variants=("tanh", "gru"), steps=2, eval_every=2,
                  eval_sequences=50, plots=False)
    results = long_memory.run(config, str(tmp_path / "sweep"))
    assert {(r["variant"], r["seq_len"]) for r in results["runs"]} == {("tanh", 10), ("gru", 10)}
    table = (tmp_path / "sweep" / "table.md").read_text().splitlines()
    assert table[0] == "| T | tanh | gru |" and table[2].startswith("| 10 | ")
    assert (tmp_path / "sweep" / "gru_T10" / "results.json").exists()
    with pytest.raises(cli.ConfigError, match="a sweep needs a workdir"):
        long_memory.run(config, None)


def test_sweep_table_marks_solved_failed_and_skipped():
    results = [
        {"variant": "lstm", "seq_len": 50, "status": "solved", "updates": 200,
         "train_seconds": 8.8, "error_rate": 0.0},
        {"variant": "tanh", "seq_len": 50, "status": "failed", "updates": 600,
         "train_seconds": 60.0, "error_rate": 0.74},
        {"variant": "tanh", "seq_len": 100, "status": "skipped"},
    ]
    lines = long_memory.table(results, [50, 100], ["tanh", "lstm"], steps=1000).splitlines()
    assert lines[0] == "| T | tanh | lstm |"
    assert lines[2] == "| 50 | no (74% wrong after 600 steps, time cap) | **yes**: 200 steps, 9 s |"
    assert lines[3] == "| 100 | skipped | – |"


def test_hessian_free_through_the_same_experiment(tmp_path):
    """--optimizer=hf: solved, with the same diagnosis written."""
    workdir = tmp_path / "hf"
    outcome = long_memory.run(tiny(optimizer="hf", batch_size=200, curvature_batch_size=50,
                                   cg_iters=30, steps=40, eval_every=5, eval_sequences=500),
                              str(workdir))
    assert outcome["solved"] and outcome["updates"] <= 20
    assert outcome["grad_evals"] == outcome["updates"] and outcome["curvature_products"] > 0
    assert outcome["end"]["verdict"] in ("vanishing", "exploding", "healthy")
    assert os.path.getsize(workdir / "gradient_vs_lag.png") > 1000


def _model_task_params(config):
    task = synthetic.get(config.task)
    model = tagger.make(long_memory.make_cell(config), task.input_size, task.output_size)
    return model, task, model.init(jax.random.key(0))


def test_omega_joins_the_loss_of_a_first_order_step():
    """SGD-CR: loss = task loss + alpha * Omega, both logged; the task loss falls."""
    config = tiny(optimizer="sgd", learning_rate=0.1, clip_norm=1.0, omega=2.0)
    model, task, params = _model_task_params(config)
    state, step = long_memory.state_and_step(config, model, task, params)
    step = jax.jit(step)
    history = []
    for s in range(15):
        state, metrics = step(state, task.generate(jax.random.key(s), 32, 10))
        history.append({k: float(v) for k, v in metrics.items() if np.ndim(v) == 0})
    first = history[0]
    assert first["omega"] >= 0 and np.isfinite(first["task_loss"])
    assert first["loss"] == pytest.approx(first["task_loss"] + 2.0 * first["omega"], rel=1e-5)
    assert np.mean([h["task_loss"] for h in history[-3:]]) < first["task_loss"]


def test_the_papers_protocol_sets_model_and_batches():
    config = tiny(optimizer="hf", hf_protocol="martens2011", hidden=32)
    cli.validate(config)
    cell = long_memory.make_cell(config)
    assert cell.hidden_size == 100
    w_hh = np.asarray(cell.init(jax.random.key(0), 6)["W_hh"])
    assert set(np.count_nonzero(w_hh, axis=0)) == {15}  # 15 incoming weights per unit
    batch_fn = long_memory.make_batch_fn(config, synthetic.get("temporal_order"), jax.random.key(1))
    draws = jax.eval_shape(lambda: batch_fn(0))  # three independent draws, shapes only
    assert [b.inputs.shape[1] for b in draws] == [10_000, 1_000, 1_000]


@pytest.mark.parametrize("change,message", [
    (dict(task="adding"), "task='adding' is invalid"),
    (dict(task="copy", seq_len=15), "seq_len=15 is invalid: task copy needs an integer >= 21"),
    (dict(recurrent_init="zeros"), "recurrent_init='zeros' is invalid"),
    (dict(spectral_radius=-1.0), "spectral_radius=-1.0 is invalid"),
    (dict(spectral_radius=float("inf")), "spectral_radius=inf is invalid: expected a finite"),
    (dict(max_minutes=0.0), "max_minutes=0.0 is invalid: expected a positive number"),
    (dict(hf_lambda=float("inf"), optimizer="hf"), "hf_lambda=inf is invalid: expected a finite"),
    (dict(optimizer="hf", clip_norm=1.0), "clip_norm=1.0 is invalid: nan_repair and clip_norm "
     "are first-order remedies"),
    (dict(optimizer="hf", batch_size=8, curvature_batch_size=9), "curvature_batch_size=9"),
    (dict(cell="mrnn", spectral_radius=0.9), "cell='mrnn' is invalid"),
    (dict(omega=2.0, cell="lstm"), "omega=2.0 is invalid: Omega is defined for tanh cells"),
    (dict(hf_protocol="martens2011"), "hf_protocol='martens2011' is invalid: needs optimizer=hf"),
    (dict(hf_protocol="martens2011", optimizer="hf", hidden=32, hf_mu=0.1), "hf_mu=0.1 is invalid: set by "
     "hf_protocol=martens2011"),
    (dict(lengths=(10, 5)), "lengths=(10, 5) is invalid: task temporal_order needs"),
    (dict(variants=("tanh", "rnn")), "variants=('tanh', 'rnn') is invalid: accepted"),
])
def test_bad_settings_are_refused_before_any_work(change, message, tmp_path):
    with pytest.raises(cli.ConfigError, match=re.escape(message)):
        long_memory.run(tiny(**change), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_a_results_path_that_cannot_be_written_is_refused_first(tmp_path):
    (tmp_path / "file.txt").write_text("")
    for path, message in [(tmp_path, "expected a file name, not a directory"),
                          (tmp_path / "file.txt" / "r.jsonl", "is not a writable directory")]:
        with pytest.raises(cli.ConfigError, match=f"results=.* is invalid: .*{message}"):
            long_memory.run(tiny(results=str(path)), str(tmp_path / "w"))
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_flags_give_the_same_errors_naming_the_flag():
    fv = flags.FlagValues()
    cli.define_flags(long_memory.Config, flag_values=fv)
    fv(["long_memory", "--max_minutes=0"])
    with pytest.raises(app.UsageError, match=re.escape(
            "--max_minutes=0.0 is invalid: expected a positive number")):
        cli.from_flags(long_memory.Config, flag_values=fv)
    fv = flags.FlagValues()
    cli.define_flags(long_memory.Config, flag_values=fv)
    fv(["long_memory", "--lengths=10,x"])
    with pytest.raises(app.UsageError, match="--lengths='10,x' is invalid: expected a comma"):
        cli.from_flags(long_memory.Config, flag_values=fv)


def test_hf_long_memory_reports_solved_runs_with_their_costs(tmp_path, capsys):
    from experiments import hf_long_memory
    results, params = tmp_path / "hf.jsonl", tmp_path / "params.npz"
    config = dataclasses.replace(
        hf_long_memory.Config(), task="temporal_order", seq_len=10, cell="tanh", hidden=16,
        optimizer="hf", batch_size=200, curvature_batch_size=50, cg_iters=30, steps=40,
        eval_every=5, eval_sequences=500, progress=False, results=str(results),
        save_params=str(params))
    hf_long_memory.run(config, str(tmp_path / "w"))
    outcome = json.loads(results.read_text().splitlines()[-1])
    assert outcome["solved"] and outcome["error_rate"] < 0.01 and outcome["updates"] <= 20
    assert outcome["curvature_products"] > 0 and outcome["train_seconds"] > 0
    assert "wrong" in capsys.readouterr().out
    # --workdir is honoured: the metrics, a checkpoint and the results are there.
    assert json.loads((tmp_path / "w" / "results.json").read_text())["updates"] == outcome["updates"]
    assert [r["step"] for r in train.read_metrics(str(tmp_path / "w"))][-1] == outcome["updates"]
    assert (tmp_path / "w" / "checkpoints").is_dir()
    assert {"cell/W_hh", "W_hy", "b_y"} <= set(np.load(params).files)
    # The saved network's gradient flow, plotted beside itself.
    from experiments import hf_gradient_plot
    plot = dataclasses.replace(
        hf_gradient_plot.Config(), params=(str(params), str(params)), labels=("HF", "again"),
        task="temporal_order", seq_len=10, hidden=16, sequences=50, out=str(tmp_path / "g.png"))
    summary = hf_gradient_plot.run(plot, None)
    assert summary["HF"] == summary["again"] and summary["HF"]["grad_norm_last"] > 0
    assert os.path.getsize(tmp_path / "g.png") > 1000
    for change, message in [(dict(hidden=8), "W_hy has shape (16, 4), these settings need (8, 4)"),
                            (dict(cell="lstm"), "it lacks ['cell/b']"),
                            (dict(labels=("HF",)), "expected one label per params file"),
                            (dict(params=(str(results), str(params))), "expected a .npz file")]:
        with pytest.raises(cli.ConfigError, match=re.escape(message)):
            hf_gradient_plot.run(dataclasses.replace(plot, **change), None)
    for change, message in [(dict(max_minutes=0.0), "max_minutes=0.0 is invalid"),
                            (dict(save_params=str(tmp_path)), "save_params="),
                            (dict(task="copy"), "seq_len=10 is invalid: task copy needs"),
                            (dict(clip_norm=1.0), "clip_norm=1.0 is invalid: a first-order")]:
        with pytest.raises(cli.ConfigError, match=re.escape(message)):
            hf_long_memory.run(dataclasses.replace(config, **change), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
