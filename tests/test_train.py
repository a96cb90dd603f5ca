"""Tests of the train state, the guarded train step and the loop (rnnjax.train)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import checkpoint, optim, train

TRUE_W = jnp.array([1.0, -2.0, 0.5])


def loss_fn(params, batch, key):
    x, y = batch
    # A little noise from the step key, so the PRNG stream is part of the test.
    noise = 0.01 * jax.random.normal(key, y.shape)
    return jnp.mean((x @ params["w"] + params["b"] - y - noise) ** 2)


def batch_fn(step: int, seed: int = 7):
    key = jax.random.fold_in(jax.random.key(seed), step)
    x = jax.random.normal(key, (16, 3))
    return x, x @ TRUE_W + 0.3


def fresh_state(optimizer, seed=0):
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    return train.init_state(params, optimizer, seed=seed)


def test_init_state_is_a_pytree_with_counters():
    opt = optax.sgd(0.1)
    state = fresh_state(opt)
    chex.assert_shape(state.step, ())
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert int(state.bad_steps) == 0 and int(state.total_bad_steps) == 0
    # A pytree: it flattens and rebuilds to itself.
    leaves, treedef = jax.tree.flatten(state)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, jax.random.key_data(rebuilt.rng)),
                                jax.random.key_data(state.rng))


def test_train_step_is_pure():
    opt = optax.adam(0.05)
    step_fn = train.make_train_step(loss_fn, opt)
    state = fresh_state(opt)
    batch = batch_fn(0)
    s1, m1 = jax.jit(step_fn)(state, batch)
    s2, m2 = jax.jit(step_fn)(state, batch)
    s3, m3 = step_fn(state, batch)  # un-jitted gives the same numbers
    chex.assert_trees_all_equal(s1.params, s2.params)
    chex.assert_trees_all_equal(m1, m2)
    chex.assert_trees_all_close(s1.params, s3.params, rtol=1e-6)
    # The input state was not changed and the step advanced by one.
    assert int(state.step) == 0 and int(s1.step) == 1
    assert float(m1["loss"]) > 0


def test_training_learns_a_linear_map():
    opt = optim.make("adam", 0.1)
    step_fn = jax.jit(train.make_train_step(loss_fn, opt))
    state = fresh_state(opt)
    first = None
    for s in range(150):
        state, metrics = step_fn(state, batch_fn(s))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 1e-2 < first
    np.testing.assert_allclose(state.params["w"], TRUE_W, atol=0.05)


def test_clip_norm_bounds_the_update():
    opt = optax.sgd(1.0)
    step_fn = train.make_train_step(loss_fn, opt, clip_norm=0.5)
    state = fresh_state(opt)
    new_state, metrics = step_fn(state, batch_fn(0))
    assert float(metrics["grad_norm"]) > 0.5  # the raw gradient was larger
    delta = optax.tree.norm(jax.tree.map(jnp.subtract, new_state.params, state.params))
    np.testing.assert_allclose(delta, 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="clip_norm"):
        train.make_train_step(loss_fn, opt, clip_norm=-1.0)


def nan_on_odd_loss(params, batch, key):
    x, y, poison = batch
    loss = jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
    return loss * jnp.where(poison, jnp.nan, 1.0)


def poisoned_batch_fn(bad_from: int):
    def fn(step):
        x, y = batch_fn(step)
        return x, y, jnp.asarray(step >= bad_from)
    return fn


def test_non_finite_step_is_skipped_and_counted():
    opt = optax.adam(0.1)
    step_fn = jax.jit(train.make_train_step(nan_on_odd_loss, opt))
    state = fresh_state(opt)
    state, _ = step_fn(state, poisoned_batch_fn(99)(0))  # one good step
    bad_state, metrics = step_fn(state, poisoned_batch_fn(0)(1))
    assert float(metrics["finite"]) == 0.0
    chex.assert_trees_all_equal(bad_state.params, state.params)
    chex.assert_trees_all_equal(bad_state.opt_state, state.opt_state)
    assert int(bad_state.step) == 2 and int(bad_state.bad_steps) == 1
    bad_state, _ = step_fn(bad_state, poisoned_batch_fn(0)(2))
    assert int(bad_state.bad_steps) == 2 and int(bad_state.total_bad_steps) == 2
    good_state, _ = step_fn(bad_state, poisoned_batch_fn(99)(3))
    assert int(good_state.bad_steps) == 0 and int(good_state.total_bad_steps) == 2
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(good_state.params))


def test_loop_stops_after_max_bad_steps_and_keeps_last_good_checkpoint(tmp_path):
    opt = optax.adam(0.1)
    step_fn = train.make_train_step(nan_on_odd_loss, opt)
    workdir = str(tmp_path)
    with pytest.raises(train.NonFiniteError, match="3 non-finite steps in a row"):
        train.run(workdir, fresh_state(opt), step_fn, poisoned_batch_fn(12), steps=40,
                  log_every=2, checkpoint_every=2, keep=2, max_bad_steps=3, progress=False)
    # Steps 13..15 were bad (steps counted from 1): checkpoints 10 and 12 are kept, none after.
    assert checkpoint.all_steps(workdir) == [10, 12]
    restored = checkpoint.restore(workdir, fresh_state(opt))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(restored.params))


def test_metrics_file_has_step_and_loss_and_eval(tmp_path):
    opt = optax.adam(0.1)
    step_fn = train.make_train_step(loss_fn, opt)
    seen = []
    eval_batch = batch_fn(10_000)
    eval_step = train.make_eval_step(lambda p, b: {"loss": loss_fn(p, b, jax.random.key(0))})

    def eval_fn(state):
        return train.evaluate(eval_step, state.params, [eval_batch])

    _, history = train.run(str(tmp_path), fresh_state(opt), step_fn, batch_fn, steps=30,
                           log_every=10, eval_fn=eval_fn, eval_every=15, on_log=seen.append,
                           progress=False)
    with open(tmp_path / train.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [10, 15, 20, 30]
    assert records == history == seen
    assert all(isinstance(r["loss"], float) for r in records)
    assert "eval_loss" in records[1] and "eval_loss" in records[-1]
    assert records[-1]["eval_loss"] < records[0]["loss"]


def _run_to(workdir, steps, crash_at=None):
    opt = optim.make("adam", 0.05, schedule="cosine", steps=60)
    step_fn = train.make_train_step(loss_fn, opt, clip_norm=5.0)

    def maybe_crashing_batch_fn(step):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return batch_fn(step)

    return train.run(workdir, fresh_state(opt), step_fn, maybe_crashing_batch_fn, steps=steps,
                     log_every=5, checkpoint_every=10, keep=2, progress=False)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    full_state, full = _run_to(str(tmp_path / "full"), 60)
    resumed_dir = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        _run_to(resumed_dir, 60, crash_at=37)  # dies between checkpoints 30 and 40
    assert checkpoint.latest_step(resumed_dir) == 30
    state, resumed = _run_to(resumed_dir, 60)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bit for bit
    chex.assert_trees_all_equal(state.params, full_state.params)
    chex.assert_trees_all_equal(state.opt_state, full_state.opt_state)


def test_resume_continues_to_more_steps(tmp_path):
    _, first = _run_to(str(tmp_path), 20)
    _, more = _run_to(str(tmp_path), 30)
    assert more[: len(first)] == first and more[-1]["step"] == 30


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp, optax
    from rnnjax import train
    workdir, kill_at = ARGV[0], int(ARGV[1])

    def loss_fn(p, batch, key):
        x, y = batch
        return jnp.mean((x @ p["w"] - y + 0.01 * jax.random.normal(key, y.shape)) ** 2)

    def batch_fn(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush of pending saves
        x = jax.random.normal(jax.random.fold_in(jax.random.key(3), step), (8, 4))
        return x, x @ jnp.arange(4.0)

    opt = optax.adam(0.05)
    state = train.init_state({"w": jnp.zeros(4)}, opt, seed=1)
    train.run(workdir, state, train.make_train_step(loss_fn, opt), batch_fn, steps=40,
              log_every=4, checkpoint_every=8, keep=2, progress=False)
""")


def test_sigkilled_run_resumes_bit_identical(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def launch(workdir, kill_at):
        return subprocess.run([sys.executable, "-c", "import sys; ARGV = sys.argv[1:]\n" + KILL_SCRIPT,
                               workdir, str(kill_at)],
                              env=env, capture_output=True, text=True, timeout=120)

    killed = str(tmp_path / "killed")
    proc = launch(killed, 27)
    assert proc.returncode == -9, proc.stderr
    # Saves are asynchronous and atomic: the kill may have caught the save of
    # step 24 unfinished, and then the last complete checkpoint is step 16.
    assert checkpoint.latest_step(killed) in (16, 24)
    assert launch(killed, -1).returncode == 0
    # The run that was never stopped: the same script, in this process.
    straight = str(tmp_path / "straight")
    exec(compile(KILL_SCRIPT, "kill_script", "exec"),
         {"__name__": "kill_script", "ARGV": [straight, "-1"]})
    losses = lambda d: [(r["step"], r["loss"]) for r in train.read_metrics(d)]
    assert losses(killed) == losses(straight) and losses(killed)[-1][0] == 40


def test_extra_state_carries_across_steps_and_is_checkpointed(tmp_path):
    """A truncated-BPTT-style carry: loss_fn reads and returns state.extra."""

    def carry_loss(params, extra, batch, key):
        x, y = batch
        pred = x @ params["w"] + params["b"]
        return jnp.mean((pred - y) ** 2), (extra + 1.0, {"carry": extra})

    opt = optax.sgd(0.05)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    state = train.init_state(params, opt, seed=0, extra=jnp.zeros(()))
    step_fn = train.make_train_step(carry_loss, opt, uses_extra=True)
    state, history = train.run(str(tmp_path), state, step_fn, batch_fn, steps=12, log_every=4,
                               checkpoint_every=4, progress=False)
    assert float(state.extra) == 12.0
    assert history[-1]["carry"] == pytest.approx(np.mean([8, 9, 10, 11]))
    restored = checkpoint.restore(str(tmp_path), state)
    assert float(restored.extra) == 12.0


def test_run_rejects_bad_arguments(tmp_path):
    opt = optax.sgd(0.1)
    step_fn = train.make_train_step(loss_fn, opt)
    with pytest.raises(ValueError, match="log_every"):
        train.run(None, fresh_state(opt), step_fn, batch_fn, steps=5, log_every=0)
    with pytest.raises(ValueError, match="checkpoint_every needs a workdir"):
        train.run(None, fresh_state(opt), step_fn, batch_fn, steps=5, checkpoint_every=2)
    with pytest.raises(ValueError, match="steps"):
        train.run(None, fresh_state(opt), step_fn, batch_fn, steps=-1)


def test_optimizers_and_schedules_by_name():
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.ones(2)}
    for name in optim.OPTIMIZERS:
        opt = optim.make(name, 0.1)
        updates, _ = opt.update(grads, opt.init(params), params)
        assert float(updates["w"][0]) < 0, name  # a descent direction
    for schedule in optim.SCHEDULES:
        opt = optim.make("momentum", 0.1, schedule=schedule, steps=10, warmup_steps=2)
        updates, _ = opt.update(grads, opt.init(params), params)
        assert bool(jnp.all(jnp.isfinite(updates["w"]))), schedule
    opt = optim.make("sgd", 0.1, schedule="warmup_cosine", steps=10, warmup_steps=2)
    state = opt.init(params)
    rates = []
    for _ in range(10):
        updates, state = opt.update(grads, state, params)
        rates.append(-float(updates["w"][0]))
    assert rates[0] == 0.0 and max(rates) == pytest.approx(0.1) and rates[-1] < 0.02
    state = optim.with_learning_rate(opt.init(params), 0.3)
    assert float(optim.learning_rate_of(state)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*adam"):
        optim.make("lbfgs", 0.1)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        optim.make("sgd", 0.1, schedule="linear")


def test_step_schedule_holds_the_peak_until_decay_begin():
    """Zaremba et al.'s schedule: the peak rate for decay_begin steps, then halved
    every decay_steps."""
    shape = optim.schedule_shape("step", decay_rate=0.5, decay_steps=3, decay_begin=4)
    assert [float(shape(t)) for t in range(12)] == [1, 1, 1, 1, 1, 1, 1, .5, .5, .5, .25, .25]
    with pytest.raises(ValueError, match="decay_begin must be >= 0"):
        optim.schedule_shape("step", decay_steps=3, decay_begin=-1)


def test_anneal_on_plateau_lowers_the_rate_only_after_evaluations_that_do_not_improve(tmp_path):
    opt = optim.make("sgd", 0.8)
    valid = iter([3.0, 2.0, 2.5, 1.0, 1.0])  # improves, improves, worse, improves, equal
    rates = []

    def eval_fn(state):
        return {"loss": next(valid)}

    def after_eval(state, history):
        state = hook(state, history)
        rates.append(float(optim.learning_rate_of(state.opt_state)))
        return state

    hook = optim.anneal_on_plateau("eval_loss", 0.25)
    state, _ = train.run(str(tmp_path), fresh_state(opt), train.make_train_step(loss_fn, opt),
                         batch_fn, steps=25, eval_fn=eval_fn, eval_every=5,
                         after_eval=after_eval, checkpoint_every=5, progress=False)
    assert rates == pytest.approx([0.8, 0.8, 0.2, 0.2, 0.05])
    restored = checkpoint.restore(str(tmp_path), fresh_state(opt))  # the rate is checkpointed
    assert float(optim.learning_rate_of(restored.opt_state)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="factor must be in"):
        optim.anneal_on_plateau("eval_loss", 0.0)


def test_stop_fn_ends_the_run_with_a_record_and_a_checkpoint(tmp_path):
    opt = optax.adam(0.1)
    step_fn = train.make_train_step(loss_fn, opt)
    state, history = train.run(str(tmp_path), fresh_state(opt), step_fn, batch_fn, steps=100,
                               log_every=10, checkpoint_every=10,
                               stop_fn=lambda s: int(s.step) >= 13, progress=False)
    assert int(state.step) == 13 and [r["step"] for r in history] == [10, 13]
    assert checkpoint.latest_step(str(tmp_path)) == 13


def test_running_totals_are_logged_as_their_value_not_a_mean():
    """Metrics named total_* (e.g. Hessian-free's curvature products) are running totals."""
    opt = optax.sgd(0.1)
    inner = train.make_train_step(loss_fn, opt)

    def step_fn(state, batch):
        new_state, metrics = inner(state, batch)
        return new_state, dict(metrics, total_seen=new_state.step.astype(jnp.float32),
                               seen=new_state.step.astype(jnp.float32))

    _, history = train.run(None, fresh_state(opt), step_fn, batch_fn, steps=8, log_every=4,
                           progress=False)
    assert [r["total_seen"] for r in history] == [4.0, 8.0]
    assert [r["seen"] for r in history] == [2.5, 6.5]   # others: means over the window
