"""Tests of rnnjax.optim: the optimizer factory (from_config) and the gradient remedies
as optax transformations, seen through the one train step (rnnjax.train.make_train_step)."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax import optim, train
from rnnjax.optim import transforms


@dataclasses.dataclass(frozen=True)
class Config:
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    lr_schedule: str = "constant"
    steps: int = 20
    warmup_steps: int = 0
    decay_rate: float = 0.5
    decay_steps: int = 0
    decay_begin: int = 0
    clip_norm: float | None = None
    nan_repair: bool = False


PARAMS = {"W_hh": jnp.eye(3) * 2.0, "b": jnp.ones(3)}


def loss_fn(params, batch, key):
    del key
    x, poison = batch
    loss = jnp.sum((params["W_hh"] @ x + params["b"]) ** 2)
    return loss * jnp.where(poison, jnp.nan, 1.0)


def batch(step, poison=False):
    return jax.random.normal(jax.random.key(step), (3,)), jnp.asarray(poison)


def test_from_config_without_remedies_is_make_itself():
    config = Config(optimizer="adam", learning_rate=0.05, lr_schedule="step", decay_steps=3,
                    decay_begin=2)
    a = optim.from_config(config)
    b = optim.make("adam", 0.05, schedule="step", steps=20, decay_steps=3, decay_begin=2)
    sa, sb = a.init(PARAMS), b.init(PARAMS)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)  # old checkpoints still restore
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for _ in range(6):  # through the schedule's first drop
        ua, sa = a.update(grads, sa, PARAMS)
        ub, sb = b.update(grads, sb, PARAMS)
        chex.assert_trees_all_equal(ua, ub)


def test_from_config_honours_every_schedule_setting():
    config = Config(lr_schedule="step", decay_rate=0.5, decay_steps=3, decay_begin=4)
    opt = optim.from_config(config)
    state, grads, rates = opt.init(PARAMS), {"W_hh": jnp.zeros((3, 3)), "b": jnp.ones(3)}, []
    for _ in range(12):
        updates, state = opt.update(grads, state, PARAMS)
        rates.append(-float(updates["b"][0]))
    np.testing.assert_allclose(rates, 0.1 * np.array([1, 1, 1, 1, 1, 1, 1, .5, .5, .5, .25, .25]),
                               rtol=1e-6)
    assert float(optim.learning_rate_of(state)) == pytest.approx(0.1)
    state = optim.with_learning_rate(state, 0.01)   # sweeps and annealing still work
    assert float(optim.learning_rate_of(state)) == pytest.approx(0.01)


def test_from_config_names_missing_settings_and_bad_values():
    @dataclasses.dataclass(frozen=True)
    class Partial:
        optimizer: str = "sgd"
        learning_rate: float = 0.1

    with pytest.raises(ValueError, match="Partial lacks lr_schedule"):
        optim.from_config(Partial())
    for bad in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
            optim.from_config(Config(learning_rate=bad))
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        optim.from_config(Config(clip_norm=math.inf))


def test_clipping_in_the_optimizer_reports_through_the_train_step():
    opt = optim.from_config(Config(clip_norm=0.5, learning_rate=1.0))
    step = jax.jit(train.make_train_step(loss_fn, opt))
    state = train.init_state(PARAMS, opt, seed=0)
    new, metrics = step(state, batch(0))
    assert float(metrics["grad_norm"]) > 0.5
    assert float(metrics["clipped"]) == 1.0 and int(metrics["total_clipped"]) == 1
    delta = optax.tree.norm(jax.tree.map(jnp.subtract, new.params, state.params))
    np.testing.assert_allclose(delta, 0.5, rtol=1e-5)


def test_clipping_by_keyword_and_by_config_give_the_same_numbers():
    """The keyword (kept for existing callers) and the chained transformation are one code."""
    plain = optim.make("sgd", 0.1)
    by_kw = jax.jit(train.make_train_step(loss_fn, plain, clip_norm=0.5))
    chained = optim.from_config(Config(clip_norm=0.5))
    by_cfg = jax.jit(train.make_train_step(loss_fn, chained))
    a, b = train.init_state(PARAMS, plain, seed=0), train.init_state(PARAMS, chained, seed=0)
    for s in range(5):
        a, ma = by_kw(a, batch(s))
        b, mb = by_cfg(b, batch(s))
        assert float(ma["clipped"]) == float(mb["clipped"])
    chex.assert_trees_all_equal(a.params, b.params)


def test_nan_repair_shrinks_w_hh_instead_of_skipping_the_step():
    opt = optim.from_config(Config(nan_repair=True, clip_norm=1.0, learning_rate=1.0))
    step = jax.jit(train.make_train_step(loss_fn, opt))
    state = train.init_state(PARAMS, opt, seed=0)
    new, metrics = step(state, batch(0, poison=True))
    assert float(metrics["repaired"]) == 1.0 and int(metrics["total_repaired"]) == 1
    assert float(metrics["finite"]) == 1.0 and int(new.bad_steps) == 0
    # W_hh <- W_hh - lr * 0.02 W_hh; every other parameter is unchanged.
    np.testing.assert_allclose(new.params["W_hh"], PARAMS["W_hh"] * 0.98, rtol=1e-6)
    np.testing.assert_allclose(new.params["b"], PARAMS["b"])
    new, metrics = step(new, batch(1))
    assert float(metrics["repaired"]) == 0.0 and int(metrics["total_repaired"]) == 1


def test_without_repair_a_nan_step_is_skipped_and_totals_roll_back():
    opt = optim.from_config(Config(clip_norm=0.5))
    step = jax.jit(train.make_train_step(loss_fn, opt))
    state = train.init_state(PARAMS, opt, seed=0)
    state, _ = step(state, batch(0))
    bad, metrics = step(state, batch(1, poison=True))
    assert float(metrics["finite"]) == 0.0 and int(bad.bad_steps) == 1
    chex.assert_trees_all_equal(bad.params, state.params)
    chex.assert_trees_all_equal(bad.opt_state, state.opt_state)
    assert int(metrics["total_clipped"]) == 1  # the skipped step is not counted


def test_the_train_step_with_both_remedies_keeps_their_metrics():
    opt = optim.make("sgd", 0.1)
    step = jax.jit(train.make_train_step(loss_fn, opt, clip_norm=1.0, nan_repair=True,
                                         param_norms=True))
    _, metrics = step(train.init_state(PARAMS, opt, seed=0), batch(0, poison=True))
    assert float(metrics["repaired"]) == 1.0
    assert {"grad_norm/W_hh", "grad_norm/b"} <= set(metrics)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 1e2))
def test_clip_grads_never_exceeds_the_bound_and_keeps_the_direction(scale, max_norm):
    grads = {"a": jnp.array([3.0, -4.0]) * scale, "b": jnp.array([[1.0]]) * scale}
    clipped, norm = transforms.clip_grads(grads, max_norm)
    out = float(optax.tree.norm(clipped))
    assert out <= max_norm * (1 + 1e-5)
    np.testing.assert_allclose(out, min(float(norm), max_norm), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(clipped["a"]) * float(norm),
                               np.asarray(grads["a"]) * out, rtol=1e-4)


def test_metrics_of_finds_the_reports_anywhere_in_a_state():
    opt = optax.chain(transforms.repair_nonfinite(), transforms.clip_by_global_norm(1.0),
                      optax.sgd(0.1))
    assert set(transforms.metrics_of(opt.init(PARAMS))) == {
        "clipped", "total_clipped", "repaired", "total_repaired"}
    assert transforms.metrics_of(optax.adam(0.1).init(PARAMS)) == {}
    with pytest.raises(ValueError, match="repair_nonfinite needs params"):
        t = transforms.repair_nonfinite()
        t.update(PARAMS, t.init(PARAMS))
