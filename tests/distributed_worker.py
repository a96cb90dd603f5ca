"""A tiny language model trained data-parallel (tests/test_distributed.py).

    python tests/distributed_worker.py WORKDIR STEPS OUT.json PROCESS_ID NUM_PROCESSES PORT

With NUM_PROCESSES > 1 this process joins the others through rnnjax.distributed
(one CPU device each, Gloo collectives); with 1 it uses the CPU devices of
XLA_FLAGS=--xla_force_host_platform_device_count=N. Either way the batch [T, B] is
split over all devices. Process 0 writes the losses it logged to OUT.json.
"""

import json
import sys

from rnnjax import distributed


def main(workdir, steps, out, process_id, num_processes, port):
    if num_processes > 1:
        distributed.initialize(f"localhost:{port}", num_processes, process_id)
    import numpy as np
    import optax

    from rnnjax import parallel, train
    from rnnjax.models import lm

    model = lm.LanguageModel(vocab_size=11, cell="gru", hidden=16)
    params = lm.init(model, __import__("jax").random.PRNGKey(0))
    optimizer = optax.adam(1e-2)

    def loss_fn(params, batch, key):
        inputs, targets = batch
        carry = lm.initial_carry(model, params, inputs.shape[1])
        loss, _ = lm.sequence_loss(model, params, carry, inputs, targets)
        return loss

    def batch_fn(step):  # the same global batch in every process: a function of the step
        seq = np.random.default_rng(step).integers(0, 11, (9, 8)).astype(np.int32)
        seq[1:] = (seq[:-1] + 1) % 11                     # learnable: next = previous + 1
        return seq[:-1], seq[1:]

    mesh = parallel.data_mesh()
    state = parallel.replicate(train.init_state(params, optimizer, seed=0), mesh)
    step = parallel.data_parallel_step(train.make_train_step(loss_fn, optimizer), mesh,
                                       batch_axis=1)
    state, history = train.run(workdir, state, step, batch_fn, steps=steps, log_every=1,
                               checkpoint_every=2, progress=False, jit=False)
    if distributed.is_primary():
        with open(out, "w") as f:
            json.dump({"steps": [r["step"] for r in history], "loss": [r["loss"] for r in history],
                       "summary": distributed.summary()}, f)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), a[2], int(a[3]), int(a[4]), int(a[5]))
