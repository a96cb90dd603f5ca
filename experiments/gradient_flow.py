r"""Gradient flow at initialisation for several cells and initialisations.

For each configuration, builds a cell with a linear readout at every step
(:mod:`rnnjax.models.tagger`, the model of ``experiments.long_memory``) with fresh
parameters, measures ‖∂L/∂h_t‖ of the task's loss (answered at the last step) on
one batch, and reports the verdict, the spectral radius of W_hh and the largest
Lyapunov exponent: a markdown table, printed. With ``--workdir`` it writes there
the plot of gradient norm against time lag (log scale, ``gradient_vs_lag_init.png``),
the table (``gradient_vs_lag_init.md``) and ``results.json``; ``--out=FILE.png``
writes the plot (and the table beside it, ``FILE.md``) to that path as well.

    python -m experiments.gradient_flow --task=temporal_order --seq_len=100 \
        --out=docs/img/gradient_vs_lag_init.png

From Python: ``gradient_flow.run(gradient_flow.Config(seq_len=50), "runs/flow")``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from absl import app

from experiments import cli
from rnnjax import cells, checkpoint, diagnostics, plots
from rnnjax.data import synthetic
from rnnjax.models import tagger

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
HEADER = ("| cell, init | spectral radius of W_hh | largest Lyapunov exponent | verdict | "
          "rate per step | horizon (steps) |\n|---|---|---|---|---|---|")
PLOT = "gradient_vs_lag_init.png"  # its name inside --workdir


def _png_path(value: str) -> str | None:
    if os.path.isdir(value) or not value.lower().endswith(".png"):
        return "expected the path of a .png file (for a directory, use --workdir)"
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of ``python -m experiments.gradient_flow`` (its flags)."""

    task: str = cli.field("temporal_order", "The problem (see rnnjax.data.synthetic).",
                          choices=synthetic.LONG_MEMORY_TASKS)
    seq_len: int = cli.field(100, "Sequence length T.", check=cli.positive)
    hidden: int = cli.field(64, "Hidden units.", check=cli.positive)
    batch: int = cli.field(32, "Sequences in the measured batch.", check=cli.positive)
    seed: int = cli.field(0, "Seed of the initialisation and the batch.", check=cli.non_negative)
    out: str | None = cli.field(None, "Also write the plot to this .png file (and the table "
                                "beside it with the suffix .md).", check=_png_path)

    RESUMABLE = frozenset({"out"})

    def check(self) -> None:
        task = synthetic.get(self.task)
        if self.seq_len < task.min_seq_len:
            raise cli.ConfigError("seq_len", self.seq_len, f"task {task.name} needs an integer "
                                  f">= {task.min_seq_len}")
        parent = os.path.dirname(os.path.abspath(self.out)) if self.out else None
        if parent is not None and not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
            raise cli.ConfigError("out", self.out, "its directory must exist and be writable")


def measure(config: Config, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    """‖∂L/∂h_t‖ [T] of configuration ``label`` at initialisation, and its table row."""
    task = synthetic.get(config.task)
    key = jax.random.PRNGKey(config.seed)
    batch = task.generate(jax.random.fold_in(key, 1), config.batch, config.seq_len)
    name, kwargs = CONFIGS[label]
    model = tagger.make(cells.by_name(name, config.hidden, **kwargs), task.input_size,
                        task.output_size)
    params = model.init(jax.random.fold_in(key, 0))
    norms = np.asarray(diagnostics.hidden_gradient_norms(
        model.cell, params["cell"], batch.inputs,
        lambda hs: task.loss(model.readout(params, hs), batch)))
    v = diagnostics.verdict(norms)
    js = diagnostics.state_jacobians(model.cell, params["cell"], batch.inputs)
    lyap = float(diagnostics.lyapunov_exponents(js, num=1)[0])
    rho = diagnostics.recurrent_spectral_radius(params["cell"])
    return norms, {"label": label, "spectral_radius": rho, "lyapunov_exponent": lyap,
                   "verdict": v.kind, "rate_per_step": v.rate_per_step, "horizon": v.horizon,
                   "span": v.span}


def row_text(r: dict[str, Any]) -> str:
    """One markdown row of the table."""
    rho = r["spectral_radius"]
    rho_text = (f"{rho:.3g}" if isinstance(rho, float)
                else ", ".join(f"{k} {x:.2g}" for k, x in rho.items()))
    horizon = r["horizon"] if r["horizon"] < r["span"] else f"all {r['span']}"
    return (f"| {r['label']} | {rho_text} | {r['lyapunov_exponent']:+.3f} | {r['verdict']} | "
            f"{r['rate_per_step']:.3f} | {horizon} |")


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Measure every configuration; print the table; write the plot, the table and
    ``results.json`` into ``workdir`` (and the plot to ``config.out``)."""
    cli.validate(config)
    with cli.workdir_session(workdir, config):
        curves, rows = {}, []
        for label in CONFIGS:
            curves[label], row = measure(config, label)
            rows.append(row)
            print(row_text(row), flush=True)
        table = HEADER + "\n" + "\n".join(row_text(r) for r in rows) + "\n"
        title = f"at initialisation: {config.task}, T={config.seq_len}, H={config.hidden}"
        targets = ([os.path.join(workdir, PLOT)] if workdir else []) + (
            [config.out] if config.out else [])
        for png in targets:
            plots.plot_gradient_vs_lag(curves, png, title=title)
            with open(os.path.splitext(png)[0] + ".md", "w") as f:
                f.write(table)
        print(table, end="")
        results = {"rows": rows, "table": table,
                   "norms": {k: v.tolist() for k, v in curves.items()}}
        if workdir:
            checkpoint.save_json(workdir, "results", results)
    return results


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
