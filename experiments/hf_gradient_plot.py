"""Per-step gradient norms ‖∂L/∂h_t‖ of trained networks, side by side (a plot).

Loads params saved by ``experiments.hf_long_memory --save_params=...`` (for
example the tanh RNN that HF found and the one Adam found) and plots, for each,
‖∂L/∂h_t‖ on a batch of fresh sequences (:func:`rnnjax.diagnostics.hidden_gradient_norms`)
against the lag T − 1 − t: how much the loss at the
end still depends on each earlier hidden state. Vanishing gradients show up as
a curve that falls by orders of magnitude towards t = 0.

    python -m experiments.hf_gradient_plot --task=addition --seq_len=50 --hidden=50 \
        --params=/tmp/hf/params_hf_T50.npz,/tmp/hf/params_adam_T50.npz --labels=HF,Adam \
        --out=docs/img/hf_gradient_norms.png
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

# --task, --seq_len (the problem the networks were trained on), --cell, --hidden
# (their shape) are the flags of the experiment that trained them.
from experiments.hf_long_memory import build_model
from rnnjax import cells, diagnostics
from rnnjax.data import synthetic
from experiments.flags import define as define_flag

FLAGS = flags.FLAGS
define_flag("list", "params", None, "Comma-separated .npz files of saved params.")
define_flag("list", "labels", None, "One label per params file.")
define_flag("integer", "sequences", 1000, "Fresh sequences to average over.")
define_flag("string", "out", "docs/img/hf_gradient_norms.png", "Where to write the plot.")


def load_params(path: str, template):
    data = np.load(path)
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): v
            for p, v in jax.tree_util.tree_leaves_with_path(template)}
    missing = set(flat) - set(data.files)
    if missing:
        raise ValueError(f"--params file {path} lacks {sorted(missing)}; saved with other flags?")
    return jax.tree_util.tree_unflatten(jax.tree.structure(template),
                                        [jnp.asarray(data[k]) for k in flat])


def main(argv):
    del argv
    if not FLAGS.params or not FLAGS.labels or len(FLAGS.params) != len(FLAGS.labels):
        raise app.UsageError("--params and --labels must be given, one label per params file")
    task = synthetic.get(FLAGS.task)
    cell = cells.by_name(FLAGS.cell, FLAGS.hidden)
    template, _ = build_model(cell, task, jax.random.key(0))
    batch = task.generate(jax.random.key(12345), FLAGS.sequences, FLAGS.seq_len)
    curves, summary = {}, {}
    for path, label in zip(FLAGS.params, FLAGS.labels):
        params = load_params(path, template)

        def norms_of(p):
            readout = lambda hs: task.loss(hs @ p["W_o"] + p["b_o"], batch)
            return diagnostics.hidden_gradient_norms(cell, p["cell"], batch.inputs, readout)

        norms = np.asarray(jax.jit(norms_of)(params))
        curves[label] = norms
        summary[label] = {"grad_norm_t0": float(norms[0]), "grad_norm_last": float(norms[-1]),
                          "verdict": str(diagnostics.verdict(norms))}
    title = f"{FLAGS.task}, T={FLAGS.seq_len}, {FLAGS.cell} RNN, {FLAGS.hidden} units"
    diagnostics.plot_gradient_vs_lag(curves, FLAGS.out, title=title, normalize=False)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    app.run(main)
