"""Throughput of Hessian-free's inner loop: Gauss-Newton products beside the plain gradient.

A 100-unit tanh RNN with a readout at every step (the model of the long-memory
problems) on 1,000 sequences of T = 200 (addition): the time of one
Gauss-Newton-vector product ``G v`` (one forward-mode and one reverse-mode
linear pass through the stored linearisation, as CG does it) against one plain
loss-and-gradient evaluation on the same batch, and their ratio, in one run
(the product's time is the difference between 25 and 5 chained products over 20).

    python -m bench.hf_throughput                 # T=200, H=100, B=1000
    python -m bench.hf_throughput --seq_len=50 --repeats=5
"""

from __future__ import annotations

import argparse
import time

import jax
from jax.flatten_util import ravel_pytree

from rnnjax import cells, initializers
from rnnjax.data import synthetic
from rnnjax.models import tagger
from rnnjax.optim import hessian_free, hf_losses


def _best(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(seq_len: int = 200, hidden: int = 100, batch: int = 1000,
            repeats: int = 3) -> dict[str, float]:
    """Seconds per gradient and per Gauss-Newton product, and products per second."""
    task = synthetic.get("addition")
    cell = cells.vanilla(hidden, "tanh", input_init=initializers.sparse(15),
                         recurrent_init=initializers.sparse(15, radius=1.1))
    model = tagger.make(cell, task.input_size, task.output_size, readout_scale=0.01)
    params = model.init(jax.random.PRNGKey(0))
    data = task.generate(jax.random.PRNGKey(1), batch, seq_len)

    def net(p, b):
        return model.outputs_and_hiddens(p, b.inputs)

    loss = hf_losses.for_kind(task.kind)
    # data and params are arguments, not closed-over constants (XLA would fold them)
    grad = jax.jit(jax.value_and_grad(lambda p, b: loss.loss(net(p, b)[0], b)))
    flat, _ = ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(2), flat.shape)

    def products(n):
        @jax.jit
        def run(p, b, vs):  # linearise once, then n chained products, as CG does
            _, gv, _ = hessian_free.gauss_newton_operator(net, loss, p, b,
                                                          net_returns_hidden=True)
            return jax.lax.fori_loop(0, n, lambda i, x: gv(x, 1.0 / 30.0) * 1e-3 + vs, vs)
        return run

    few, many = products(5), products(25)
    t_grad = _best(lambda: grad(params, data), repeats)
    t_few = _best(lambda: few(params, data, v), repeats)
    t_many = _best(lambda: many(params, data, v), repeats)
    per_product = (t_many - t_few) / 20  # the linearisation cancels
    linearise = max(t_few - 5 * per_product, 0.0)
    return {"seq_len": seq_len, "hidden": hidden, "batch": batch,
            "gradient_s": t_grad, "linearise_s": linearise,
            "gn_product_s": per_product, "gn_products_per_s": 1.0 / per_product,
            "product_over_gradient": per_product / t_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq_len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in ("seq_len", "hidden", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} is invalid: expected a positive integer")
    r = measure(args.seq_len, args.hidden, args.batch, args.repeats)
    print(f"T={r['seq_len']} H={r['hidden']} B={r['batch']} on {jax.devices()[0].device_kind}")
    print(f"{'measure':<40}{'seconds':>10}")
    print(f"{'loss and gradient':<40}{r['gradient_s']:>10.4f}")
    print(f"{'linearisation (once per update)':<40}{r['linearise_s']:>10.4f}")
    print(f"{'one GN product (stored linearisation)':<40}{r['gn_product_s']:>10.4f}")
    print(f"GN products per second: {r['gn_products_per_s']:.2f}; "
          f"one product costs {r['product_over_gradient']:.2f} gradients")


if __name__ == "__main__":
    main()
