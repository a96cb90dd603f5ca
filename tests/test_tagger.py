"""rnnjax.models.tagger: a cell with a linear readout at every step."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax import cells, losses, recurrence
from rnnjax.data import synthetic
from rnnjax.models import tagger


@pytest.mark.parametrize("cell", [cells.vanilla(5), cells.lstm(5, learn_initial_state=True),
                                  cells.gru(5, fused=False), cells.mrnn(5),
                                  [cells.gru(4), cells.vanilla(5, "relu")]],
                         ids=["tanh", "lstm_h0", "gru_scan", "mrnn", "stack"])
def test_shapes_and_dtypes(cell):
    model = tagger.make(cell, input_size=3, output_size=2)
    params = model.init(jax.random.key(0))
    xs = jnp.ones((7, 4, 3))
    out, hs = model.outputs_and_hiddens(params, xs)
    chex.assert_shape(out, (7, 4, 2))
    chex.assert_shape(hs, (7, 4, 5))
    chex.assert_type([out, hs], jnp.float32)
    np.testing.assert_array_equal(model.apply(params, xs), out)
    np.testing.assert_array_equal(model.readout(params, model.hiddens(params, xs)), out)


def test_init_is_the_split_key_model_it_replaces():
    """Cell from the first half of the key, W_hy = normal(second half) / sqrt(H), b_y = 0:
    the per-step readout model the experiments had, so their runs keep their numbers."""
    cell = cells.vanilla(6)
    key = jax.random.key(3)
    params = tagger.make(cell, 1, 2).init(key)
    k_cell, k_out = jax.random.split(key)
    chex.assert_trees_all_equal(params["cell"], cell.init(k_cell, 1))
    np.testing.assert_array_equal(params["W_hy"], jax.random.normal(k_out, (6, 2)) / np.sqrt(6))
    np.testing.assert_array_equal(params["b_y"], np.zeros(2))
    scaled = tagger.make(cell, 1, 2, readout_scale=0.1).init(key)
    np.testing.assert_array_equal(scaled["W_hy"], 0.1 * jax.random.normal(k_out, (6, 2)))


@functools.lru_cache(maxsize=None)
def _padding_setup():
    """One model, its params, inputs [6, 3, 2] and a jitted apply, shared by the examples."""
    model = tagger.make(cells.lstm(4), 2, 3)
    return (model.init(jax.random.key(1)), jax.random.normal(jax.random.key(2), (6, 3, 2)),
            jax.jit(model.apply))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=3, max_size=3), st.floats(-1e3, 1e3))
def test_padded_steps_are_zero_and_change_nothing(lengths, junk):
    params, xs, apply = _padding_setup()
    lengths = jnp.asarray(lengths)
    real = np.arange(6)[:, None] < np.asarray(lengths)[None, :]
    out = apply(params, jnp.where(real[..., None], xs, junk), lengths)
    full = apply(params, xs, None)   # the recurrence is causal
    np.testing.assert_array_equal(np.asarray(out)[~real], 0.0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(full)[real], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("knobs", [dict(unroll=3), dict(remat=True)])
def test_unroll_and_remat_change_only_speed_and_memory(knobs):
    base = tagger.make(cells.gru(4), 2, 2)
    other = tagger.make(cells.gru(4), 2, 2, **knobs)
    params = base.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (9, 3, 2))
    loss = lambda m: jax.value_and_grad(lambda p: jnp.sum(m.apply(p, xs) ** 2))(params)
    (l0, g0), (l1, g1) = loss(base), loss(other)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    chex.assert_trees_all_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_learns_running_parity_on_a_tiny_configuration():
    model = tagger.make(cells.vanilla(8), 1, 2)
    task = synthetic.get("parity")
    opt = optax.adam(0.03)

    def loss_fn(p, batch):
        return losses.cross_entropy(model.apply(p, batch.inputs), batch.targets)

    @jax.jit
    def step(p, s, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s, loss

    params = model.init(jax.random.key(0))
    state = opt.init(params)
    history = []
    for i in range(200):
        params, state, loss = step(params, state,
                                   task.generate(jax.random.key(i), 32, 6))
        history.append(float(loss))
    assert history[-1] < 0.2 * history[0]
    held_out = task.generate(jax.random.key(10_000), 200, 6)
    acc = losses.accuracy(model.apply(params, held_out.inputs), held_out.targets)
    assert float(acc) > 0.95


def test_a_sequence_of_cells_is_stacked():
    layers = [cells.vanilla(4), cells.lstm(3)]
    model = tagger.make(layers, 2, 1)
    params = model.init(jax.random.key(0))
    assert isinstance(params["cell"], tuple) and len(params["cell"]) == 2
    xs = jnp.ones((5, 2, 2))
    _, expected = recurrence.unroll(recurrence.stack(layers), params["cell"], xs)
    np.testing.assert_array_equal(model.hiddens(params, xs), expected)


@pytest.mark.parametrize("args, kwargs, match", [
    (("lstm", 2, 2), {}, "cell must be a Cell"),
    (([], 2, 2), {}, "cell must be a Cell"),
    ((cells.lstm(3), 0, 2), {}, "input_size"),
    ((cells.lstm(3), 2, 2.5), {}, "output_size"),
    ((cells.lstm(3), 2, 2), {"unroll": 0}, "unroll"),
    ((cells.lstm(3), 2, 2), {"readout_scale": float("nan")}, "readout_scale"),
])
def test_bad_arguments_are_named(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tagger.make(*args, **kwargs)


def test_wrong_input_size_is_named_before_any_work():
    model = tagger.make(cells.lstm(3), 2, 2)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="input size 2"):
        model.apply(params, jnp.ones((4, 2, 5)))
