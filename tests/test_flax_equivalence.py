"""rnnjax cells against flax.linen's SimpleCell, LSTMCell and GRUCell, given the same weights.

Both directions of the parameter conversion are checked (rnnjax init -> Flax, and
Flax init -> rnnjax), per step and over whole sequences, and ``nn.RNN`` driving an
rnnjax cell through ``FlaxCell``.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cells, flax_compat, recurrence

T, B, D, H = 7, 3, 5, 6
TOL = dict(rtol=2e-5, atol=2e-5)


def _inputs(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, T, D))  # Flax's [B, T, D]


def _perturbed(params, seed=1):
    """Random non-zero biases too, so that a misplaced bias cannot go unnoticed."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


CASES = [
    ("vanilla", lambda: cells.vanilla(H, "tanh"), {}),
    ("vanilla", lambda: cells.vanilla(H, "relu"), {"activation_fn": nn.relu}),
    ("lstm", lambda: cells.lstm(H), {}),
    ("gru", lambda: cells.gru(H), {}),
]


@pytest.mark.parametrize("kind,make,flax_kw", CASES, ids=["tanh", "relu", "lstm", "gru"])
def test_rnnjax_weights_in_flax_cell_give_same_sequence(kind, make, flax_kw):
    cell = make()
    params = _perturbed(cell.init(jax.random.PRNGKey(0), D))
    xs = _inputs()
    ours, hs = recurrence.unroll(cell, params, xs, time_major=False)

    fcell = flax_compat.flax_cell(kind, H, **flax_kw)
    carry0 = fcell.initialize_carry(jax.random.PRNGKey(2), (B, D))
    final, ys = nn.RNN(fcell, return_carry=True).apply(
        {"params": {"cell": flax_compat.to_flax(kind, params)}}, xs, initial_carry=carry0)
    chex.assert_trees_all_close(ys, hs, **TOL)
    # The final carries agree too; for the LSTM both are (c, h) in that order.
    chex.assert_trees_all_close(tuple(jax.tree_util.tree_leaves(final)),
                                tuple(jax.tree_util.tree_leaves(ours)), **TOL)


@pytest.mark.parametrize("kind,make", [("vanilla", lambda: cells.vanilla(H)),
                                       ("lstm", lambda: cells.lstm(H)),
                                       ("gru", lambda: cells.gru(H))])
def test_flax_init_converted_to_rnnjax_gives_same_step_and_round_trips(kind, make):
    cell = make()
    fcell = flax_compat.flax_cell(kind, H, bias_init=nn.initializers.normal(0.5))
    x = _inputs()[:, 0]
    carry = jax.tree_util.tree_map(
        lambda z: z + 0.5, fcell.initialize_carry(jax.random.PRNGKey(0), x.shape))
    variables = fcell.init(jax.random.PRNGKey(3), carry, x)
    (fc, fh) = fcell.apply(variables, carry, x)

    params = flax_compat.from_flax(kind, variables)  # the whole variables dict is accepted
    rc = cells.LSTMCarry(*carry) if kind == "lstm" else carry
    rc, rh = cell.step(params, rc, x)
    chex.assert_trees_all_close(rh, fh, **TOL)
    chex.assert_trees_all_close(tuple(jax.tree_util.tree_leaves(rc)),
                                tuple(jax.tree_util.tree_leaves(fc)), **TOL)
    # Round trip Flax -> rnnjax -> Flax is the identity.
    back = flax_compat.to_flax(kind, params)
    chex.assert_trees_all_equal(back, jax.tree_util.tree_map(jnp.asarray, variables["params"]))


def test_nn_rnn_drives_an_rnnjax_cell_through_the_adapter():
    cell = cells.lstm(H)
    rnn = nn.RNN(flax_compat.FlaxCell(cell))
    xs = _inputs()
    variables = rnn.init(jax.random.PRNGKey(0), xs)
    params = variables["params"]["cell"]
    assert set(params) == {"W_xh", "W_hh", "b"}
    # The adapter initialises with cell.init, so the LSTM forget bias is kept.
    np.testing.assert_allclose(params["b"][H:2 * H], 1.0)
    ys = rnn.apply(variables, xs)
    chex.assert_shape(ys, (B, T, H))
    _, hs = recurrence.unroll(cell, params, xs, time_major=False)
    chex.assert_trees_all_close(ys, hs, **TOL)

    # Trainable through Flax: gradients flow to every rnnjax weight.
    grads = jax.grad(lambda v: jnp.sum(rnn.apply(v, xs) ** 2))(variables)
    for name, g in grads["params"]["cell"].items():
        assert float(jnp.abs(g).sum()) > 0, name


def test_adapter_supports_variable_lengths_like_nn_rnn():
    cell = cells.gru(H)
    rnn = nn.RNN(flax_compat.FlaxCell(cell), return_carry=True)
    xs = _inputs()
    lengths = jnp.array([7, 3, 1])
    variables = rnn.init(jax.random.PRNGKey(0), xs)
    final, ys = rnn.apply(variables, xs, seq_lengths=lengths)
    ours, hs = recurrence.unroll(cell, variables["params"]["cell"], xs, lengths=lengths,
                                 time_major=False)
    chex.assert_trees_all_close(final, ours, **TOL)
    mask = np.asarray(recurrence.sequence_mask(lengths, T)).T[..., None]  # [B, T, 1]
    chex.assert_trees_all_close(jnp.where(mask, ys, 0.0), hs, **TOL)  # nn.RNN leaves padding


def test_flax_unroll_module_matches_recurrence_and_keeps_learned_initial_state():
    cell = cells.vanilla(H, learn_initial_state=True)
    layer = flax_compat.FlaxUnroll(cell)
    xs = _inputs()
    variables = layer.init(jax.random.PRNGKey(0), xs)
    assert set(variables["params"]) == {"W_xh", "W_hh", "b_h", "h0"}
    params = _perturbed(variables["params"])
    final, hs = layer.apply({"params": params}, xs, lengths=jnp.array([7, 2, 5]), reverse=True)
    ours = recurrence.unroll(cell, params, xs, lengths=jnp.array([7, 2, 5]), reverse=True,
                             time_major=False)
    chex.assert_trees_all_close((final, hs), ours, **TOL)


def test_bad_input_names_what_is_accepted():
    with pytest.raises(ValueError, match="accepted: vanilla, lstm, gru"):
        flax_compat.to_flax("mrnn", {})
    with pytest.raises(ValueError, match="no Flax counterpart"):
        flax_compat.kind_of(cells.mrnn(4))
    cell = cells.lstm(H, learn_initial_state=True)
    with pytest.raises(ValueError, match="learned initial state"):
        flax_compat.to_flax(cell, cell.init(jax.random.PRNGKey(0), D))
    incomplete = flax_compat.to_flax("gru", cells.gru(H).init(jax.random.PRNGKey(0), D))
    del incomplete["hn"]["bias"]
    with pytest.raises(ValueError, match="missing parameter hn/bias"):
        flax_compat.from_flax("gru", incomplete)
    with pytest.raises(ValueError, match="learn_initial_state"):
        nn.RNN(flax_compat.FlaxCell(cell)).init(jax.random.PRNGKey(0), _inputs())
