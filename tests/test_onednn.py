"""rnnjax.kernels.onednn: oneDNN's fused RNN primitives against rnnjax's XLA unrolls.

The kernel is compiled once per machine into the user's kernel cache (the first test
to need it pays ~10-60 s of g++); without oneDNN or a compiler the comparisons skip
and the fallback tests still run.
"""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import cells, recurrence
from rnnjax.kernels import onednn

T, B, D, H = 5, 3, 4, 6


@functools.cache
def _have_kernel() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return onednn.available()


needs_kernel = pytest.mark.skipif("not _have_kernel()", reason="oneDNN kernel unavailable")


def _cell(kind, **kw):
    """The XLA reference cell."""
    kw.setdefault("backend", "xla")
    if kind == "lstm":
        return cells.lstm(H, **kw)
    if kind == "gru":
        return cells.gru(H, **kw)
    return cells.vanilla(H, kind, **kw)


def _params(cell, key, d=D):
    """Random params (learned initial state and biases non-zero, so every term counts)."""
    p = cell.init(key, d)
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def _loss(cell, params, xs, reverse=False):
    """A loss that weights every output and the final carry differently."""
    final, hs = recurrence.unroll(cell, params, xs, reverse=reverse)
    w = jnp.arange(1, hs.size + 1, dtype=jnp.float32).reshape(hs.shape) / hs.size
    return jnp.sum(jnp.sin(hs) * w) + sum(jnp.sum(l ** 2) for l in jax.tree_util.tree_leaves(final))


def _uses_kernel(fn, *args) -> bool:
    return onednn._FORWARD in str(jax.make_jaxpr(fn)(*args))


def _close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("kind, reverse", [("lstm", False), ("lstm", True), ("gru", False),
                                           ("gru", True), ("tanh", False), ("relu", True),
                                           ("logistic", False)])
def test_outputs_final_states_and_gradients_match_xla(kind, reverse, key):
    cell = _cell(kind, learn_initial_state=True)
    fast = onednn.with_backend(cell, "onednn")
    params = _params(cell, key)
    xs = jax.random.normal(jax.random.fold_in(key, 2), (T, B, D))

    final_x, hs_x = recurrence.unroll(cell, params, xs, reverse=reverse)
    final_o, hs_o = jax.jit(lambda p, x: recurrence.unroll(fast, p, x, reverse=reverse))(params, xs)
    chex.assert_shape(hs_o, (T, B, H))
    chex.assert_type(hs_o, jnp.float32)
    _close((final_o, hs_o), (final_x, hs_x))

    grad = jax.grad(_loss, argnums=(1, 2))
    g_fast = jax.jit(functools.partial(grad, fast, reverse=reverse))(params, xs)
    g_xla = grad(cell, params, xs, reverse)
    assert set(g_fast[0]) == set(g_xla[0])         # h0 (and c0) get their gradient too
    _close(g_fast, g_xla)
    assert _uses_kernel(lambda p: jax.grad(_loss, 1)(fast, p, xs, reverse), params)


@needs_kernel
def test_stack_and_bidirectional_match_xla(key):
    layers = [_cell("lstm", learn_initial_state=True), _cell("gru")]
    deep_x = recurrence.stack(layers)
    deep_o = recurrence.stack([onednn.with_backend(c, "auto") for c in layers])
    p_deep = _params(deep_x, key)
    xs = jax.random.normal(jax.random.fold_in(key, 3), (T, B, D))
    _close(jax.value_and_grad(_loss, 1)(deep_o, p_deep, xs),
           jax.value_and_grad(_loss, 1)(deep_x, p_deep, xs))

    fw, bw = _cell("gru", learn_initial_state=True), _cell("lstm")
    p_bi = (_params(fw, key), _params(bw, jax.random.fold_in(key, 4)))

    def bi_loss(fw, bw, p, xs):
        (f1, f2), hs = recurrence.bidirectional(fw, bw, p, xs)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(f1 ** 2) + jnp.sum(f2.c * f2.h)
    fast = (onednn.with_backend(fw, "onednn"), onednn.with_backend(bw, "onednn"))
    _close(jax.value_and_grad(bi_loss, (2, 3))(*fast, p_bi, xs),
           jax.value_and_grad(bi_loss, (2, 3))(fw, bw, p_bi, xs))
    assert _uses_kernel(lambda p: bi_loss(*fast, p, xs), p_bi)


@needs_kernel
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_forward_mode_runs_on_the_kernel_and_matches_xla(kind, key):
    """jvp and linearize (Hessian-free's Gauss-Newton products): the primitive's tangent
    evaluates in XLA, and the transpose of the linearized map runs oneDNN's backward."""
    cell = _cell(kind)
    fast = onednn.with_backend(cell, "auto")
    params = _params(cell, key)
    xs = jax.random.normal(jax.random.fold_in(key, 5), (T, B, D))
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)

    def out(c):
        return lambda p: recurrence.unroll(c, p, xs)[1]
    _close(jax.jvp(out(fast), (params,), (tangent,)), jax.jvp(out(cell), (params,), (tangent,)))
    y, lin = jax.linearize(out(fast), params)
    y_ref, lin_ref = jax.linearize(out(cell), params)
    _close((y, lin(tangent)), (y_ref, lin_ref(tangent)))
    cot = jnp.cos(y)
    _close(jax.linear_transpose(lin, params)(cot), jax.linear_transpose(lin_ref, params)(cot))


@needs_kernel
def test_auto_uses_xla_where_the_kernel_does_not_apply(key):
    cell = _cell("lstm")
    auto = onednn.with_backend(cell, "auto")
    params = _params(cell, key)
    xs = jax.random.normal(key, (T, B, D))

    def hs(c, p, x, **kw):
        return recurrence.unroll(c, p, x, **kw)[1]
    assert _uses_kernel(lambda p: hs(auto, p, xs), params)
    lengths = jnp.array([5, 2, 0])
    assert not _uses_kernel(lambda p: hs(auto, p, xs, lengths=lengths), params)
    assert not _uses_kernel(lambda p: hs(auto, p, xs, remat=True), params)
    assert not _uses_kernel(lambda p: hs(auto, p, xs.astype(jnp.bfloat16)), params)
    assert not _uses_kernel(jax.vmap(lambda x: hs(auto, params, x)), xs[None])
    assert not _uses_kernel(lambda p: hs(onednn.with_backend(cell, "xla"), p, xs), params)
    tanh = _cell("tanh")   # auto leaves the vanilla cell on XLA (faster there)
    assert not _uses_kernel(lambda p: hs(onednn.with_backend(tanh, "auto"), p, xs),
                            tanh.init(key, D))
    # Nested differentiation (the kernel's backward has no derivative of its own).
    second = jax.hessian(lambda b: jnp.sum(hs(auto, dict(params, b=b), xs) ** 3))
    assert not _uses_kernel(second, params["b"])
    _close(second(params["b"]),
           jax.hessian(lambda b: jnp.sum(hs(cell, dict(params, b=b), xs) ** 3))(params["b"]))
    # The fallbacks give the XLA results.
    _close(hs(auto, params, xs, lengths=lengths), hs(cell, params, xs, lengths=lengths))


@needs_kernel
def test_cells_take_a_backend(key):
    """cells.lstm/gru default to backend="auto" (oneDNN here); "xla" keeps XLA."""
    xs = jax.random.normal(key, (T, B, D))
    for make in (cells.lstm, cells.gru):
        auto, xla = make(H), make(H, backend="xla")
        params = auto.init(key, D)
        assert _uses_kernel(lambda p: jax.grad(_loss, 1)(auto, p, xs), params)
        assert not _uses_kernel(lambda p: jax.grad(_loss, 1)(xla, p, xs), params)
        assert not _uses_kernel(lambda p: _loss(make(H, fused=False), p, xs), params)
    tanh = cells.vanilla(H, backend="onednn")
    assert _uses_kernel(lambda p: _loss(tanh, p, xs), tanh.init(key, D))


def test_backend_errors_name_the_argument():
    with pytest.raises(ValueError, match="lstm: backend must be one of auto, xla, onednn"):
        cells.lstm(H, backend="mkl")
    with pytest.raises(ValueError, match="gru: backend='onednn' computes in float32"):
        cells.gru(H, dtype=jnp.bfloat16, backend="onednn")
    with pytest.raises(ValueError, match="backend must be one of auto, xla, onednn"):
        onednn.with_backend(cells.lstm(H), "cudnn")
    with pytest.raises(ValueError, match="cell 'mrnn.*' has no oneDNN primitive"):
        onednn.with_backend(cells.mrnn(H), "onednn")
    assert onednn.with_backend(cells.mrnn(H), "auto").unroll is None   # unchanged
    fast = onednn.with_backend(cells.gru(H), "onednn")
    params = fast.init(jax.random.PRNGKey(0), D)
    with pytest.raises(ValueError, match="lengths="):
        recurrence.unroll(fast, params, jnp.ones((T, B, D)), lengths=jnp.array([1, 2, 3]))


def _train(cell, steps=25):
    """A few Adam steps on a tiny sequence task; returns the losses."""
    key = jax.random.PRNGKey(0)
    params = {"rnn": cell.init(key, D), "W": 0.1 * jax.random.normal(key, (H, 1))}
    xs = jax.random.normal(jax.random.fold_in(key, 1), (8, 16, D))
    ys = jnp.cumsum(xs[..., :1], axis=0) / 3.0

    def loss(p):
        _, hs = recurrence.unroll(cell, p["rnn"], xs)
        return jnp.mean((hs @ p["W"] - ys) ** 2)
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, value
    losses = []
    for _ in range(steps):
        params, state, value = step(params, state)
        losses.append(float(value))
    return losses


@needs_kernel
def test_training_on_the_kernel_learns():
    losses = _train(onednn.with_backend(cells.lstm(H), "onednn"))
    assert losses[-1] < 0.5 * losses[0]


def test_missing_compiler_warns_once_and_still_trains(monkeypatch, tmp_path):
    def no_compiler():
        raise FileNotFoundError("no C++ compiler ($CXX, g++ or c++) on PATH")
    monkeypatch.setattr(onednn, "_compiler", no_compiler)
    monkeypatch.setenv(onednn.CACHE_ENV, str(tmp_path))     # no cached build to fall back on
    onednn._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="oneDNN RNN kernels unavailable, using XLA") as w:
            losses = _train(cells.gru(H))   # backend="auto", the default
        assert len(w) == 1 and "\n" not in str(w[0].message)
        assert not onednn.available()
        assert losses[-1] < 0.5 * losses[0]
    finally:
        onednn._library.cache_clear()   # the next test loads the real kernel again
