"""The fused unrolls (rnnjax.fused) against the generic lax.scan: same outputs, same gradients.

Every check builds the same cell twice, ``fused=True`` and ``fused=False``, and
compares values, reverse-mode gradients, forward-mode derivatives and second
derivatives to float32 tolerance, with variable lengths (including 0 and T),
reverse, learned initial states, remat, vmap, stacks and bidirectional layers.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

from rnnjax import cells, recurrence

T, B, D, H = 5, 3, 4, 6
TOL = dict(rtol=2e-5, atol=2e-5)
LENGTHS = jnp.array([5, 2, 0])

MAKERS = {
    "tanh": lambda fused: cells.vanilla(H, "tanh", fused=fused, learn_initial_state=True),
    "relu": lambda fused: cells.vanilla(H, "relu", fused=fused),
    "logistic": lambda fused: cells.vanilla(H, "logistic", fused=fused),
    "lstm": lambda fused: cells.lstm(H, fused=fused, learn_initial_state=True),
    "gru": lambda fused: cells.gru(H, fused=fused, learn_initial_state=True),
}


def _setup(name, seed=0):
    fused, plain = MAKERS[name](True), MAKERS[name](False)
    assert fused.unroll is not None and plain.unroll is None
    params = fused.init(jax.random.PRNGKey(seed), D)
    # Non-zero biases and initial states, so that every gradient path is exercised.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    xs = jax.random.normal(jax.random.PRNGKey(seed + 2), (T, B, D))
    return fused, plain, params, xs


def _loss(cell, params, xs, **kw):
    """A loss that reads every output and the final carry, with unequal weights."""
    final, hs = recurrence.unroll(cell, params, xs, **kw)
    weights = jnp.linspace(0.5, 1.5, hs.size).reshape(hs.shape)
    return jnp.sum(jnp.sin(hs) * weights) + sum(
        jnp.sum(jnp.cos(leaf)) for leaf in jax.tree_util.tree_leaves(final))


CASES = [("tanh", None, False), ("tanh", LENGTHS, True), ("relu", LENGTHS, False),
         ("logistic", None, True), ("lstm", None, False), ("lstm", LENGTHS, True),
         ("lstm", LENGTHS, False), ("gru", None, False), ("gru", LENGTHS, True)]


@pytest.mark.parametrize("name,lengths,reverse", CASES,
                         ids=[f"{n}-{'lengths' if l is not None else 'full'}-{'rev' if r else 'fwd'}"
                              for n, l, r in CASES])
def test_fused_outputs_and_gradients_equal_generic_scan(name, lengths, reverse):
    fused, plain, params, xs = _setup(name)
    kw = dict(lengths=lengths, reverse=reverse)

    @jax.jit
    def run(p, x):  # one compiled program per cell: outputs, final carry and gradients
        return (recurrence.unroll(fused, p, x, **kw), recurrence.unroll(plain, p, x, **kw),
                jax.grad(_loss, argnums=(1, 2))(fused, p, x, **kw),
                jax.grad(_loss, argnums=(1, 2))(plain, p, x, **kw))
    out_fused, out_plain, g_fused, g_plain = run(params, xs)
    chex.assert_trees_all_close(out_fused, out_plain, **TOL)
    chex.assert_trees_all_close(g_fused, g_plain, **TOL)


def test_forward_mode_and_linear_transpose_work_through_fused_cells():
    """jax.jvp / jax.linearize (Gauss-Newton products, Hessian-free) give the generic results."""
    for name in ("tanh", "lstm", "gru"):
        fused, plain, params, xs = _setup(name, seed=3)
        tangent = jax.tree_util.tree_map(jnp.ones_like, params)

        def outputs(cell, p):
            return recurrence.unroll(cell, p, xs, lengths=LENGTHS)[1]

        @jax.jit
        def run(p, t, ct):
            jf = jax.jvp(lambda q: outputs(fused, q), (p,), (t,))
            jp = jax.jvp(lambda q: outputs(plain, q), (p,), (t,))
            _, lin = jax.linearize(lambda q: outputs(fused, q), p)
            (back,) = jax.linear_transpose(lin, p)(ct)
            _, vjp_plain = jax.vjp(lambda q: outputs(plain, q), p)
            return jf, jp, back, vjp_plain(ct)[0]
        ct = jax.random.normal(jax.random.PRNGKey(4), (T, B, H))
        jf, jp, back, back_plain = run(params, tangent, ct)
        chex.assert_trees_all_close(jf, jp, **TOL)
        chex.assert_trees_all_close(back, back_plain, **TOL)


def test_second_derivatives_match():
    fused, plain, params, xs = _setup("lstm", seed=5)
    direction = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 0.1), params)

    @functools.partial(jax.jit, static_argnums=0)
    def hvps(cell):
        g = lambda p: jax.grad(_loss, argnums=1)(cell, p, xs)
        # reverse-over-reverse and forward-over-reverse Hessian-vector products
        rev = jax.grad(lambda p: sum(jnp.vdot(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(g(p)), jax.tree_util.tree_leaves(direction))))(params)
        fwd = jax.jvp(g, (params,), (direction,))[1]
        return rev, fwd
    fused_rev, fused_fwd = hvps(fused)
    plain_rev, plain_fwd = hvps(plain)
    chex.assert_trees_all_close(fused_rev, plain_rev, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(fused_fwd, plain_fwd, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(fused_fwd, fused_rev, rtol=1e-4, atol=1e-4)


def test_remat_vmap_jit_stack_and_bidirectional_agree():
    fused, plain, params, xs = _setup("gru", seed=6)
    # remat falls back to the generic (rematerialised) scan.
    chex.assert_trees_all_close(jax.grad(_loss, argnums=1)(fused, params, xs, remat=True),
                                jax.grad(_loss, argnums=1)(plain, params, xs), **TOL)
    # vmap over a leading axis of independent batches, under jit.
    many = jnp.stack([xs, 2.0 * xs])
    run = lambda cell: jax.jit(jax.vmap(lambda x: recurrence.unroll(cell, params, x)[1]))(many)
    chex.assert_trees_all_close(run(fused), run(plain), **TOL)
    # Stacks and bidirectional layers built from fused cells.
    sf = recurrence.stack([MAKERS["lstm"](True), MAKERS["tanh"](True)])
    sp = recurrence.stack([MAKERS["lstm"](False), MAKERS["tanh"](False)])
    sparams = sf.init(jax.random.PRNGKey(7), D)
    chex.assert_trees_all_close(jax.grad(_loss, argnums=1)(sf, sparams, xs, lengths=LENGTHS),
                                jax.grad(_loss, argnums=1)(sp, sparams, xs, lengths=LENGTHS),
                                **TOL)
    bi = lambda c: recurrence.bidirectional(c, c, (params, params), xs, lengths=LENGTHS)[1]
    chex.assert_trees_all_close(bi(fused), bi(plain), **TOL)


@pytest.mark.parametrize("bad", ["vjp", "jvp", 1, None])
def test_fused_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="fused must be True .* or False"):
        cells.gru(H, fused=bad)


def test_which_cells_are_fused_by_default():
    assert cells.vanilla(4).unroll is not None
    assert cells.lstm(4).unroll is not None
    assert cells.gru(4).unroll is not None
    assert cells.by_name("irnn", 4).unroll is not None
    assert cells.lstm(4, fused=False).unroll is None
    assert cells.by_name("gru", 4, fused=False).unroll is None
    # Not covered by a fused unroll: the generic scan is used.
    assert cells.vanilla(4, "threshold").unroll is None
    assert cells.lstm(4, dtype=jnp.bfloat16).unroll is None
    assert cells.mrnn(4).unroll is None
