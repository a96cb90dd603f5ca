"""Pascanu et al.'s Ω: the δ's along the trajectory and Ω's gradient (float64)."""

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import regularizers


def _tanh_rnn(w_xh, w_hh, xs, eps):
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh) + eps_t (eps: a probe for the total ∂L/∂h_t)."""

    def step(h, inp):
        x, e = inp
        h = jnp.tanh(x @ w_xh + h @ w_hh) + e
        return h, h

    _, hs = jax.lax.scan(step, jnp.zeros((xs.shape[1], w_hh.shape[0]), xs.dtype), (xs, eps))
    return hs


def _setup(seed=0, T=7, B=3, D=2, H=5):
    with jax.enable_x64():
        k = jax.random.split(jax.random.PRNGKey(seed), 4)
        w_xh = jax.random.normal(k[0], (D, H), jnp.float64)
        w_hh = 0.8 * jax.random.normal(k[1], (H, H), jnp.float64) / np.sqrt(H)
        xs = jax.random.normal(k[2], (T, B, D), jnp.float64)
        w_o = jax.random.normal(k[3], (H,), jnp.float64)
    return w_xh, w_hh, xs, w_o


def test_deltas_are_the_total_derivatives():
    with jax.enable_x64():
        w_xh, w_hh, xs, w_o = _setup()
        readout = lambda hs: jnp.mean((hs @ w_o) ** 2) + jnp.sum(hs[-1] @ w_o)
        eps = jnp.zeros(xs.shape[:2] + (w_hh.shape[0],), jnp.float64)
        total = jax.grad(lambda e: readout(_tanh_rnn(w_xh, w_hh, xs, e)))(eps)
        hs = _tanh_rnn(w_xh, w_hh, xs, eps)
        direct = jax.grad(readout)(hs)
        np.testing.assert_allclose(regularizers.backprop_deltas(w_hh, hs, direct), total,
                                   rtol=1e-10, atol=1e-12)


def test_omega_gradient_matches_finite_differences():
    with jax.enable_x64():
        w_xh, w_hh, xs, w_o = _setup(1)
        hs = _tanh_rnn(w_xh, w_hh, xs, jnp.zeros(xs.shape[:2] + (w_hh.shape[0],)))
        readout = lambda h: jnp.mean(h[-1] @ w_o) ** 2
        for squared in (False, True):
            f = lambda w: regularizers.loss_and_omega(readout, w, hs, squared=squared)[1]
            g = np.asarray(jax.grad(f)(w_hh))
            # Ω's direct dependence on W_hh: hs and the δ's stay fixed at w_hh.
            direct = jax.grad(readout)(hs)
            deltas = regularizers.backprop_deltas(w_hh, hs, direct)
            fixed = lambda w: regularizers.omega(w, hs, deltas, squared=squared)
            fd = np.zeros_like(g)
            h = 1e-6
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    e = jnp.zeros_like(w_hh).at[i, j].set(h)
                    fd[i, j] = (fixed(w_hh + e) - fixed(w_hh - e)) / (2 * h)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
            assert float(f(w_hh)) > 0


def test_omega_is_zero_for_a_norm_preserving_step():
    """With h = 0 (tanh' = 1) and an orthogonal W_hh the error norm is kept: Ω = 0."""
    H = 4
    w = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(2), (H, H)))[0]
    hs = jnp.zeros((5, 3, H))
    deltas = jax.random.normal(jax.random.PRNGKey(3), (5, 3, H))
    assert float(regularizers.omega(w, hs, deltas)) < 1e-10
    assert float(regularizers.omega(0.5 * w, hs, deltas)) > 0.2
