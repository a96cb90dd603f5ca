"""The scan recurrence against a plain Python loop: masks, reverse, stacks, bidirectional."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rnnjax import cells, recurrence

D, H = 3, 4


def python_loop(cell, params, xs, lengths=None, reverse=False, carry=None):
    """Reference: step one sequence at a time with cell.step, only over its real steps."""
    T, B, _ = xs.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    outs = np.zeros((T, B, cell.hidden_size), np.float32)
    finals = []
    step = jax.jit(cell.step)
    for b in range(B):
        c = cell.initial_carry(params, 1) if carry is None else jax.tree_util.tree_map(
            lambda a: a[b:b + 1], carry)
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            c, h = step(params, c, xs[t, b:b + 1])
            outs[t, b] = np.asarray(h[0])
        finals.append(c)
    final = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *finals)
    return final, outs


CELLS = {
    "tanh": lambda: cells.vanilla(H, "tanh", learn_initial_state=True),
    "lstm": lambda: cells.lstm(H, learn_initial_state=True),
    "gru": lambda: cells.gru(H),
    "mrnn": lambda: cells.mrnn(H, factors=6),
    "stack": lambda: recurrence.stack([cells.lstm(H), cells.gru(5), cells.vanilla(H)]),
}


def setup(name, T=6, B=3, seed=0):
    cell = CELLS[name]()
    params = cell.init(jax.random.PRNGKey(seed), D)
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # non-zero h0/c0/biases
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (T, B, D))
    return cell, params, xs


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_with_lengths_matches_python_loop(name, reverse):
    cell, params, xs = setup(name)
    lengths = jnp.array([6, 2, 0])
    final, hs = jax.jit(lambda p, x, l: recurrence.unroll(cell, p, x, lengths=l, reverse=reverse))(
        params, xs, lengths)
    ref_final, ref_hs = python_loop(cell, params, xs, lengths, reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(final, ref_final, rtol=1e-5, atol=1e-6)
    # Padded outputs are exactly zero; a length-0 sequence keeps its initial carry.
    assert np.all(np.asarray(hs[2:, 1]) == 0.0) and np.all(np.asarray(hs[:, 2]) == 0.0)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[2], final),
                                jax.tree_util.tree_map(lambda a: a[0],
                                                       cell.initial_carry(params, 1)))


_GRU, _GRU_PARAMS, _ = setup("gru", T=7, B=4)
_unroll_gru = jax.jit(lambda xs, lengths: recurrence.unroll(_GRU, _GRU_PARAMS, xs, lengths=lengths))


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=4, max_size=4), junk=st.floats(-100, 100),
       seed=st.integers(0, 2**16))
def test_padding_never_changes_results(lengths, junk, seed):
    """Whatever stands in the padding (and however much), real outputs are unchanged."""
    xs = jax.random.normal(jax.random.PRNGKey(seed), (7, 4, D))
    lengths = jnp.array(lengths)
    mask = recurrence.sequence_mask(lengths, 7)[..., None]
    final, hs = _unroll_gru(jnp.where(mask, xs, junk), lengths)
    final2, hs2 = _unroll_gru(jnp.where(mask, xs, -junk), lengths)
    np.testing.assert_array_equal(hs2, hs)
    np.testing.assert_array_equal(final2, final)
    # Longer padding: the same real outputs.
    long = jnp.concatenate([xs, jnp.full((3, 4, D), junk)], axis=0)
    final3, hs3 = _unroll_gru(long, lengths)
    np.testing.assert_allclose(hs3[:7], hs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final3, final, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(hs3[7:]) == 0.0)


@pytest.mark.parametrize("name", ["tanh", "lstm", "stack"])
def test_batch_major_unroll_and_remat_agree(name):
    cell, params, xs = setup(name)
    ref_final, ref = recurrence.unroll(cell, params, xs)
    _, hs_bm = recurrence.unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=False)
    np.testing.assert_allclose(jnp.swapaxes(hs_bm, 0, 1), ref, rtol=1e-6)
    for kw in (dict(unroll=3), dict(remat=True)):
        _, hs = recurrence.unroll(cell, params, xs, **kw)
        np.testing.assert_allclose(hs, ref, rtol=1e-5, atol=1e-6)

    def loss(p, **kw):
        return jnp.sum(recurrence.unroll(cell, p, xs, **kw)[1] ** 2)
    chex.assert_trees_all_close(jax.grad(lambda p: loss(p, remat=True))(params),
                                jax.grad(loss)(params), rtol=1e-5, atol=1e-6)


def test_carry_can_be_passed_in_to_continue_a_sequence():
    cell, params, xs = setup("lstm", T=8)
    full_final, full = recurrence.unroll(cell, params, xs)
    mid, first = recurrence.unroll(cell, params, xs[:5])
    end, second = recurrence.unroll(cell, params, xs[5:], carry=mid)
    np.testing.assert_allclose(jnp.concatenate([first, second]), full, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(end, full_final, rtol=1e-6, atol=1e-6)


def test_stack_step_equals_layerwise_unroll():
    """stack's step (used by samplers) and its layer-by-layer unroll agree."""
    cell, params, xs = setup("stack")
    _, hs = recurrence.unroll(cell, params, xs)
    carry = cell.initial_carry(params, xs.shape[1])
    for t in range(xs.shape[0]):
        carry, h = cell.step(params, carry, xs[t])
        np.testing.assert_allclose(h, hs[t], rtol=1e-5, atol=1e-6)


def test_bidirectional_with_lengths():
    fw, bw = cells.gru(H), cells.lstm(3)
    params = (fw.init(jax.random.PRNGKey(0), D), bw.init(jax.random.PRNGKey(1), D))
    xs = jax.random.normal(jax.random.PRNGKey(2), (5, 2, D))
    lengths = jnp.array([5, 3])
    (f_fw, f_bw), hs = recurrence.bidirectional(fw, bw, params, xs, lengths=lengths)
    chex.assert_shape(hs, (5, 2, H + 3))
    ref_fw_final, ref_fw = python_loop(fw, params[0], xs, lengths)
    ref_bw_final, ref_bw = python_loop(bw, params[1], xs, lengths, reverse=True)
    np.testing.assert_allclose(hs[..., :H], ref_fw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hs[..., H:], ref_bw, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(f_bw, ref_bw_final, rtol=1e-5, atol=1e-6)
    _, summed = recurrence.bidirectional(fw, fw, (params[0], params[0]), xs, merge="sum")
    chex.assert_shape(summed, (5, 2, H))


def test_vmap_over_batches_of_sequences():
    cell, params, xs = setup("tanh", B=2)
    many = jnp.stack([xs, xs * 2.0])
    _, hs = jax.vmap(lambda x: recurrence.unroll(cell, params, x))(many)
    np.testing.assert_allclose(hs[1], recurrence.unroll(cell, params, xs * 2.0)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(xs=jnp.ones((5, 3))), r"rank 3, \[T, B, D\]; got shape \(5, 3\)"),
    (dict(lengths=jnp.array([1, 2])), r"lengths must have shape \[B\] = \(3,\), got \(2,\)"),
    (dict(lengths=jnp.array([1, 9, 2])), r"lengths must lie in \[0, T\] = \[0, 6\]"),
    (dict(lengths=jnp.array([1.0, 2.0, 3.0])), "lengths must be integers"),
    (dict(xs=jnp.ones((6, 3, 9))), "initialised for input size 3"),
])
def test_bad_input_errors(kwargs, match):
    cell, params, xs = setup("tanh")
    kwargs.setdefault("xs", xs)
    with pytest.raises(ValueError, match=match):
        recurrence.unroll(cell, params, kwargs.pop("xs"), **kwargs)


def test_bad_merge_and_empty_stack():
    with pytest.raises(ValueError, match="merge must be 'concat' or 'sum'"):
        recurrence.bidirectional(cells.gru(2), cells.gru(2), ({}, {}), jnp.ones((2, 1, 1)),
                                 merge="mean")
    with pytest.raises(ValueError, match="non-empty sequence of Cells"):
        recurrence.stack([])


@pytest.mark.parametrize("make_cell", [lambda: cells.vanilla(H, "tanh"), lambda: cells.lstm(H)])
def test_wrapping_a_cells_step_is_honoured_by_unroll(make_cell):
    """A cell whose recurrent_step is replaced must not keep a stale fused unroll."""
    cell = make_cell()
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, D))

    def doubled(p, c, xp_t):
        c, h = cell.recurrent_step(p, c, xp_t)
        return c, 2.0 * h

    wrapped = cell._replace(recurrent_step=doubled)
    _, hs = recurrence.unroll(wrapped, params, xs)
    _, ref = python_loop(wrapped, params, xs)
    np.testing.assert_allclose(hs, ref, rtol=1e-5, atol=1e-6)


# Every cell's code path: the fused and generic vanilla (relu, identity and irnn share
# them with tanh and logistic), LSTM and GRU; the MRNN, threshold units and a stack.
NUMERIC_CELLS = [("tanh", True), ("tanh", False), ("logistic", True), ("threshold", False),
                 ("lstm", True), ("lstm", False), ("gru", True), ("gru", False),
                 ("mrnn", None), ("stack", None)]


def _numeric_cell(name, fused):
    if name == "stack":
        return recurrence.stack([cells.lstm(H), cells.vanilla(H, fused=False)])
    kw = {} if fused is None else {"fused": fused}
    return cells.by_name(name, H, **kw)


@pytest.mark.parametrize("name, fused", NUMERIC_CELLS,
                         ids=[f"{n}-{'fused' if f else 'scan'}" for n, f in NUMERIC_CELLS])
def test_nan_and_inf_in_the_padding_reach_no_gradient(name, fused):
    """Padding may hold anything (NaN, Inf): outputs, parameter gradients and input
    gradients are finite and the same as with zero padding, forward and reverse."""
    cell = _numeric_cell(name, fused)
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 3, D))
    lengths = jnp.array([5, 2, 0])
    mask = recurrence.sequence_mask(lengths, 5)[..., None]
    junk = jnp.where(jnp.arange(D) % 2 == 0, jnp.nan, jnp.inf)     # NaN and Inf features

    @jax.jit
    def value_and_grads(p, x):
        def loss(p, x):
            total = 0.0
            for reverse in (False, True):
                final, hs = recurrence.unroll(cell, p, x, lengths=lengths, reverse=reverse)
                total += jnp.sum(jnp.sin(hs)) + sum(
                    jnp.sum(jnp.cos(leaf)) for leaf in jax.tree_util.tree_leaves(final))
            return total
        return jax.value_and_grad(loss, argnums=(0, 1))(p, x)

    clean = value_and_grads(params, jnp.where(mask, xs, 0.0))
    dirty = value_and_grads(params, jnp.where(mask, xs, junk))
    for leaf in jax.tree_util.tree_leaves(dirty):
        assert np.all(np.isfinite(leaf))
    chex.assert_trees_all_close(dirty, clean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, fused", NUMERIC_CELLS,
                         ids=[f"{n}-{'fused' if f else 'scan'}" for n, f in NUMERIC_CELLS])
def test_float64_params_get_a_float64_carry(name, fused):
    """With float64 enabled and float64 params, the default carry, the outputs and the
    gradients are float64 (a float32 carry would fail lax.scan's dtype check)."""
    with jax.enable_x64(True):
        cell = _numeric_cell(name, fused)
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                        cell.init(jax.random.PRNGKey(0), D))
        xs = jax.random.normal(jax.random.PRNGKey(1), (4, 2, D), jnp.float64)
        carry = cell.initial_carry(params, 2)
        chex.assert_type(jax.tree_util.tree_leaves(carry), jnp.float64)
        loss = lambda p: jnp.sum(recurrence.unroll(cell, p, xs, lengths=jnp.array([4, 1]))[1])
        value, grads = jax.value_and_grad(loss)(params)
        chex.assert_type([value] + jax.tree_util.tree_leaves(grads), jnp.float64)
