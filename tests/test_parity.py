"""Parity learned by BPTT on a tiny configuration, and the experiment's run() and settings.

The truth-table probes and cells.steep that the experiment uses are tested in
test_handset.py and test_cells.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli, parity
from rnnjax import errors, handset
from rnnjax.optim import factory


def test_rnn_learns_running_parity_on_a_tiny_configuration():
    config = dataclasses.replace(parity.Config(), hidden=8)
    model = parity.rnn_model(config)
    state, history = parity.train_model(
        None, model.init(jax.random.key(0)), model.apply, steps=200, seed=0,
        batch_size=32, length=6, optimizer=factory.make("adam", 0.03), clip_norm=1.0,
        log_every=50)
    assert history[-1]["loss"] < 0.1 < history[0]["loss"]
    held_out = parity.accuracy(model.apply, state.params, jax.random.key(123), 6, 300)
    assert held_out["sequence"] == 1.0  # every held-out sequence right at every step


def test_window_network_fails_beyond_its_window():
    k = 4
    logits_fn = functools.partial(parity.mlp_logits, k)
    state, _ = parity.train_model(
        None, parity.init_mlp(jax.random.key(0), k, 32), logits_fn, steps=300, seed=0,
        batch_size=32, length=k, optimizer=factory.make("adam", 1e-2), clip_norm=None,
        log_every=100)
    assert parity.accuracy(logits_fn, state.params, jax.random.key(1), k, 300)["step"] > 0.98
    long = parity.accuracy(logits_fn, state.params, jax.random.key(2), 10 * k, 300, split=k)
    assert long["early"] > 0.98  # inside its window it still knows
    assert 0.4 < long["late"] < 0.6  # beyond it, chance


def test_windows_shape_and_content():
    xs = jnp.arange(1.0, 6.0).reshape(5, 1, 1)  # [T=5, B=1, 1]
    w = parity.windows(xs, 3)
    assert w.shape == (5, 1, 3)
    np.testing.assert_array_equal(w[:, 0], [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]])


def test_lecture_logits_follow_the_output_unit():
    hand = {k: 20 * jnp.asarray(v, jnp.float32) for k, v in handset.parity_network().params.items()}
    xs = jax.random.bernoulli(jax.random.key(0), 0.5, (12, 3, 1)).astype(jnp.float32)
    logits = parity.lecture_logits(hand, xs)
    assert logits.shape == (12, 3, 2)
    parity_bits = jnp.cumsum(xs[..., 0], axis=0) % 2
    np.testing.assert_array_equal(jnp.argmax(logits, -1), parity_bits)


def test_run_trains_measures_and_writes_results(tmp_path):
    config = dataclasses.replace(
        parity.Config(), steps=200, batch_size=32, hidden=8, train_length=6, length_factors=(2,),
        learning_rate=0.03, eval_sequences=100, lecture_steps=20, lecture_seeds=2,
        window_steps=20, window_hidden=8, log_every=50, checkpoint_every=100, progress=False)
    workdir = tmp_path / "parity"
    results = parity.run(config, str(workdir))
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["test_lengths"] == [6, 12] and set(saved) >= {"rnn", "lecture", "window"}
    rnn = results["rnn"]
    assert rnn["accuracy"][6]["step"] > 0.9  # learned: chance is 0.5
    assert rnn["final_train_loss"] < 0.1
    assert sum(rnn["unit_functions"].values()) == 8
    assert results["lecture"]["hand_set_truth_tables"]["output (h1, h2)"] == "b AND NOT a"
    assert json.loads((workdir / "config.json").read_text())["hidden"] == 8
    # A rerun with a setting that shapes the model is refused before anything is written.
    before = (workdir / "results.json").read_text()
    with pytest.raises(errors.ConfigMismatchError, match="hidden: saved 8, given 9"):
        parity.run(dataclasses.replace(config, hidden=9), str(workdir))
    assert (workdir / "results.json").read_text() == before


@pytest.mark.parametrize("change,message", [
    (dict(models=("rnn", "tree")), "models=('rnn', 'tree') is invalid: accepted: a comma"),
    (dict(models=()), "models=() is invalid"),
    (dict(length_factors=(10, 0)), "length_factors=(10, 0) is invalid"),
    (dict(length_factors=()), "length_factors=() is invalid"),
    (dict(steepness=2.0, cell="lstm"), "steepness=2.0 is invalid: applies to vanilla cells"),
    (dict(steepness=float("nan")), "steepness=nan is invalid: expected a finite number"),
    (dict(window=0), "window=0 is invalid"),
    (dict(train_length=0), "train_length=0 is invalid"),
])
def test_bad_settings_are_refused_before_any_work(change, message, tmp_path):
    with pytest.raises(cli.ConfigError, match=re.escape(message)):
        parity.run(dataclasses.replace(parity.Config(), **change), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_defaults_are_the_flags_of_before():
    c = parity.Config()
    assert (c.steps, c.batch_size, c.learning_rate, c.hidden, c.clip_norm, c.log_every,
            c.checkpoint_every) == (1000, 64, 1e-2, 16, 1.0, 100, 500)
    assert (c.train_length, c.length_factors, c.eval_sequences, c.window, c.lecture_seeds,
            c.models) == (10, (10, 100), 1000, None, 8, ("rnn", "lecture", "window"))
