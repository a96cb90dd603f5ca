"""MRNN vs tanh RNN vs LSTM vs GRU as character-level language models, at about the
same number of parameters and the same training time, in bits per character.

    python -m experiments.lm_compare --workdir=/tmp/lm_compare --params=120000 \
        --minutes_each=3

For every cell in ``--cells`` the hidden size is chosen so that the whole model
(one-hot input, one recurrent layer, softmax readout) has the parameter count closest
to ``--params``; each model then trains for ``--minutes_each`` minutes with the same
optimizer, batch and segment length (``experiments.char_lm``'s settings and defaults)
and is evaluated on the whole validation and test splits with the state carried. The
table (Markdown and CSV) and all results go to the workdir; each model's run has its
own sub-directory (rerunning resumes them). From Python::

    config = dataclasses.replace(lm_compare.Config(), cells=("tanh", "gru"), params=20_000)
    results = lm_compare.run(config, "runs/compare")     # {"rows": [...], ...}

The MRNN (Sutskever, Martens & Hinton 2011) lets the current character choose the
recurrent matrix, W_hh(x) = W_fh diag(W_fx x) W_hf, the lecture's reason for
multiplicative interactions at the character level.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

import jax
from absl import app

from experiments import cli
from experiments.lm import train as lm_train
from experiments.lm.config import CharConfig, LMConfig
from rnnjax import cells, checkpoint
from rnnjax.models import lm


def _cell_rate(item: str) -> str | None:
    cell, _, value = item.partition("=")
    try:
        rate = float(value)
    except ValueError:
        return "expected cell=rate items, e.g. mrnn=3e-3"
    if cell not in cells.CELL_NAMES:
        return f"{cell!r} is not a cell; accepted: {', '.join(cells.CELL_NAMES)}"
    if not (rate > 0 and rate < float("inf")):
        return "expected a positive finite rate"
    return None


def _cell(name: str) -> str | None:
    return None if name in cells.CELL_NAMES else "accepted cells: " + ", ".join(cells.CELL_NAMES)


@dataclasses.dataclass(frozen=True)
class Config(CharConfig):
    """char_lm's settings, a list of cells and the size and time each model gets."""

    RESUMABLE = LMConfig.RESUMABLE | {"minutes_each"}

    cells: tuple[str, ...] = cli.field(("mrnn", "tanh", "lstm", "gru"), "Cells to compare.",
                                       check=_cell)
    params: int = cli.field(120_000, "Target number of parameters of every model.",
                            check=cli.positive)
    minutes_each: float = cli.field(3.0, "Training minutes per model.", check=cli.positive)
    cell_learning_rates: tuple[str, ...] = cli.field(
        ("mrnn=3e-3",), "Per-cell learning rates as cell=rate, overriding --learning_rate for "
        "that cell (the MRNN diverges transiently at Adam 1e-2).", check=_cell_rate)

    # char_lm's defaults, but no periodic evaluation and shorter samples.
    eval_every: int = 0
    sample_length: int = 300

    def check(self) -> None:
        if not self.cells:
            raise cli.ConfigError("cells", self.cells, "expected at least one cell")
        if len(set(self.cells)) < len(self.cells):
            raise cli.ConfigError("cells", self.cells, "a cell is given twice (its two runs "
                                  "would share one workdir)")
        rated = [item.partition("=")[0] for item in self.cell_learning_rates]
        if len(set(rated)) < len(rated):
            raise cli.ConfigError("cell_learning_rates", self.cell_learning_rates,
                                  "a cell is given two rates")
        if self.sample_only:
            raise cli.ConfigError("sample_only", True, "is for char_lm and word_lm; sample "
                                  "from one model's sub-directory with experiments.char_lm")
        super().check()

    def rates(self) -> dict[str, float]:
        return {c: float(r) for c, _, r in (i.partition("=") for i in self.cell_learning_rates)}


def params_for(model: lm.LanguageModel) -> int:
    """Parameter count without materialising the parameters."""
    shapes = jax.eval_shape(lambda k: lm.init(model, k), jax.random.key(0))
    return lm.count_params(shapes)


def hidden_for(cell: str, target: int, vocab_size: int, layers: int = 1) -> tuple[int, int]:
    """(hidden size, parameter count) closest to ``target`` for ``cell``."""
    def count(h):
        return params_for(lm.LanguageModel(vocab_size, cell=cell, hidden=h, layers=layers))
    lo, hi = 1, 8
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:                      # count is increasing in h
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda h: abs(count(h) - target))
    return best, count(best)


def run_configs(config: Config, vocab_size: int) -> list[tuple[LMConfig, int]]:
    """One char-LM Config per cell (size matched to ``params``, the cell's rate, the
    time budget ``minutes_each``) and its parameter count; ConfigError when ``params``
    is below a cell's smallest (one-unit) model."""
    base = LMConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(LMConfig)})
    rates = config.rates()
    out = []
    for cell in config.cells:
        smallest = params_for(lm.LanguageModel(vocab_size, cell=cell, hidden=1,
                                               layers=config.layers))
        if config.params < smallest:
            raise cli.ConfigError("params", config.params, f"the smallest {cell} model (one "
                                  f"hidden unit) has {smallest:,} parameters here")
        hidden, n_params = hidden_for(cell, config.params, vocab_size, config.layers)
        out.append((dataclasses.replace(base, cell=cell, hidden=hidden, factors=None,
                                        learning_rate=rates.get(cell, config.learning_rate),
                                        max_minutes=config.minutes_each), n_params))
    return out


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Train one model per cell in ``workdir/<cell>``; write and return the table."""
    cli.validate(config)
    if not workdir:
        raise cli.ConfigError("workdir", workdir, "a directory is required: each model's run "
                              "and the table go there")
    data = lm_train.load_data(config, None)
    runs = run_configs(config, len(data.vocab))
    for run_config, _ in runs:
        cli.validate(run_config)
    with cli.workdir_session(workdir, config):
        rows = []
        for run_config, n_params in runs:
            cell, lr = run_config.cell, run_config.learning_rate
            print(f"\n##### {cell}: hidden {run_config.hidden}, {n_params:,} parameters, "
                  f"learning rate {lr:g}, {config.minutes_each} minutes", flush=True)
            r = lm_train.run(run_config, os.path.join(workdir, cell))
            rows.append({
                "cell": cell, "hidden": run_config.hidden, "parameters": r["parameters"],
                "learning_rate": lr, "steps": r["steps"], "characters_seen": r["tokens_seen"],
                "train_minutes": round(r["train_seconds"] / 60, 2),
                "valid_bits_per_char": round(r["valid"]["bits"], 4),
                "test_bits_per_char": round(r["test"]["bits"], 4) if r["test"] else None,
                "valid_nats_per_char": round(r["valid"]["nats"], 4),
            })
        keys = list(rows[0])
        with open(os.path.join(workdir, "table.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
        md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        md += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
        with open(os.path.join(workdir, "table.md"), "w") as f:
            f.write("\n".join(md) + "\n")
        results = {"rows": rows, "config": cli.as_dict(config)}
        checkpoint.save_json(workdir, "compare", results)
        checkpoint.save_json(workdir, "results", results)
    print("\n" + "\n".join(md))
    return results


def main(argv):
    lm_train.main(Config, argv, run)


if __name__ == "__main__":
    lm_train.define_flags(Config)
    app.run(main)
