"""Data-parallel training over processes against devices of one process, side by side.

    python -m bench.multiprocess --steps=30 --hidden=256 --batch_size=64 --seq_len=50

times the same language-model train step (GRU, one-hot inputs, Adam) three ways in
one run: one process with one CPU device, one process with two CPU devices
(rnnjax.parallel) and two processes with one CPU device each (rnnjax.distributed,
Gloo collectives over TCP), and prints steps/s and the ratios. The three use the
same global batch, so the ratios say what the cross-process all-reduce costs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps (after 3 warm-up steps).")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Hidden units.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch (split over the devices).")
_SEQ = flags.DEFINE_integer("seq_len", 50, "Time steps per sequence.")
_VOCAB = 64


def worker(out: str, steps: int, hidden: int, batch: int, seq_len: int, process_id: int,
           num_processes: int, port: int) -> None:
    """One process of one configuration: time ``steps`` train steps, write steps/s."""
    from rnnjax import distributed
    if num_processes > 1:
        distributed.initialize(f"localhost:{port}", num_processes, process_id)
    import jax
    import numpy as np
    import optax

    from rnnjax import parallel, train
    from rnnjax.models import lm

    model = lm.LanguageModel(vocab_size=_VOCAB, cell="gru", hidden=hidden)
    optimizer = optax.adam(1e-3)

    def loss_fn(params, batch, key):
        inputs, targets = batch
        carry = lm.initial_carry(model, params, inputs.shape[1])
        return lm.sequence_loss(model, params, carry, inputs, targets)[0]

    mesh = parallel.data_mesh()
    state = parallel.replicate(train.init_state(lm.init(model, jax.random.PRNGKey(0)),
                                                optimizer, seed=0), mesh)
    step = parallel.data_parallel_step(train.make_train_step(loss_fn, optimizer), mesh,
                                       batch_axis=1)
    seq = np.random.default_rng(0).integers(0, _VOCAB, (seq_len + 1, batch)).astype(np.int32)
    batch_arrays = parallel.shard_batch((seq[:-1], seq[1:]), mesh, batch_axis=1)
    for _ in range(3):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    rate = steps / (time.perf_counter() - start)
    if distributed.is_primary():
        with open(out, "w") as f:
            json.dump({"steps_per_sec": rate, "summary": distributed.summary()}, f)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def measure(processes: int, devices: int, args: list[str]) -> dict:
    """Run one configuration in fresh processes; its steps/s."""
    out = tempfile.mktemp(suffix=".json")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    port = _port()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.multiprocess", "--worker", out,
                               *args, str(i), str(processes), str(port)], env=env)
             for i in range(processes)]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a worker of {processes} process(es) x {devices} device(s) failed")
    with open(out) as f:
        return json.load(f)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for name in ("steps", "hidden", "batch_size", "seq_len"):
        if flags.FLAGS[name].value < 1:
            raise app.UsageError(f"--{name}={flags.FLAGS[name].value} is invalid: expected a "
                                 "positive integer")
    if _BATCH.value % 2:
        raise app.UsageError(f"--batch_size={_BATCH.value} is invalid: it must split over two "
                             "devices (an even number)")
    args = [str(_STEPS.value), str(_HIDDEN.value), str(_BATCH.value), str(_SEQ.value)]
    rows = [("1 process x 1 device", measure(1, 1, args)),
            ("1 process x 2 devices", measure(1, 2, args)),
            ("2 processes x 1 device (Gloo)", measure(2, 1, args))]
    base = rows[0][1]["steps_per_sec"]
    print(f"GRU LM train step, hidden {_HIDDEN.value}, batch {_BATCH.value}, T={_SEQ.value}, "
          f"vocabulary {_VOCAB}, {_STEPS.value} steps")
    print("| configuration | steps/s | vs 1 device |\n|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['steps_per_sec']:.2f} | {r['steps_per_sec'] / base:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        worker(a[0], *(int(v) for v in a[1:]))
    else:
        app.run(main)
