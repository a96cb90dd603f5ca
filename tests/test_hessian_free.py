"""Tests of rnnjax.optim.hessian_free: curvature products, CG, damping, one short run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.flatten_util import ravel_pytree

from rnnjax import cells, recurrence, train
from rnnjax.optim import hessian_free as hf

T, B, D, H, O = 4, 3, 2, 3, 3


def tiny_rnn(key, out_size=O):
    cell = cells.vanilla(H, "tanh")
    k1, k2 = jax.random.split(key)
    params = {"rnn": cell.init(k1, D),
              "W_o": 0.7 * jax.random.normal(k2, (H, out_size)), "b_o": jnp.zeros((out_size,))}

    def net(p, batch):
        _, hs = recurrence.unroll(cell, p["rnn"], batch["inputs"])   # [T, B, H]
        return hs @ p["W_o"] + p["b_o"], hs                           # [T, B, O], [T, B, H]

    return params, net


def tiny_batch(key, loss_name):
    kx, ky, km = jax.random.split(key, 3)
    xs = jax.random.normal(kx, (T, B, D))
    mask = (jax.random.uniform(km, (T, B)) > 0.3).at[-1].set(True)
    if loss_name == "softmax":
        y = jax.random.randint(ky, (T, B), 0, O)
    elif loss_name == "logistic":
        y = jax.random.bernoulli(ky, 0.5, (T, B, O)).astype(jnp.float32)
    else:
        y = jax.random.normal(ky, (T, B, O))
    return {"inputs": xs, "targets": y, "mask": mask}


LOSSES = {"softmax": hf.softmax_cross_entropy(), "logistic": hf.sigmoid_cross_entropy(),
          "squared": hf.squared_error()}


def explicit_jacobian(fn, flat):
    return jax.jacfwd(lambda x: jnp.ravel(fn(x)))(flat)   # [m, n]


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_gauss_newton_product_matches_explicit_jacobians(loss_name):
    output_loss = LOSSES[loss_name]
    params, net = tiny_rnn(jax.random.PRNGKey(0))
    batch = tiny_batch(jax.random.PRNGKey(1), loss_name)
    flat, unravel = ravel_pytree(params)
    outputs, gv, _ = hf.gauss_newton_operator(lambda p, b: net(p, b)[0], output_loss, params, batch)

    J = explicit_jacobian(lambda x: net(unravel(x), batch)[0], flat)
    H_L = jax.hessian(lambda o: output_loss.loss(o.reshape(outputs.shape), batch))(jnp.ravel(outputs))
    v = jax.random.normal(jax.random.PRNGKey(2), flat.shape)
    expected = J.T @ (H_L @ (J @ v))
    np.testing.assert_allclose(gv(v), expected, rtol=2e-4, atol=1e-6)
    # the closed-form H_L v agrees with the autodiff one as well
    u = jax.random.normal(jax.random.PRNGKey(3), outputs.shape)
    np.testing.assert_allclose(output_loss.hessian_vp(outputs, batch, u),
                               hf.autodiff_loss(output_loss.loss).hessian_vp(outputs, batch, u),
                               rtol=1e-4, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), loss_name=st.sampled_from(sorted(LOSSES)),
       scale=st.floats(0.01, 100.0))
def test_gauss_newton_is_positive_semidefinite(seed, loss_name, scale):
    params, net = tiny_rnn(jax.random.PRNGKey(seed % 7))
    batch = tiny_batch(jax.random.PRNGKey(seed % 5), loss_name)
    _, gv, _ = hf.gauss_newton_operator(lambda p, b: net(p, b)[0], LOSSES[loss_name], params, batch)
    v = scale * jax.random.normal(jax.random.PRNGKey(seed), ravel_pytree(params)[0].shape)
    assert float(jnp.vdot(v, gv(v))) >= -1e-6 * float(jnp.vdot(v, v))


def test_structural_damping_term_matches_its_definition():
    params, net = tiny_rnn(jax.random.PRNGKey(4))
    batch = tiny_batch(jax.random.PRNGKey(5), "squared")
    flat, unravel = ravel_pytree(params)
    _, gv, _ = hf.gauss_newton_operator(net, hf.squared_error(), params, batch,
                                        net_returns_hidden=True)
    J_h = explicit_jacobian(lambda x: net(unravel(x), batch)[1], flat)   # [T*B*H, n]
    v = jax.random.normal(jax.random.PRNGKey(6), flat.shape)
    weight = 0.37
    # penalty (weight / 2B) Σ Δh²  ->  Gauss–Newton matrix weight/B · J_hᵀ J_h
    np.testing.assert_allclose(gv(v, weight) - gv(v, 0.0), weight / B * (J_h.T @ (J_h @ v)),
                               rtol=2e-4, atol=1e-6)


def spd_system(n=12, cond=50.0, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = (q * np.geomspace(1.0, cond, n)) @ q.T
    return jnp.asarray(A, jnp.float32), jnp.asarray(rng.normal(size=n), jnp.float32)


@pytest.mark.parametrize("use_preconditioner", [False, True])
def test_cg_solves_spd_system(use_preconditioner):
    A, b = spd_system()
    m = jnp.diag(A) if use_preconditioner else None
    res = hf.conjugate_gradient(lambda x: A @ x, b, jnp.zeros_like(b), max_iters=200, tol=1e-9,
                                preconditioner=m)
    x_true = jnp.linalg.solve(A, b)
    np.testing.assert_allclose(res.x, x_true, rtol=1e-3, atol=1e-3)
    assert int(res.iters) < 200                           # stopped by the progress rule
    phi = res.phi[: int(res.iters) + 1]
    assert bool(jnp.all(jnp.diff(phi) <= 1e-5))           # CG decreases φ monotonically
    # the kept iterates are those of the schedule (and the last one)
    sched = hf.save_schedule(200)
    kept = [int(i) for i in res.saved_iters if i >= 0]
    assert kept[:-1] == [i for i in sched if i <= int(res.iters)] and kept[-1] == int(res.iters)


def test_cg_stops_at_iteration_cap_and_warm_start_is_used():
    A, b = spd_system(n=30, cond=1e3)
    res = hf.conjugate_gradient(lambda x: A @ x, b, jnp.zeros_like(b), max_iters=5)
    assert int(res.iters) == 5
    x_true = jnp.linalg.solve(A, b)
    warm = hf.conjugate_gradient(lambda x: A @ x, b, x_true, max_iters=5)
    assert float(warm.phi[0]) <= float(res.phi[5])        # starts where cold CG cannot reach


def test_backtracking_steps_back_from_the_last_iterate_while_the_loss_improves():
    A, b = spd_system(n=20, cond=100.0)
    res = hf.conjugate_gradient(lambda x: A @ x, b, jnp.zeros_like(b), max_iters=41, tol=0.0)
    rows = [int(i) for i in res.saved_iters]
    assert rows[-1] == 41 and len(set(rows)) == len(rows)  # 41 is not on the schedule
    # an objective minimised near row 3: the search walks back to it and one row past
    target = res.saved[3] + 1e-3
    objective = lambda p: jnp.sum((p - target) ** 2)
    p, value, it, evals = hf.backtrack(objective, res)
    values = [float(objective(r)) for r in res.saved]
    assert float(value) == pytest.approx(min(values))
    np.testing.assert_array_equal(p, res.saved[3])
    assert int(it) == rows[3] and int(evals) == len(rows) - 3 + 1
    # Martens' rule stops at the first increase: a better row further back is not seen
    score = jnp.asarray([0.0, 5.0, 5.0, 5.0] + [9.0] * (len(rows) - 6) + [2.0, 3.0])
    objective = lambda p: score[jnp.argmin(jnp.sum((res.saved - p) ** 2, axis=1))]
    p, value, it, evals = hf.backtrack(objective, res)
    assert int(it) == rows[-2] and float(value) == 2.0 and int(evals) == 3
    # a last iterate that blows up: the search steps back to a finite one
    blow = jnp.asarray([1.0] * (len(rows) - 2) + [0.5, jnp.nan])
    objective = lambda p: blow[jnp.argmin(jnp.sum((res.saved - p) ** 2, axis=1))]
    p, value, it, evals = hf.backtrack(objective, res)
    assert int(it) == rows[-2] and float(value) == 0.5 and int(evals) == 3
    # CG stopped on a scheduled iteration (14): that row is the last iterate, scored once;
    # CG's error in the A-norm falls at every iteration, so the search stops one row back
    res = hf.conjugate_gradient(lambda x: A @ x, b, jnp.zeros_like(b), max_iters=14, tol=0.0)
    assert [int(i) for i in res.saved_iters[-2:]] == [14, 14]
    e = lambda p: p - jnp.linalg.solve(A, b)
    p, value, it, evals = hf.backtrack(lambda p: jnp.vdot(e(p), A @ e(p)), res)
    assert int(it) == 14 and int(evals) == 2


@pytest.mark.parametrize("rho,direction", [(-1.0, 1), (0.1, 1), (0.5, 0), (0.9, -1),
                                           (float("nan"), 1), (float("-inf"), 1)])
def test_damping_rule_moves_lambda_the_right_way(rho, direction):
    lam = jnp.float32(2.0)
    new = float(hf.update_damping(lam, jnp.float32(rho)))
    expected = {1: 2.0 * 1.5, 0: 2.0, -1: 2.0 * 2.0 / 3.0}[direction]
    assert new == pytest.approx(expected)


def test_line_search_backs_off_and_rejects():
    f0 = jnp.float32(1.0)
    # f(θ + a p) = 1 - a + 3a²: rate 1 is worse, a smaller rate is better
    rate, f, evals = hf.line_search(lambda a: 1 - a + 3 * a ** 2, f0, jnp.float32(-1.0),
                                    jnp.float32(3.0))
    assert 0 < float(rate) < 1 and float(f) < 1.0 and int(evals) >= 1
    rate, f, _ = hf.line_search(lambda a: 1 + a, f0, jnp.float32(-1.0), jnp.float32(2.0),
                                max_steps=5)
    assert float(rate) == 0.0 and float(f) == 1.0


def test_bad_configuration_raises_clear_errors():
    params, net = tiny_rnn(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="hf_mu"):
        hf.hessian_free(net, hf.squared_error(), structural_damping=0.1)
    with pytest.raises(ValueError, match="cg_iters"):
        hf.hessian_free(net, hf.squared_error(), max_cg_iters=0)
    with pytest.raises(ValueError, match="example_axes"):
        hf.hessian_free(net, hf.squared_error(), preconditioner=True)
    with pytest.raises(ValueError, match="curvature_batch_size"):
        hf.take_examples({"x": jnp.zeros((4, 2))}, 3, 1)


def memory_batch(key, batch_size, length=10, symbols=3):
    """Remember the first symbol of a random sequence of one-hot symbols: [T, B, S] -> [B]."""
    s = jax.random.randint(key, (length, batch_size), 0, symbols)
    return {"inputs": jax.nn.one_hot(s, symbols), "targets": s[0]}


def test_hf_solves_a_short_memory_problem_through_the_training_loop():
    cell = cells.vanilla(12, "tanh")
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"rnn": cell.init(k1, 3), "W_o": 0.1 * jax.random.normal(k2, (12, 3)),
              "b_o": jnp.zeros((3,))}

    def net(p, batch):
        _, hs = recurrence.unroll(cell, p["rnn"], batch["inputs"])
        return hs[-1] @ p["W_o"] + p["b_o"], hs

    opt = hf.hessian_free(net, hf.softmax_cross_entropy(), net_returns_hidden=True,
                          structural_damping=0.1, max_cg_iters=40, preconditioner=True,
                          example_axes={"inputs": 1, "targets": 0})
    state = train.init_state(params, None, opt_state=opt.init(params), seed=0)
    step_fn = hf.make_train_step(opt, curvature_batch_size=100,
                                 example_axes={"inputs": 1, "targets": 0})
    batch_fn = lambda s: memory_batch(jax.random.fold_in(jax.random.PRNGKey(1), s), 300)
    state, history = train.run(None, state, step_fn, batch_fn, steps=25, log_every=5,
                               progress=False)
    test = memory_batch(jax.random.PRNGKey(99), 1000)
    logits, _ = net(state.params, test)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test["targets"]))
    assert accuracy > 0.99, (accuracy, history[-1])
    assert int(state.opt_state.updates) == 25 and history[-1]["cg_iters"] >= 1


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_float64_params_keep_every_product_in_float64(loss_name):
    """Losses, Gauss-Newton products, the structural term, CG and the state follow float64 params."""
    with jax.enable_x64():
        params, net = tiny_rnn(jax.random.PRNGKey(3))
        params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        batch = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                             tiny_batch(jax.random.PRNGKey(4), loss_name))
        outputs, gv, _ = hf.gauss_newton_operator(net, LOSSES[loss_name], params, batch,
                                                  net_returns_hidden=True)
        flat, _ = ravel_pytree(params)
        v = jax.random.normal(jax.random.PRNGKey(5), flat.shape, jnp.float64)
        assert gv(v, 0.3).dtype == jnp.float64 and outputs[0].dtype == jnp.float64
        # The float64 loss is the same function as rnnjax.losses' float32 one.
        loss64 = LOSSES[loss_name].loss(outputs[0], batch)
        loss32 = LOSSES[loss_name].loss(outputs[0].astype(jnp.float32), batch)
        assert loss64.dtype == jnp.float64 and loss32.dtype == jnp.float32
        np.testing.assert_allclose(float(loss64), float(loss32), rtol=1e-5)
        # In float64 the product is symmetric to rounding: u.Gv == v.Gu to ~1e-12.
        u = jax.random.normal(jax.random.PRNGKey(6), flat.shape, jnp.float64)
        np.testing.assert_allclose(jnp.vdot(u, gv(v, 0.3)), jnp.vdot(v, gv(u, 0.3)), rtol=1e-12)
        opt = hf.hessian_free(net, LOSSES[loss_name], net_returns_hidden=True,
                              structural_damping=0.1, max_cg_iters=5)
        state = opt.init(params)
        new, state, info = opt.update(params, state, batch, batch, batch)
        assert state.damping.dtype == jnp.float64 and state.direction.dtype == jnp.float64
        assert info["loss"].dtype == jnp.float64
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(new))


def test_martens2011_protocol_solves_addition_at_T10_in_a_few_updates():
    """The paper's protocol (smaller batches: 2,000 / 500 / 500, 100 CG steps) on T = 10."""
    from rnnjax.data import synthetic
    from rnnjax.models import hf as adapter, tagger

    protocol = hf.martens2011(gradient_batch=2000, curvature_batch=500, eval_batch=500,
                              max_cg_iters=100)
    assert (protocol.hidden, protocol.sparse_connections, protocol.max_cg_iters,
            protocol.structural_damping) == (100, 15, 100, 1 / 30)
    task = synthetic.get("addition")
    cell = adapter.protocol_cell(protocol)
    w_xh = cell.init(jax.random.PRNGKey(3), task.input_size)["W_xh"]
    assert int((w_xh != 0).sum()) == 2 * 100 and float(jnp.std(w_xh)) < 0.2  # sparse, scaled down
    model = tagger.make(cell, task.input_size, task.output_size, readout_scale=0.01)
    params = model.init(jax.random.PRNGKey(0))

    def net(p, batch):
        return model.outputs_and_hiddens(p, batch.inputs)

    state, step = adapter.state_and_step(net, task.kind, params, protocol)
    step = jax.jit(step)
    predict = jax.jit(lambda p, xs: net(p, synthetic.Batch(xs, None, None))[0])
    rates = []
    for i in range(12):
        k = jax.random.fold_in(jax.random.PRNGKey(1), i)
        batches = tuple(task.generate(jax.random.fold_in(k, j), n, 10)
                        for j, n in enumerate((2000, 500, 500)))
        state, metrics = step(state, batches)
        rates.append(synthetic.evaluate(task, lambda xs: predict(state.params, xs),
                                        jax.random.PRNGKey(9), 10, num_sequences=2000,
                                        batch_size=2000))
        if synthetic.solved(rates[-1]):
            break
    assert synthetic.solved(rates[-1]), rates
    assert rates[0] > 0.05  # it learned: the first update did not solve it
    with pytest.raises(ValueError, match="unknown setting"):
        hf.martens2011(cg_iters=3)
