"""Benchmark: N configurations trained at once with vmap vs one after another.

    python -m bench.sweep_vmap --configs=8 --steps=200 --hidden=32

N tanh RNNs on running parity (T=--length, batch --batch_size) that differ in
seed and learning rate. "one by one" trains them in turn with the same
jitted step (the learning rate lives in the optimizer state, so it compiles
once); "vmap" trains all N in one compiled step over stacked states
(rnnjax.sweep). Both see the same batches and end with the same parameters
(checked). Prints steps/s of the whole sweep and the speedup; compile time is
measured apart. Runs on whatever backend JAX finds.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from rnnjax import cells, losses, optim, recurrence, sweep, train
from rnnjax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_integer("configs", 8, "N, configurations in the sweep.")
flags.DEFINE_integer("steps", 200, "Training steps per configuration.")
flags.DEFINE_integer("hidden", 32, "Hidden units.")
flags.DEFINE_integer("length", 20, "Sequence length.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_string("cell", "tanh", "Cell name.")


def build(hidden: int, cell_name: str):
    cell = cells.by_name(cell_name, hidden)
    opt = optim.make("adam", 1e-3)

    def loss_fn(params, batch, key):
        _, hs = recurrence.unroll(cell, params["cell"], batch.inputs)
        return losses.cross_entropy(hs @ params["W_hy"] + params["b_y"], batch.targets)

    def init_one(key, lr):
        k1, k2 = jax.random.split(key)
        params = {"cell": cell.init(k1, 1), "W_hy": 0.1 * jax.random.normal(k2, (hidden, 2)),
                  "b_y": jnp.zeros(2)}
        state = train.init_state(params, opt, rng=key)
        return state._replace(opt_state=optim.with_learning_rate(state.opt_state, lr))

    return init_one, train.make_train_step(loss_fn, opt, clip_norm=1.0)


def main(argv):
    del argv
    n, steps = FLAGS.configs, FLAGS.steps
    init_one, step_fn = build(FLAGS.hidden, FLAGS.cell)
    task = synthetic.get("parity")
    batches = [task.generate(jax.random.fold_in(jax.random.key(0), s), FLAGS.batch_size, FLAGS.length)
               for s in range(steps)]
    keys = jax.random.split(jax.random.key(1), n)
    rates = jnp.geomspace(1e-3, 3e-2, n)

    def block(tree):
        return jax.block_until_ready(tree)

    # One by one: one compiled step, N runs.
    one = jax.jit(step_fn)
    t = time.perf_counter()
    block(one(init_one(keys[0], rates[0]), batches[0]))
    compile_one = time.perf_counter() - t
    finals = []
    t = time.perf_counter()
    for i in range(n):
        state = init_one(keys[i], rates[i])
        for b in batches:
            state, _ = one(state, b)
        finals.append(block(state))
    seq_time = time.perf_counter() - t

    # vmap: all N in one compiled step.
    many = jax.jit(sweep.vmap_step(step_fn))
    stacked0 = sweep.init_many(init_one, keys, rates)
    t = time.perf_counter()
    block(many(stacked0, batches[0]))
    compile_many = time.perf_counter() - t
    t = time.perf_counter()
    stacked = stacked0
    for b in batches:
        stacked, _ = many(stacked, b)
    block(stacked)
    vmap_time = time.perf_counter() - t

    diffs = [max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(sweep.member(stacked, i).params), jax.tree.leaves(finals[i].params)))
        for i in range(n)]
    worst = max(diffs)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"{n} configs x {steps} steps, cell {FLAGS.cell}, H={FLAGS.hidden}, T={FLAGS.length}, "
          f"B={FLAGS.batch_size}")
    print(f"| mode | compile s | train s | config-steps/s |\n|---|---|---|---|")
    print(f"| one by one | {compile_one:.2f} | {seq_time:.2f} | {n * steps / seq_time:.0f} |")
    print(f"| vmap | {compile_many:.2f} | {vmap_time:.2f} | {n * steps / vmap_time:.0f} |")
    print(f"speedup of vmap: {seq_time / vmap_time:.2f}x")
    # Batched and unbatched matmuls round differently; training amplifies it.
    print("max |param difference| vmap vs one by one, per config (lr): " + ", ".join(
        f"{d:.1e} ({float(r):.1e})" for d, r in zip(diffs, rates)))


if __name__ == "__main__":
    app.run(main)
