"""Gradient-flow diagnostics (dL/dh_t, Jacobian products, Lyapunov exponents, verdict) and
their plots."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cells, diagnostics, plots, recurrence

T, B, D, H = 7, 2, 3, 4


def _tanh_setup():
    cell = cells.vanilla(H, "tanh", recurrent_init="glorot")
    params = cell.init(jax.random.PRNGKey(0), D)
    params["W_hh"] = params["W_hh"] * 2.0          # a strongly coupled small net
    params["b_h"] = 0.1 * jnp.arange(H, dtype=jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
    w = jax.random.normal(jax.random.PRNGKey(2), (H,))
    return cell, params, xs, w


def _manual_bptt(params, xs, w, every_step):
    """dL/dh_t by the backward recursion written out in numpy (vanilla tanh cell).

    Loss: sum over scored steps s of sum_b (h_s[b] . w)^2 / 2.
    delta_t = dl_t/dh_t + (delta_{t+1} * (1 - h_{t+1}^2)) W_hh^T.
    """
    W_xh, W_hh, b = (np.asarray(params[k], np.float64) for k in ("W_xh", "W_hh", "b_h"))
    x = np.asarray(xs, np.float64)
    w = np.asarray(w, np.float64)
    h = np.zeros((B, H))
    hs = []
    for t in range(T):
        h = np.tanh(x[t] @ W_xh + h @ W_hh + b)
        hs.append(h)
    deltas = [None] * T
    nxt = np.zeros((B, H))
    for t in reversed(range(T)):
        local = (hs[t] @ w)[:, None] * w[None, :] if (every_step or t == T - 1) else 0.0
        carried = (nxt * (1 - hs[t + 1] ** 2)) @ W_hh.T if t + 1 < T else 0.0
        deltas[t] = local + carried
        nxt = deltas[t]
    return np.stack(deltas)


@pytest.mark.parametrize("every_step", [False, True])
def test_hidden_gradients_match_manual_bptt(every_step):
    cell, params, xs, w = _tanh_setup()

    def loss_fn(hs):
        scored = hs if every_step else hs[-1:]
        return 0.5 * jnp.sum((scored @ w) ** 2)

    expected = _manual_bptt(params, xs, w, every_step)
    # float64 (as the numpy reference): the two agree to float64 rounding.
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
        grads64 = diagnostics.hidden_state_gradients(cell, as64(params), as64(xs), loss_fn)
        assert grads64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(grads64), expected, rtol=1e-10, atol=1e-12)
    # float32: rounding relative to the largest gradient, growing at most with the T
    # steps it passes through (a margin of 64 units in the last place per step).
    grads = diagnostics.hidden_state_gradients(cell, params, xs, loss_fn)
    chex.assert_shape(grads, (T, B, H))
    scale = np.abs(expected).max()
    tol = 64 * T * np.finfo(np.float32).eps * scale
    np.testing.assert_allclose(np.asarray(grads), expected, rtol=0, atol=tol)
    norms = diagnostics.hidden_gradient_norms(cell, params, xs, loss_fn)
    np.testing.assert_allclose(np.asarray(norms), np.linalg.norm(expected.reshape(T, -1), axis=1),
                               rtol=0, atol=np.sqrt(B * H) * tol)


@pytest.mark.parametrize("which", ["lstm", "stack"])
def test_gated_and_stacked_cells_perturb_the_output(which):
    """dL/dh_t equals the gradient of a rerun from step t's carry with its output h_t
    replaced: h of the LSTM (c held), the top layer's state of a stack."""
    if which == "lstm":
        cell = cells.lstm(H)
    else:
        cell = recurrence.stack([cells.vanilla(H, "tanh"), cells.gru(H)])
    params = cell.init(jax.random.PRNGKey(3), D)
    xs = jax.random.normal(jax.random.PRNGKey(4), (T, B, D))
    w = jax.random.normal(jax.random.PRNGKey(5), (H,))
    loss_fn = lambda hs: jnp.sum(jnp.tanh(hs[-1] @ w))
    grads = diagnostics.hidden_state_gradients(cell, params, xs, loss_fn)
    t = 2
    carry_t, _ = recurrence.unroll(cell, params, xs[:t + 1])

    def from_h(h_t):
        c = diagnostics.perturb_output(carry_t, h_t - cell.output(carry_t))
        _, hs = recurrence.unroll(cell, params, xs[t + 1:], carry=c)
        return loss_fn(hs)

    direct = jax.grad(from_h)(cell.output(carry_t))
    np.testing.assert_allclose(np.asarray(grads[t]), np.asarray(direct), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("a,kind", [(0.5, "vanishing"), (1.0, "healthy"), (1.25, "exploding")])
def test_linear_rnn_gradients_scale_as_a_to_the_k(a, kind):
    steps, hidden = 40, 5
    cell = cells.vanilla(hidden, "identity")
    params = cell.init(jax.random.PRNGKey(0), 2)
    params["W_hh"] = a * jnp.eye(hidden)
    xs = jax.random.normal(jax.random.PRNGKey(1), (steps, 3, 2))
    w = jax.random.normal(jax.random.PRNGKey(2), (hidden,))
    norms = np.asarray(diagnostics.hidden_gradient_norms(
        cell, params, xs, lambda hs: jnp.sum(hs[-1] @ w)), np.float64)
    lags = np.arange(steps)
    np.testing.assert_allclose(norms[::-1] / norms[-1], a ** lags, rtol=1e-4)

    v = diagnostics.verdict(norms)
    assert v.kind == kind
    assert v.rate_per_step == pytest.approx(a, rel=1e-4)
    assert v.span == steps
    if kind == "vanishing":
        # 0.5^k falls below 1e-3 first at k = 10.
        assert v.horizon == math.ceil(math.log(1e-3) / math.log(a))
    else:
        assert v.horizon == steps
    assert kind in str(v)

    # The same rate from the Jacobians, the spectral radius and the Lyapunov exponent.
    Js = diagnostics.state_jacobians(cell, params, xs)
    chex.assert_shape(Js, (steps, hidden, hidden))
    prods = diagnostics.jacobian_products(Js, max_lag=12)
    np.testing.assert_allclose(prods.norms, a ** prods.lags, rtol=1e-4)
    np.testing.assert_allclose(prods.singular_values[:, -1], a ** prods.lags, rtol=1e-4)
    assert diagnostics.recurrent_spectral_radius(params) == pytest.approx(a, rel=1e-5)
    lyap = diagnostics.lyapunov_exponents(Js, num=2)
    np.testing.assert_allclose(lyap, [math.log(a)] * 2, atol=1e-5)


def test_jacobians_of_tanh_cell():
    cell, params, xs, _ = _tanh_setup()
    Js = np.asarray(diagnostics.state_jacobians(cell, params, xs, index=1))
    _, hs = jax.lax.scan(lambda c, x: cell.step(params, c, x), cell.initial_carry(params, B), xs)
    hs = np.asarray(hs[:, 1])
    W_hh = np.asarray(params["W_hh"])
    for t in (1, 4, 6):
        # h_t = tanh(... + h_{t-1} W_hh): dh_t/dh_{t-1} = diag(1 - h_t^2) W_hh^T
        np.testing.assert_allclose(Js[t], (1 - hs[t] ** 2)[:, None] * W_hh.T, rtol=1e-5, atol=1e-6)
    # With all H directions, the exponents add up to the mean log |det J_t|: an identity
    # of the QR method, checked in float64 (QR and reference alike), so that the
    # tolerance is float64 rounding and not how one CPU's float32 kernels round.
    with jax.enable_x64(True):
        lyap = diagnostics.lyapunov_exponents(jnp.asarray(Js, jnp.float64), num=H)
    assert np.all(np.diff(lyap) <= 0), "largest first"
    mean_logdet = np.mean([np.linalg.slogdet(J.astype(np.float64))[1] for J in Js])
    assert lyap.sum() == pytest.approx(mean_logdet, rel=1e-10)


def test_gated_spectral_radius_and_lstm_jacobian_size():
    lstm = cells.lstm(H, spectral_radius=0.9)
    params = lstm.init(jax.random.PRNGKey(0), D)
    radii = diagnostics.recurrent_spectral_radius(params)
    assert set(radii) == {"i", "f", "g", "o"}
    assert all(r == pytest.approx(0.9, rel=1e-4) for r in radii.values())
    Js = diagnostics.state_jacobians(lstm, params, jnp.ones((3, 1, D)))
    chex.assert_shape(Js, (3, 2 * H, 2 * H))
    with pytest.raises(ValueError, match="W_hh"):
        diagnostics.recurrent_spectral_radius({"W_fh": jnp.eye(2)})


def test_verdict_on_non_finite_and_bad_input():
    v = diagnostics.verdict([1.0, float("inf"), 1.0, 1.0])
    assert v.kind == "exploding"
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.verdict([1.0])


def test_parameter_gradient_norms_from_metrics(tmp_path):
    grads = {"W_hh": 3.0 * jnp.ones((2, 2)), "readout": {"w": jnp.array([3.0, 4.0])}}
    metrics = diagnostics.gradient_norm_metrics(grads)
    assert float(metrics["grad_norm/W_hh"]) == pytest.approx(6.0)
    assert float(metrics["grad_norm/readout/w"]) == pytest.approx(5.0)
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in (10, 20):
            record = {"step": step, "loss": 1.0, **{k: float(v) * step for k, v in metrics.items()}}
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 25, "loss"\n')               # a bad line: skipped, reported
        f.write(json.dumps({"step": 30, "grad_norm/W_hh": "nan"}) + "\n")
        f.write('{"step": 40, "loss"')                 # a line cut short by a kill
    with pytest.warns(UserWarning, match="skipped 2 unreadable line"):
        steps, norms = plots.parameter_gradient_norms(str(tmp_path))
    np.testing.assert_array_equal(steps, [10, 20, 30])   # rows after a bad line are kept
    np.testing.assert_allclose(norms["W_hh"], [60.0, 120.0, np.nan])
    np.testing.assert_allclose(norms["readout/w"], [50.0, 100.0, np.nan])
    with pytest.raises(ValueError, match="grad_norm"):
        plots.parameter_gradient_norms([{"step": 1, "loss": 2.0}])
    with pytest.raises(ValueError, match="no metrics file"):
        plots.parameter_gradient_norms(str(tmp_path / "missing"))


def test_plots_write_png(tmp_path):
    png = b"\x89PNG"
    p1 = plots.plot_gradient_vs_lag(
        {"a=0.9": 0.9 ** np.arange(20)[::-1], "a=1.1": 1.1 ** np.arange(20)[::-1]},
        str(tmp_path / "lag.png"), title="linear RNN")
    p2 = plots.plot_gradient_heatmap([0, 50, 100], np.random.rand(3, 20) + 1e-3,
                                     str(tmp_path / "sub" / "heat.png"))
    p3 = plots.plot_parameter_gradient_norms([1, 2], {"W_hh": [1.0, 2.0]},
                                             str(tmp_path / "params.png"))
    for p in (p1, p2, p3):
        with open(p, "rb") as f:
            assert f.read(4) == png
    with pytest.raises(ValueError, match="len\\(steps\\)"):
        plots.plot_gradient_heatmap([0, 1], np.ones((3, 4)), str(tmp_path / "x.png"))
