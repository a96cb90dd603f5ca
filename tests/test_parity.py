"""Parity learned by BPTT on a tiny configuration, and the experiment's probes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import parity
from rnnjax import cells, handset, optimizers


def test_rnn_learns_running_parity_on_a_tiny_configuration():
    cell = cells.by_name("tanh", 8)
    logits_fn = functools.partial(parity.rnn_logits, cell)
    state, history = parity.train_model(
        None, parity.init_rnn(jax.random.key(0), cell), logits_fn, steps=200, seed=0,
        batch_size=32, length=6, optimizer=optimizers.make("adam", 0.03), clip_norm=1.0,
        log_every=50)
    assert history[-1]["loss"] < 0.1 < history[0]["loss"]
    held_out = parity.accuracy(logits_fn, state.params, jax.random.key(123), 6, 300)
    assert held_out["sequence"] == 1.0  # every held-out sequence right at every step


def test_window_network_fails_beyond_its_window():
    k = 4
    logits_fn = functools.partial(parity.mlp_logits, k)
    state, _ = parity.train_model(
        None, parity.init_mlp(jax.random.key(0), k, 32), logits_fn, steps=300, seed=0,
        batch_size=32, length=k, optimizer=optimizers.make("adam", 1e-2), clip_norm=None,
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


def test_truth_tables_of_the_hand_set_network():
    tables = parity.lecture_truth_tables(handset.parity_network().params)
    assert tables == {"h1 (prev output, input)": "AND", "h2 (prev output, input)": "OR",
                      "output (h1, h2)": "b AND NOT a"}


def test_negated_units_are_mapped_back_to_the_hand_set_form():
    hand = handset.parity_network().params
    flipped = parity.negate_hidden_unit(parity.negate_hidden_unit(hand, 0), 1)
    assert parity.lecture_truth_tables(flipped)["h1 (prev output, input)"] == "NAND"
    # The flipped network computes the same parity (logistic units, large weights).
    cell = parity.lecture_cell()
    xs = jax.random.bernoulli(jax.random.key(0), 0.5, (30, 4, 1)).astype(jnp.float32)
    run = lambda p: parity.lecture_outputs({k: 20 * jnp.asarray(v, jnp.float32) for k, v in p.items()}, xs)
    np.testing.assert_allclose(run(flipped), run(hand), atol=1e-4)
    canon = parity.canonical_lecture_params(flipped)
    for k, v in hand.items():
        np.testing.assert_allclose(canon[k], v, atol=1e-6)
    table = parity.lecture_weight_table(flipped)
    assert table.count("+1.000") == 3  # every unit's cosine with the hand-set one
    assert cell.hidden_size == 3


def test_steep_cell_scales_preactivations():
    base = cells.vanilla(3, "tanh")
    params = base.init(jax.random.key(0), 1)
    xs = jnp.ones((4, 2, 1))
    from rnnjax import recurrence
    _, slow = recurrence.unroll(base, {**params, "W_xh": 2 * params["W_xh"],
                                       "W_hh": 2 * params["W_hh"], "b_h": 2 * params["b_h"]}, xs)
    _, fast = recurrence.unroll(parity.steep(base, 2.0), params, xs)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steepness"):
        parity.steep(cells.lstm(3), 2.0)
