"""Gradient flow at initialisation for several cells and initialisations.

For each configuration, builds the model of ``experiments.long_memory`` (cell
plus linear readout) with fresh parameters, measures ‖∂L/∂h_t‖ of the task's
loss (answered at the last step) on one batch, and reports the verdict, the
spectral radius of W_hh and the largest Lyapunov exponent. Writes the plot of
gradient norm against time lag (log scale) and a markdown table.

    python -m experiments.gradient_flow --task=temporal_order --seq_len=100 \
        --out=docs/img/gradient_vs_lag_init.png
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags

from experiments import long_memory
from rnnjax import cells, diagnostics
from rnnjax.data import synthetic
from experiments.flags import define as define_flag

FLAGS = flags.FLAGS

# label -> (cell name, constructor keyword arguments)
CONFIGS = {
    "tanh, orthogonal": ("tanh", {}),
    "tanh, glorot": ("tanh", {"recurrent_init": "glorot"}),
    "tanh, ρ=0.5": ("tanh", {"spectral_radius": 0.5}),
    "tanh, ρ=3": ("tanh", {"spectral_radius": 3.0}),
    "linear, ρ=1.05": ("identity", {"spectral_radius": 1.05}),
    "IRNN (relu, identity)": ("irnn", {}),
    "LSTM": ("lstm", {}),
    "GRU": ("gru", {}),
}

define_flag("string", "out", "/tmp/gradient_vs_lag_init.png", "The PNG to write; the table goes "
                    "beside it with the suffix .md.")
define_flag("integer", "batch", 32, "Sequences in the measured batch.")
if "task" not in FLAGS:
    define_flag("string", "task", "temporal_order", "The problem (see rnnjax.data.synthetic).")
if "seq_len" not in FLAGS:
    define_flag("integer", "seq_len", 100, "T.")
if "hidden" not in FLAGS:
    define_flag("integer", "hidden", 64, "Hidden units.")
if "seed" not in FLAGS:
    define_flag("integer", "seed", 0, "Seed.")


def main(argv):
    del argv
    task = synthetic.get(FLAGS.task)
    key = jax.random.PRNGKey(FLAGS.seed)
    batch = task.generate(jax.random.fold_in(key, 1), FLAGS.batch, FLAGS.seq_len)
    curves, rows = {}, []
    for label, (name, kwargs) in CONFIGS.items():
        cell = cells.by_name(name, FLAGS.hidden, **kwargs)
        params, _, readout = long_memory.build_model(cell, task, jax.random.fold_in(key, 0))
        norms = np.asarray(diagnostics.hidden_gradient_norms(
            cell, params["cell"], batch.inputs, lambda hs: task.loss(readout(params, hs), batch)))
        v = diagnostics.verdict(norms)
        js = diagnostics.state_jacobians(cell, params["cell"], batch.inputs)
        lyap = float(diagnostics.lyapunov_exponents(js, num=1)[0])
        rho = diagnostics.recurrent_spectral_radius(params["cell"])
        rho_text = (f"{rho:.3g}" if isinstance(rho, float)
                    else ", ".join(f"{k} {x:.2g}" for k, x in rho.items()))
        curves[label] = norms
        rows.append(f"| {label} | {rho_text} | {lyap:+.3f} | {v.kind} | {v.rate_per_step:.3f} | "
                    f"{v.horizon if v.horizon < v.span else f'all {v.span}'} |")
        print(rows[-1], flush=True)
    title = f"at initialisation: {task.name}, T={FLAGS.seq_len}, H={FLAGS.hidden}"
    diagnostics.plot_gradient_vs_lag(curves, FLAGS.out, title=title)
    header = ("| cell, init | spectral radius of W_hh | largest Lyapunov exponent | verdict | "
              "rate per step | horizon (steps) |\n|---|---|---|---|---|---|")
    with open(os.path.splitext(FLAGS.out)[0] + ".md", "w") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
