"""Tests of orbax checkpoints and JSON side files (rnnjax.checkpoint)."""

from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from rnnjax import checkpoint, optim, train


def make_state(hidden=4, seed=0):
    key = jax.random.key(seed)
    params = {"W_hh": jax.random.normal(key, (hidden, hidden)), "b_h": jnp.zeros(hidden)}
    opt = optim.make("adam", 1e-3)
    return train.init_state(params, opt, rng=jax.random.key(seed + 1), extra=jnp.ones((2, hidden)))


def test_save_restore_round_trip(tmp_path):
    state = make_state()
    state = state._replace(step=jnp.int32(7), bad_steps=jnp.int32(0))
    mngr = checkpoint.manager(str(tmp_path), keep=2)
    checkpoint.save(mngr, 7, state)
    mngr.wait_until_finished()
    mngr.close()
    template = make_state(seed=5)  # same structure, other values
    restored = checkpoint.restore(str(tmp_path), template)
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    chex.assert_trees_all_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    assert int(restored.step) == 7
    assert type(restored.opt_state) is type(state.opt_state)


def test_keeps_only_the_last_k(tmp_path):
    state = make_state()
    mngr = checkpoint.manager(str(tmp_path), keep=2)
    for step in (1, 2, 3, 4):
        checkpoint.save(mngr, step, state._replace(step=jnp.int32(step)))
    mngr.wait_until_finished()
    mngr.close()
    assert checkpoint.all_steps(str(tmp_path)) == [3, 4]
    assert checkpoint.latest_step(str(tmp_path)) == 4
    assert int(checkpoint.restore(str(tmp_path), state, step=3).step) == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 1"):
        checkpoint.restore(str(tmp_path), state, step=1)


def test_unfinished_checkpoint_is_ignored(tmp_path):
    state = make_state()
    mngr = checkpoint.manager(str(tmp_path), keep=3)
    checkpoint.save(mngr, 5, state)
    mngr.wait_until_finished()
    mngr.close()
    # What a save cut short by a kill leaves behind: orbax's temporary directory.
    os.makedirs(tmp_path / checkpoint.CHECKPOINT_DIR / "9.orbax-checkpoint-tmp-123")
    assert checkpoint.latest_step(str(tmp_path)) == 5


def test_restoring_into_a_different_configuration_fails_clearly(tmp_path):
    mngr = checkpoint.manager(str(tmp_path), keep=1)
    checkpoint.save(mngr, 1, make_state(hidden=4))
    mngr.wait_until_finished()
    mngr.close()
    with pytest.raises(ValueError, match="different configuration"):
        checkpoint.restore(str(tmp_path), make_state(hidden=8))


def test_no_checkpoint(tmp_path):
    assert checkpoint.latest_step(str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(str(tmp_path), make_state())
    with pytest.raises(ValueError, match="keep"):
        checkpoint.manager(str(tmp_path), keep=0)


def test_json_side_files(tmp_path):
    vocab = {"chars": list("abc "), "size": 4}
    path = checkpoint.save_json(str(tmp_path), "vocab", vocab)
    assert path.endswith("vocab.json") and not os.path.exists(path + ".tmp")
    assert checkpoint.load_json(str(tmp_path), "vocab") == vocab
    with open(path) as f:
        assert json.load(f) == vocab
    checkpoint.save_json(str(tmp_path), "vocab.json", {"size": 5})  # atomic overwrite
    assert checkpoint.load_json(str(tmp_path), "vocab")["size"] == 5
    with pytest.raises(ValueError, match="plain file name"):
        checkpoint.save_json(str(tmp_path), "../escape", {})
    with pytest.raises(FileNotFoundError, match="no side file"):
        checkpoint.load_json(str(tmp_path), "missing")


def test_optax_states_of_every_optimizer_round_trip(tmp_path):
    params = {"w": jnp.arange(3.0)}
    for i, name in enumerate(optim.OPTIMIZERS + ("plain_optax",)):
        opt = optax.adamw(1e-3) if name == "plain_optax" else optim.make(name, 0.1)
        state = train.init_state(params, opt, seed=i)
        _, opt_state = opt.update(params, state.opt_state, params)  # non-trivial moments
        state = state._replace(opt_state=opt_state)
        mngr = checkpoint.manager(str(tmp_path / name), keep=1)
        checkpoint.save(mngr, 0, state)
        mngr.wait_until_finished()
        mngr.close()
        restored = checkpoint.restore(str(tmp_path / name), state)
        chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
