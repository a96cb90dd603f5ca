"""The long-memory experiment end to end on a tiny problem, and the remedies in the step."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import app, flags
from absl.testing import flagsaver

from experiments import long_memory, long_memory_sweep
from rnnjax import diagnostics, remedies, train

FLAGS = flags.FLAGS


@pytest.fixture
def parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()
    with flagsaver.flagsaver():  # every test starts from, and restores, the defaults
        yield


def test_tiny_temporal_order_is_solved_and_diagnosed(parsed_flags, tmp_path):
    """T = 10: solved by the success rule (10,000 fresh sequences), plots and verdicts written."""
    workdir = tmp_path / "run"
    results = tmp_path / "results.jsonl"
    for name, value in dict(task="temporal_order", seq_len=10, cell="tanh", hidden=32,
                            batch_size=32, learning_rate=1e-2, steps=400, eval_every=50,
                            eval_sequences=500, diagnostic_batch=8, checkpoint_every=0,
                            progress=False, workdir=str(workdir), results=str(results),
                            clip_norm=1.0, nan_repair=True).items():
        setattr(FLAGS, name, value)
    long_memory.run_from_flags()
    with open(workdir / "diagnosis.json") as f:
        d = json.load(f)
    assert d["solved"] and d["error_rate"] < 0.01
    assert d["updates"] < 400
    assert d["start"]["verdict"] in ("vanishing", "exploding", "healthy")
    assert 0 < d["end"]["horizon"] <= 10
    for png in ("gradient_vs_lag.png", "gradient_heatmap.png", "parameter_gradient_norms.png"):
        assert os.path.getsize(workdir / png) > 1000
    steps, norms = diagnostics.parameter_gradient_norms(str(workdir))
    assert "cell/W_hh" in norms and len(steps) == len(norms["cell/W_hh"])
    records = train.read_metrics(str(workdir))
    assert len(records[-1]["eval_hidden_grad_norms"]) == 10
    assert json.loads(results.read_text().splitlines()[-1])["solved"] is True


@pytest.mark.parametrize("flag,value,message", [
    ("task", "adding", "--task='adding' is invalid"),
    ("seq_len", 15, "needs an integer >= 21"),
    ("recurrent_init", "zeros", "--recurrent_init='zeros' is invalid"),
    ("spectral_radius", -1.0, "--spectral_radius=-1.0 is invalid"),
])
def test_bad_flags_are_rejected(parsed_flags, flag, value, message):
    if flag == "seq_len":
        FLAGS.task = "copy"
    setattr(FLAGS, flag, value)
    with pytest.raises(app.UsageError, match=message):
        long_memory.validate()


def test_repair_replaces_a_nonfinite_gradient():
    params = {"W_hh": jnp.full((2, 2), 3.0), "W_xh": jnp.ones((1, 2))}
    bad = {"W_hh": jnp.full((2, 2), jnp.nan), "W_xh": jnp.ones((1, 2))}
    grads, repaired = remedies.repair_nonfinite(bad, params, optax.tree.norm(bad))
    assert bool(repaired)
    np.testing.assert_allclose(grads["W_hh"], 0.02 * 3.0)
    np.testing.assert_allclose(grads["W_xh"], 0.0)
    good = {"W_hh": jnp.ones((2, 2)), "W_xh": jnp.ones((1, 2))}
    same, repaired = remedies.repair_nonfinite(good, params, optax.tree.norm(good))
    assert not bool(repaired)
    np.testing.assert_allclose(same["W_hh"], 1.0)


@pytest.mark.parametrize("nan_repair", [False, True])
def test_step_with_overflowing_loss(nan_repair):
    """An overflowing loss: skipped without the repair; W_hh shrinks with it."""
    params = {"W_hh": jnp.full((2, 2), 0.5), "W_xh": jnp.ones((1, 2))}

    def loss_fn(p, batch, key):
        return jnp.sum(jnp.exp(batch * p["W_hh"])) + jnp.sum(p["W_xh"] ** 2)

    opt = optax.sgd(1.0)
    state = train.init_state(params, opt)
    step = jax.jit(remedies.make_train_step(loss_fn, opt, clip_norm=1.0, nan_repair=nan_repair))
    new, metrics = step(state, jnp.float32(1e4))           # exp(5000) overflows
    assert float(metrics["repaired"]) == float(nan_repair)
    if nan_repair:
        np.testing.assert_allclose(new.params["W_hh"], 0.5 * (1 - 0.02))
        np.testing.assert_allclose(new.params["W_xh"], 1.0)
        assert int(new.bad_steps) == 0
    else:
        np.testing.assert_allclose(new.params["W_hh"], 0.5)
        assert int(new.bad_steps) == 1
    # An ordinary step is clipped to norm 1 and logs each parameter's gradient norm.
    new, metrics = step(state, jnp.float32(1.0))
    assert float(metrics["finite"]) == 1.0 and float(metrics["repaired"]) == 0.0
    assert {"grad_norm/W_hh", "grad_norm/W_xh"} <= set(metrics)
    delta = jax.tree.map(lambda a, b: a - b, new.params, state.params)
    assert float(optax.tree.norm(delta)) == pytest.approx(1.0, rel=1e-5)


def test_sweep_table_marks_solved_failed_and_skipped(parsed_flags):
    FLAGS.steps = 1000
    results = [
        {"variant": "lstm", "seq_len": 50, "status": "solved", "updates": 200,
         "train_seconds": 8.8, "error_rate": 0.0},
        {"variant": "tanh", "seq_len": 50, "status": "failed", "updates": 600,
         "train_seconds": 60.0, "error_rate": 0.74},
        {"variant": "tanh", "seq_len": 100, "status": "skipped"},
    ]
    md = long_memory_sweep.table(results, [50, 100], ["tanh", "lstm"])
    lines = md.splitlines()
    assert lines[0] == "| T | tanh | lstm |"
    assert lines[2] == "| 50 | no (74% wrong after 600 steps, time cap) | **yes**: 200 steps, 9 s |"
    assert lines[3] == "| 100 | skipped | – |"


def test_hessian_free_through_the_same_experiment(parsed_flags, tmp_path):
    """--optimizer=hf in experiments.long_memory: solved, with the same diagnosis written."""
    workdir = tmp_path / "hf"
    for name, value in dict(task="temporal_order", seq_len=10, cell="tanh", hidden=16,
                            optimizer="hf", batch_size=200, curvature_batch_size=50,
                            cg_iters=30, steps=40, eval_every=5, eval_sequences=500,
                            diagnostic_batch=8, checkpoint_every=0, progress=False,
                            workdir=str(workdir)).items():
        setattr(FLAGS, name, value)
    outcome = long_memory.run_from_flags()
    assert outcome["solved"] and outcome["updates"] <= 20
    assert outcome["grad_evals"] == outcome["updates"] and outcome["curvature_products"] > 0
    assert outcome["end"]["verdict"] in ("vanishing", "exploding", "healthy")
    assert os.path.getsize(workdir / "gradient_vs_lag.png") > 1000
    FLAGS.clip_norm = 1.0
    with pytest.raises(app.UsageError, match="--clip_norm are first-order remedies"):
        long_memory.validate()


def test_hf_long_memory_reports_solved_runs_with_their_costs(parsed_flags, tmp_path, capsys):
    from experiments import hf_long_memory
    results = tmp_path / "hf.jsonl"
    for name, value in dict(task="temporal_order", seq_len=10, cell="tanh", hidden=16,
                            optimizer="hf", batch_size=200, curvature_batch_size=50,
                            cg_iters=30, steps=40, eval_every=5, eval_sequences=500,
                            progress=False, results=str(results)).items():
        setattr(FLAGS, name, value)
    hf_long_memory.main([])
    outcome = json.loads(results.read_text().splitlines()[-1])
    assert outcome["solved"] and outcome["error_rate"] < 0.01 and outcome["updates"] <= 20
    assert outcome["curvature_products"] > 0 and outcome["train_seconds"] > 0
    assert "wrong" in capsys.readouterr().out
