"""The hand-written BPTT equals jax.grad through the scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import bptt, cells, recurrence


def make_params(key, D, H, O, dtype, learn_h0):
    cell = cells.vanilla(H, "tanh", learn_initial_state=learn_h0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = cell.init(k1, D)
    params["b_h"] = 0.1 * jax.random.normal(k2, (H,))
    if learn_h0:
        params["h0"] = 0.3 * jnp.ones((H,))
    params["W_hy"] = 0.5 * jax.random.normal(k3, (H, O))
    params["b_y"] = jnp.full((O,), 0.1)
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


def autodiff_loss(params, xs, targets, activation, loss):
    """The same model built from rnnjax.cells + recurrence.unroll; jax.grad does BPTT."""
    cell = cells.vanilla(params["W_hh"].shape[0], activation)
    _, hs = recurrence.unroll(cell, params, xs)
    ys = hs @ params["W_hy"] + params["b_y"]
    return bptt.LOSSES[loss](ys, targets)[0]


CASES = [("tanh", 7, 3, "squared"), ("relu", 12, 1, "squared"), ("identity", 5, 4, "squared"),
         ("logistic", 9, 2, "softmax_cross_entropy"), ("tanh", 30, 2, "softmax_cross_entropy")]


def _run_case(activation, T, B, loss, dtype, learn_h0=True):
    D, H, O = 3, 6, 4
    params = make_params(jax.random.PRNGKey(T), D, H, O, dtype, learn_h0)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), dtype)
    if loss == "squared":
        targets = jax.random.normal(jax.random.PRNGKey(2), (T, B, O), dtype)
    else:
        targets = jax.random.randint(jax.random.PRNGKey(2), (T, B), 0, O)
    # jit each side whole: one compile instead of many small eager ones.
    value, grads = jax.jit(lambda p, x, y: bptt.loss_and_grads(
        p, x, y, activation=activation, loss=loss))(params, xs, targets)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(
        lambda p, x, y: autodiff_loss(p, x, y, activation, loss)))(params, xs, targets)
    return value, grads, ref_value, ref_grads


@pytest.mark.parametrize("activation, T, B, loss", CASES)
def test_bptt_equals_jax_grad_float32(activation, T, B, loss):
    value, grads, ref_value, ref_grads = _run_case(activation, T, B, loss, jnp.float32)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert set(grads) == set(ref_grads)
    for name in grads:
        scale = float(jnp.max(jnp.abs(ref_grads[name]))) + 1e-6
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)


@pytest.mark.parametrize("activation, T, B, loss", CASES)
def test_bptt_equals_jax_grad_float64(activation, T, B, loss):
    jax.config.update("jax_enable_x64", True)
    try:
        value, grads, ref_value, ref_grads = _run_case(activation, T, B, loss, jnp.float64)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        for name in grads:
            np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=1e-10,
                                       err_msg=name)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_without_learned_initial_state_and_threshold_has_no_gradient():
    value, grads, _, ref = _run_case("tanh", 4, 2, "squared", jnp.float32, learn_h0=False)
    assert "h0" not in grads and "h0" not in ref
    params = make_params(jax.random.PRNGKey(0), 3, 6, 4, jnp.float32, False)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
    _, grads = bptt.loss_and_grads(params, xs, jnp.zeros((5, 2, 4)), activation="threshold")
    for name in ("W_xh", "W_hh", "b_h"):
        assert np.all(np.asarray(grads[name]) == 0.0)


def test_unknown_loss_and_activation():
    params = make_params(jax.random.PRNGKey(0), 3, 6, 4, jnp.float32, False)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        bptt.loss_and_grads(params, jnp.ones((2, 1, 3)), jnp.ones((2, 1, 4)), loss="hinge")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        bptt.backward(params, bptt.forward(params, jnp.ones((2, 1, 3))), jnp.ones((2, 1, 4)),
                      activation="swish")
