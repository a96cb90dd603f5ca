r"""Per-step gradient norms ‖∂L/∂h_t‖ of trained networks, side by side (a plot).

Loads params saved by ``experiments.hf_long_memory --save_params=...`` (for
example the tanh RNN that HF found and the one Adam found) and plots, for each,
‖∂L/∂h_t‖ on a batch of fresh sequences (:func:`rnnjax.diagnostics.hidden_gradient_norms`)
against the lag T − 1 − t: how much the loss at the end still depends on each
earlier hidden state. Vanishing gradients show up as a curve that falls by
orders of magnitude towards t = 0. ``--task``, ``--seq_len``, ``--cell`` and
``--hidden`` are those of the runs that saved the params (the same defaults).
With ``--workdir`` the summary goes to ``results.json`` there.

    python -m experiments.hf_gradient_plot --task=addition --seq_len=50 --hidden=50 \
        --params=/tmp/hf/params_hf_T50.npz,/tmp/hf/params_adam_T50.npz --labels=HF,Adam \
        --out=docs/img/hf_gradient_norms.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app

from experiments import cli
from rnnjax import cells, checkpoint, diagnostics, plots
from rnnjax.data import synthetic
from rnnjax.models import tagger


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of ``python -m experiments.hf_gradient_plot`` (its flags)."""

    params: tuple[str, ...] = cli.field((), "Comma-separated .npz files of saved params.")
    labels: tuple[str, ...] = cli.field((), "One label per params file.")
    task: str = cli.field("addition", "The problem the networks were trained on.",
                          choices=synthetic.LONG_MEMORY_TASKS)
    seq_len: int = cli.field(20, "Sequence length T.", check=cli.positive)
    cell: str = cli.field("tanh", "The networks' cell.", choices=cells.CELL_NAMES)
    hidden: int = cli.field(32, "The networks' hidden units.", check=cli.positive)
    sequences: int = cli.field(1000, "Fresh sequences to average over.", check=cli.positive)
    out: str = cli.field("docs/img/hf_gradient_norms.png", "Where to write the plot (.png).")

    RESUMABLE = frozenset({"out"})

    def check(self) -> None:
        if not self.params or len(self.params) != len(self.labels):
            raise cli.ConfigError("labels", self.labels, f"expected one label per params file "
                                  f"(params={self.params!r})")
        for path in self.params:
            if not os.path.isfile(path) or not zipfile.is_zipfile(path):
                raise cli.ConfigError("params", path, "expected a .npz file of saved params")
        task = synthetic.get(self.task)
        if self.seq_len < task.min_seq_len:
            raise cli.ConfigError("seq_len", self.seq_len, f"task {task.name} needs an integer "
                                  f">= {task.min_seq_len}")
        parent = os.path.dirname(os.path.abspath(self.out))
        if not self.out.lower().endswith(".png") or not (
                os.path.isdir(parent) and os.access(parent, os.W_OK)):
            raise cli.ConfigError("out", self.out, "expected a .png path in a writable directory")


def flat_name(path: Any) -> str:
    """The name of a params leaf in a saved .npz: its keys joined by '/' (``cell/W_hh``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def load_params(path: str, template: Any) -> Any:
    """Params with the structure of ``template`` from a .npz of :func:`flat_name` entries."""
    data = np.load(path)
    leaves = jax.tree_util.tree_leaves_with_path(template)
    missing = sorted({flat_name(p) for p, _ in leaves} - set(data.files))
    if missing:
        raise cli.ConfigError("params", path, f"it lacks {missing}; saved with other settings "
                              "(task, cell, hidden) or by an older version?")
    for p, leaf in leaves:
        if data[flat_name(p)].shape != leaf.shape:
            raise cli.ConfigError("params", path, f"its {flat_name(p)} has shape "
                                  f"{data[flat_name(p)].shape}, these settings need {leaf.shape} "
                                  "(task, cell, hidden as in the run that saved it)")
    return jax.tree_util.tree_unflatten(jax.tree.structure(template),
                                        [jnp.asarray(data[flat_name(p)]) for p, _ in leaves])


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Plot ‖∂L/∂h_t‖ of each saved network; return (and print) a summary per label."""
    cli.validate(config)
    task = synthetic.get(config.task)
    model = tagger.make(cells.by_name(config.cell, config.hidden), task.input_size,
                        task.output_size)
    template = model.init(jax.random.key(0))
    loaded = [load_params(path, template) for path in config.params]  # all, before any work
    with cli.workdir_session(workdir, config):
        batch = task.generate(jax.random.key(12345), config.sequences, config.seq_len)

        def norms_of(p):
            return diagnostics.hidden_gradient_norms(
                model.cell, p["cell"], batch.inputs,
                lambda hs: task.loss(model.readout(p, hs), batch))

        curves, summary = {}, {}
        for params, label in zip(loaded, config.labels):
            norms = np.asarray(jax.jit(norms_of)(params))
            curves[label] = norms
            summary[label] = {"grad_norm_t0": float(norms[0]), "grad_norm_last": float(norms[-1]),
                              "verdict": str(diagnostics.verdict(norms))}
        title = f"{config.task}, T={config.seq_len}, {config.cell} RNN, {config.hidden} units"
        plots.plot_gradient_vs_lag(curves, config.out, title=title, normalize=False)
        print(json.dumps(summary, indent=1))
        if workdir:
            checkpoint.save_json(workdir, "results", summary)
    return summary


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
