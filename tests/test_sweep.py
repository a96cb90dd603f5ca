"""Vmapped sweeps equal the runs one by one; sharded steps equal single-device steps."""

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
import pytest

from rnnjax import cells, losses, optim, recurrence, sweep, train
from rnnjax.data import synthetic

CELL = cells.vanilla(6, "tanh")
TASK = synthetic.get("parity")
OPT = optim.make("adam", 1e-3)  # the rate is replaced per member


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"cell": CELL.init(k1, 1), "W_hy": 0.3 * jax.random.normal(k2, (6, 2)), "b_y": jnp.zeros(2)}


def loss_fn(params, batch, key):
    _, hs = recurrence.unroll(CELL, params["cell"], batch.inputs)
    return losses.cross_entropy(hs @ params["W_hy"] + params["b_y"], batch.targets)


def init_one(key, learning_rate):
    state = train.init_state(init_params(key), OPT, rng=key)
    return state._replace(opt_state=optim.with_learning_rate(state.opt_state, learning_rate))


def batch_fn(step):
    return TASK.generate(jax.random.fold_in(jax.random.key(5), step), 16, 8)


SEEDS = jnp.array([0, 1, 2, 0])
RATES = jnp.array([1e-2, 3e-2, 1e-2, 3e-2])
STEPS = 12


def test_vmapped_sweep_equals_runs_one_by_one():
    keys = jax.vmap(jax.random.key)(SEEDS)
    step_fn = train.make_train_step(loss_fn, OPT, clip_norm=1.0)
    stacked = sweep.init_many(init_one, keys, RATES)
    assert sweep.size(stacked) == 4
    stacked, history = train.run(None, stacked, sweep.vmap_step(step_fn), batch_fn, steps=STEPS,
                                 log_every=4, progress=False)
    assert len(history[-1]["loss"]) == 4  # one loss per configuration
    one = jax.jit(step_fn)
    for i in range(4):
        state = init_one(jax.random.key(int(SEEDS[i])), RATES[i])
        step_losses = []
        for s in range(STEPS):
            state, metrics = one(state, batch_fn(s))
            step_losses.append(float(metrics["loss"]))
        got = sweep.member(stacked, i)
        chex.assert_trees_all_close(got.params, state.params, rtol=1e-5, atol=1e-6)
        # The last record is the mean loss of steps 9..12.
        np.testing.assert_allclose(history[-1]["loss"][i], np.mean(step_losses[-4:]), rtol=1e-5)
        assert float(optim.learning_rate_of(got.opt_state)) == pytest.approx(float(RATES[i]))
    # The members really differ: different seeds or rates give different params.
    assert not np.allclose(sweep.member(stacked, 0).params["W_hy"], sweep.member(stacked, 1).params["W_hy"])


def test_vmapped_sweep_checkpoints_and_resumes(tmp_path):
    keys = jax.vmap(jax.random.key)(SEEDS)
    step_fn = sweep.vmap_step(train.make_train_step(loss_fn, OPT))
    fresh = lambda: sweep.init_many(init_one, keys, RATES)
    full, full_hist = train.run(str(tmp_path / "a"), fresh(), step_fn, batch_fn, steps=8,
                                log_every=2, checkpoint_every=4, progress=False)
    train.run(str(tmp_path / "b"), fresh(), step_fn, batch_fn, steps=4, log_every=2,
              checkpoint_every=4, progress=False)
    resumed, resumed_hist = train.run(str(tmp_path / "b"), fresh(), step_fn, batch_fn, steps=8,
                                      log_every=2, checkpoint_every=4, progress=False)
    assert [r["loss"] for r in resumed_hist] == [r["loss"] for r in full_hist]
    chex.assert_trees_all_equal(resumed.params, full.params)


def test_helpers():
    trees = [{"a": jnp.full((2,), float(i))} for i in range(3)]
    stacked = sweep.stack(trees)
    chex.assert_shape(stacked["a"], (3, 2))
    chex.assert_trees_all_equal(sweep.unstack(stacked), trees)
    with pytest.raises(IndexError):
        sweep.member(stacked, 3)
    assert sweep.grid(lr=[1, 2], hidden=[8, 16]) == [
        {"lr": 1, "hidden": 8}, {"lr": 1, "hidden": 16}, {"lr": 2, "hidden": 8}, {"lr": 2, "hidden": 16}]
    with pytest.raises(ValueError, match="'hidden' has no values"):
        sweep.grid(lr=[1], hidden=[])
    with pytest.raises(ValueError, match="same leading size"):
        sweep.init_many(init_one, jax.vmap(jax.random.key)(jnp.arange(3)), RATES)


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from rnnjax import cells, losses, optim, parallel, recurrence, train
    from rnnjax.data import synthetic
    assert jax.device_count() == 4, jax.devices()
    cell = cells.gru(8)
    task = synthetic.get("parity")

    def loss_fn(p, batch, key):
        _, hs = recurrence.unroll(cell, p["cell"], batch.inputs)
        return losses.cross_entropy(hs @ p["W"], batch.targets)

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"cell": cell.init(k1, 1), "W": 0.3 * jax.random.normal(k2, (8, 2))}
    opt = optim.make("adam", 3e-2)
    step_fn = train.make_train_step(loss_fn, opt, clip_norm=1.0)
    batch_fn = lambda s: task.generate(jax.random.fold_in(jax.random.key(1), s), 32, 10)
    single, single_hist = train.run(None, train.init_state(params, opt, seed=0), step_fn,
                                    batch_fn, steps=6, log_every=1, progress=False)
    mesh = parallel.data_mesh()
    sharded_step = parallel.data_parallel_step(step_fn, mesh, batch_axis=1)  # [T, B, ...]
    batch = parallel.shard_batch(batch_fn(0), mesh, batch_axis=1)
    assert len(batch.inputs.sharding.device_set) == 4
    assert batch.inputs.addressable_shards[0].data.shape == (10, 8, 1)  # 32 / 4 per device
    state = parallel.replicate(train.init_state(params, opt, seed=0), mesh)
    sharded, sharded_hist = train.run(None, state, sharded_step, batch_fn, steps=6,
                                      log_every=1, progress=False, jit=False)
    assert len(sharded.params["W"].sharding.device_set) == 4  # replicated on all four
    np.testing.assert_allclose([r["loss"] for r in sharded_hist],
                               [r["loss"] for r in single_hist], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        # Adam divides by sqrt(v): summation-order noise (1e-7) in tiny gradients shows as ~1e-6.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    carried = train.init_state(params, opt, seed=0, extra=jnp.zeros((32, 8)))  # a [B, H] carry
    placed = jax.device_put(carried, parallel.train_state_shardings(carried, mesh))
    assert placed.extra.addressable_shards[0].data.shape == (8, 8)  # split with the batch
    assert placed.params["W"].addressable_shards[0].data.shape == (8, 2)  # replicated
    try:
        parallel.shard_batch(task.generate(jax.random.key(0), 6, 10), mesh, batch_axis=1)
        raise AssertionError("a batch of 6 over 4 devices should be refused")
    except ValueError as e:
        assert "multiple of 4" in str(e)
    print("SHARDED_OK")
""")


def test_sharded_step_equals_single_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stderr[-3000:]


def test_process_sweep_tables(tmp_path):
    """experiments.sweep's pieces: parsing, final metrics of a workdir, the tables."""
    from experiments import cli
    from experiments import sweep as process_sweep
    assert process_sweep.parse_assignments(("hidden=8,16", "--lr=1e-3"), "grid", multi=True) == {
        "hidden": ["8", "16"], "lr": ["1e-3"]}
    for bad, message in [("hidden", "grid='hidden' is invalid: expected NAME=VALUE"),
                         ("hidden=,", "expected NAME=VALUE"), ("hidden=8,8", "given twice")]:
        with pytest.raises(cli.ConfigError, match=message):
            process_sweep.parse_assignments((bad,), "grid", multi=True)
    rows = []
    for hidden in (8, 16):
        for seed in (0, 1):
            workdir = tmp_path / f"hidden={hidden},seed={seed}"
            (workdir / "rnn").mkdir(parents=True)
            loss = 1.0 / hidden + 0.01 * seed
            (workdir / "rnn" / "metrics.jsonl").write_text(
                '{"step": 10, "loss": 2.0}\n' + f'{{"step": 20, "loss": {loss}, "time": 3.0}}\n')
            (workdir / "results.json").write_text('{"rnn": {"accuracy": {"10": {"step": 1.0}}}}')
            metrics = process_sweep.final_metrics(str(workdir))
            assert metrics == {"rnn/loss": loss, "results.rnn.accuracy.10.step": 1.0}
            rows.append({"point": {"hidden": hidden}, "seed": seed, "status": "ok", "seconds": 1.0,
                         "workdir": str(workdir), "metrics": metrics})
    csv_path, md_path = process_sweep.write_tables(str(tmp_path), rows, ["hidden"], [])
    with open(csv_path) as f:
        assert len(f.readlines()) == 5  # header + one row per run
    md = open(md_path).read()
    assert "| hidden | runs ok | rnn/loss |" in md
    assert "| 8 | 2/2 | 0.13 ± 0.0071 |" in md  # mean and std over the two seeds
    assert os.path.exists(process_sweep.plot_losses(str(tmp_path), rows))


def test_grid_sweep_of_an_experiment(tmp_path):
    """A two-point grid of experiments.handset as processes; bad names and values are
    refused before any run starts."""
    from experiments import cli
    from experiments import sweep as process_sweep
    config = process_sweep.Config(experiment="handset", grid=("network=sum,parity",),
                                  set=("format=json",), parallel=2)
    results = process_sweep.run(config, str(tmp_path / "sweep"))
    assert results["failed"] == 0 and len(results["runs"]) == 2
    for run in results["runs"]:
        saved = json.load(open(os.path.join(run["workdir"], "results.json")))
        assert saved["traces"][0]["network"] == run["point"]["network"]
    for grid, message in [(("hidden=8",), "hidden='8' is invalid: not a setting"),
                          (("network=sum,cube",), "network='cube' is invalid: accepted")]:
        bad = process_sweep.Config(experiment="handset", grid=grid)
        with pytest.raises(cli.ConfigError, match=message):
            process_sweep.run(bad, str(tmp_path / "never"))
        assert not (tmp_path / "never" / "network=sum").exists()
    with pytest.raises(cli.ConfigError, match="experiment='nope' is invalid"):
        process_sweep.run(process_sweep.Config(experiment="nope"), str(tmp_path / "x"))


def test_optuna_study_of_char_lm_with_two_workers(tmp_path):
    """The README's study command, tiny: two worker processes share one journal file."""
    pytest.importorskip("optuna")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the cat sat on the mat and the dog ran far away"] * 150))
    workdir = tmp_path / "study"
    settings = [f"--set=data_path={text}", "--set=steps=6", "--set=batch_size=4",
                "--set=seq_len=10", "--set=eval_every=3", "--set=eval_tokens=100",
                "--set=eval_test=false", "--set=max_minutes=none", "--set=sample_length=5",
                "--set=progress=false"]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", "--engine=optuna", "--experiment=char_lm",
         f"--workdir={workdir}", "--study=tiny", "--space=learning_rate=log:1e-3:1e-1,hidden=int:4:8",
         "--trials=4", "--workers=2", "--objective=valid.bits", "--pruner=none", *settings],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.load(open(workdir / "results.json"))
    trials = results["trials"]
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
    assert results["best_value"] == min(t["value"] for t in trials)
    assert "best trial" in proc.stdout and "valid.bits" in proc.stdout
    dirs = sorted(p.name for p in workdir.iterdir() if p.name.startswith("trial_"))
    assert dirs == [f"trial_{i}" for i in range(4)]          # one workdir per trial: none ran twice
    assert all((workdir / d / "results.json").exists() for d in dirs)
    logs = [(workdir / f"worker_{i}.log").read_text() for i in range(2)]
    assert all("validation" in log for log in logs)          # both workers trained
