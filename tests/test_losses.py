"""Tests for rnnjax.losses: masked means, agreement with direct formulas, unit changes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import losses


def test_cross_entropy_matches_direct_formula_and_mask_drops_positions():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 7))
    targets = jax.random.randint(jax.random.PRNGKey(1), (5, 3), 0, 7)
    mask = jnp.arange(5)[:, None] < jnp.array([5, 2, 0])[None, :]   # [T, B]
    logp = np.asarray(jax.nn.log_softmax(logits))
    per = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    m = np.asarray(mask, np.float64)
    chex.assert_trees_all_close(losses.cross_entropy(logits, targets, mask),
                                (per * m).sum() / m.sum(), rtol=1e-5)
    chex.assert_trees_all_close(losses.cross_entropy(logits, targets), per.mean(), rtol=1e-5)
    total, count = losses.cross_entropy_sum(logits, targets, mask)
    assert float(count) == 7.0
    # A masked position has no gradient.
    g = jax.grad(lambda l: losses.cross_entropy(l, targets, mask))(logits)
    assert float(jnp.abs(g[:, 2]).sum()) == 0.0


def test_empty_mask_gives_zero_not_nan():
    logits = jnp.zeros((2, 4))
    assert float(losses.cross_entropy(logits, jnp.zeros(2, int), jnp.zeros(2))) == 0.0


def test_squared_error_and_accuracy():
    p = jnp.array([[[1.0, 2.0]], [[3.0, 5.0]]])          # [T=2, B=1, D=2]
    t = jnp.zeros_like(p)
    assert float(losses.squared_error(p, t)) == pytest.approx((1 + 4 + 9 + 25) / 4)
    assert float(losses.squared_error(p, t, jnp.array([[1.0], [0.0]]))) == pytest.approx(2.5)
    logits = jnp.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    assert float(losses.accuracy(logits, jnp.array([1, 1, 1]))) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="targets"):
        losses.cross_entropy(logits, jnp.array([1, 1]))


def test_binary_cross_entropy_is_stable_and_correct():
    x = jnp.array([-100.0, 0.0, 100.0])
    y = jnp.array([0.0, 1.0, 1.0])
    assert float(losses.sigmoid_binary_cross_entropy(x, y)) == pytest.approx(math.log(2) / 3)


def test_unit_changes():
    assert losses.bits_per_character(math.log(2)) == pytest.approx(1.0)
    assert losses.perplexity(math.log(100.0)) == pytest.approx(100.0)


def test_unit_changes_of_a_diverged_run_are_inf_not_an_overflow():
    """A finite divergence (loss ~1e7 nats) gives inf perplexity, not OverflowError."""
    assert losses.perplexity(1e7) == math.inf
    assert losses.perplexity(np.float64(1e7)) == math.inf
    assert losses.bits_per_character(1e7) == pytest.approx(1e7 / math.log(2))
    assert bool(jnp.isinf(losses.perplexity(jnp.float32(1e7))))
