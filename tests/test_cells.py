"""Every cell: shapes, dtypes, jit/grad/vmap, finite-difference gradients, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnnjax import cells, initializers, recurrence

D, H, B = 3, 5, 4
TRAINABLE = ["tanh", "relu", "identity", "logistic", "irnn", "lstm", "gru", "mrnn"]


def make(name, **kw):
    cell = cells.by_name(name, H, **kw)
    return cell, cell.init(jax.random.PRNGKey(1), D)


@pytest.mark.parametrize("name", cells.CELL_NAMES)
def test_step_shapes_and_dtypes(name):
    cell, params = make(name)
    carry = cell.initial_carry(params, B)
    new_carry, h = jax.jit(cell.step)(params, carry, jnp.ones((B, D)))
    chex.assert_shape(h, (B, H))
    chex.assert_type(h, jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(carry, new_carry)
    chex.assert_trees_all_close(cell.output(new_carry), h)


@pytest.mark.parametrize("name", ["tanh", "lstm", "gru", "mrnn"])
def test_bfloat16_compute_keeps_float32_params_and_is_close(name):
    cell32, params = make(name)
    cell16 = cells.by_name(name, H, dtype=jnp.bfloat16)
    xs = jax.random.normal(jax.random.PRNGKey(2), (6, B, D))
    _, h32 = recurrence.unroll(cell32, params, xs)
    _, h16 = recurrence.unroll(cell16, params, xs)
    chex.assert_type(h16, jnp.float32)  # accumulation stays float32
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda p: p.dtype == jnp.float32, params))
    np.testing.assert_allclose(h16, h32, atol=5e-2)


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradients_match_finite_differences(name):
    jax.config.update("jax_enable_x64", True)
    try:
        cell = cells.by_name(name, H, learn_initial_state=True)
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                        cell.init(jax.random.PRNGKey(1), D))
        # Move biases and h0 off zero so every parameter has a non-trivial gradient.
        params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
        xs = jax.random.normal(jax.random.PRNGKey(2), (4, 2, D), jnp.float64)

        def loss(p):
            _, hs = recurrence.unroll(cell, p, xs)
            return jnp.sum(jnp.sin(hs))

        check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", ["tanh", "lstm", "gru", "mrnn"])
def test_vmap_over_params_equals_loop(name):
    cell = cells.by_name(name, H)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    stacked = jax.vmap(lambda k: cell.init(k, D))(keys)
    xs = jax.random.normal(jax.random.PRNGKey(2), (5, B, D))
    _, hs = jax.vmap(lambda p: recurrence.unroll(cell, p, xs))(stacked)
    for i, k in enumerate(keys):
        _, h_i = recurrence.unroll(cell, cell.init(k, D), xs)
        np.testing.assert_allclose(hs[i], h_i, rtol=1e-5, atol=1e-6)


def test_threshold_units_are_binary_and_have_zero_gradient():
    cell, params = make("threshold")
    xs = jax.random.normal(jax.random.PRNGKey(2), (6, B, D))
    _, hs = recurrence.unroll(cell, params, xs)
    assert set(np.unique(np.asarray(hs))) <= {0.0, 1.0}
    grads = jax.grad(lambda p: recurrence.unroll(cell, p, xs)[1].sum())(params)
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.asarray(g) == 0.0)


def test_learned_initial_state_is_used_at_the_first_step():
    cell = cells.vanilla(H, "tanh", learn_initial_state=True)
    params = cell.init(jax.random.PRNGKey(0), D)
    params["h0"] = jnp.full((H,), 0.5)
    carry = cell.initial_carry(params, B)
    np.testing.assert_allclose(carry, 0.5)
    # The initial state enters like an extra bias W_hh^T h0 at step 1, and is trained.
    xs = jnp.zeros((1, B, D))
    _, hs = recurrence.unroll(cell, params, xs)
    np.testing.assert_allclose(hs[0], jnp.tanh(carry @ params["W_hh"]), rtol=1e-6)
    g = jax.grad(lambda p: recurrence.unroll(cell, p, xs)[1].sum())(params)
    assert np.abs(np.asarray(g["h0"])).sum() > 0


def test_lstm_forget_bias_and_gate_layout():
    cell = cells.lstm(H, forget_bias=2.0)
    params = cell.init(jax.random.PRNGKey(0), D)
    np.testing.assert_array_equal(params["b"][H:2 * H], 2.0)
    np.testing.assert_array_equal(params["b"][:H], 0.0)
    chex.assert_shape([params["W_xh"], params["W_hh"]], [(D, 4 * H), (H, 4 * H)])


def test_mrnn_input_selects_the_transition_matrix():
    """With W_hx = 0 and b = 0, h_t = tanh(h_{t-1} W_fh diag(W_fx^T x_t) W_hf)."""
    cell = cells.mrnn(H, factors=7)
    params = cell.init(jax.random.PRNGKey(0), D)
    params["W_hx"] = jnp.zeros_like(params["W_hx"])
    h = jax.random.normal(jax.random.PRNGKey(1), (B, H))
    x = jax.random.normal(jax.random.PRNGKey(2), (B, D))
    _, out = cell.step(params, h, x)
    for b in range(B):
        w_x = params["W_fh"] @ jnp.diag(x[b] @ params["W_fx"]) @ params["W_hf"]
        np.testing.assert_allclose(out[b], jnp.tanh(h[b] @ w_x), rtol=1e-5, atol=1e-6)


def test_initializers():
    k = jax.random.PRNGKey(0)
    w = cells.vanilla(8, recurrent_init="orthogonal").init(k, 2)["W_hh"]
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)
    w = cells.by_name("irnn", 8).init(k, 2)["W_hh"]
    np.testing.assert_array_equal(w, np.eye(8))
    w = cells.vanilla(8, recurrent_init="glorot", spectral_radius=1.3).init(k, 2)["W_hh"]
    np.testing.assert_allclose(initializers.spectral_radius(w), 1.3, rtol=1e-5)
    w = cells.lstm(4, recurrent_init="identity").init(k, 2)["W_hh"]
    np.testing.assert_array_equal(w, np.tile(np.eye(4), (1, 4)))


@pytest.mark.parametrize("bad, match", [
    (lambda: cells.by_name("elman", 4), "unknown cell 'elman'; accepted: tanh"),
    (lambda: cells.vanilla(4, "swish"), "unknown activation 'swish'; accepted"),
    (lambda: cells.lstm(-3), "hidden_size must be a positive integer, got -3"),
    (lambda: cells.vanilla(4, recurrent_init="magic"), "unknown initialiser 'magic'"),
    (lambda: cells.vanilla(4, spectral_radius=-1.0).init(jax.random.PRNGKey(0), 2),
     "spectral radius must be > 0"),
    (lambda: cells.gru(4).init(jax.random.PRNGKey(0), 0), "input_size must be a positive"),
])
def test_bad_configuration_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_wrong_feature_size_names_expected_shape():
    cell, params = make("lstm")
    with pytest.raises(ValueError, match=r"initialised for input size 3; expected \[\.\.\., 3\]"):
        cell.step(params, cell.initial_carry(params, B), jnp.ones((B, 7)))


def test_gru_update_bias_keeps_the_state_at_initialisation():
    cell = cells.gru(H, update_bias=3.0)
    params = cell.init(jax.random.PRNGKey(0), D)
    np.testing.assert_array_equal(params["b_x"][H:2 * H], 3.0)
    h = jax.random.normal(jax.random.PRNGKey(1), (B, H))
    _, out = cell.step(params, h, jnp.zeros((B, D)))
    # z = sigmoid(3 + h W_hz) is near 1, so h' stays close to h.
    assert float(jnp.max(jnp.abs(out - h))) < 0.5 * float(jnp.max(jnp.abs(h)))


@pytest.mark.parametrize("fused", [False, True])
def test_steep_scales_preactivations(fused):
    base = cells.vanilla(3, "tanh", fused=fused, learn_initial_state=True)
    params = base.init(jax.random.key(0), 1)
    params["h0"] = jnp.full((3,), 0.3)
    xs = jax.random.normal(jax.random.key(1), (4, 2, 1))
    doubled = {**params, "W_xh": 2 * params["W_xh"], "W_hh": 2 * params["W_hh"],
               "b_h": 2 * params["b_h"] + 0.1}
    steep_params = {**params, "b_h": params["b_h"] + 0.05}
    cell = cells.steep(base, 2.0)
    assert cell.name == "vanilla[tanh]*2"
    loss = lambda c, p: jnp.sum(recurrence.unroll(c, p, xs, remat=False)[1] ** 2)
    np.testing.assert_allclose(loss(cell, steep_params), loss(base, doubled), rtol=1e-5)
    # The gradient with respect to the unscaled params is beta times the scaled one's.
    g_steep = jax.grad(loss, argnums=1)(cell, steep_params)
    g_base = jax.grad(loss, argnums=1)(base, doubled)
    for k in ("W_xh", "W_hh", "b_h"):
        np.testing.assert_allclose(g_steep[k], 2 * g_base[k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_steep["h0"], g_base["h0"], rtol=1e-4, atol=1e-6)
    # remat runs the generic scan of the steep steps: the same numbers.
    _, remat_hs = recurrence.unroll(cell, steep_params, xs, remat=True)
    np.testing.assert_allclose(remat_hs, recurrence.unroll(base, doubled, xs)[1], rtol=1e-5)
    assert cells.steep(base, 1.0) is base
    with pytest.raises(ValueError, match="steepness"):
        cells.steep(cells.lstm(3), 2.0)
