"""MRNN vs tanh RNN vs LSTM vs GRU as character-level language models, at about the
same number of parameters and the same training time, in bits per character.

    python -m experiments.lm_compare --workdir=/tmp/lm_compare --params=120000 \
        --minutes_each=3

For every cell in ``--cells`` the hidden size is chosen so that the whole model
(one-hot input, one recurrent layer, softmax readout) has the parameter count closest
to ``--params``; each model then trains for ``--minutes_each`` minutes with the same
optimizer, batch and segment length (``experiments.char_lm``'s flags and defaults) and
is evaluated on the whole validation and test splits with the state carried. The table
(Markdown and CSV) and all results go to the workdir; each model's run has its own
sub-directory (rerunning resumes them).

The MRNN (Sutskever, Martens & Hinton 2011) lets the current character choose the
recurrent matrix, W_hh(x) = W_fh diag(W_fx x) W_hf, the lecture's reason for
multiplicative interactions at the character level.
"""

from __future__ import annotations

import csv
import os

import jax
from absl import app, flags

from experiments import char_lm, lm_train
from experiments import flags as common
from rnnjax import checkpoint
from rnnjax.data import text
from rnnjax.models import lm

FLAGS = flags.FLAGS
common.define("list", "cells", ["mrnn", "tanh", "lstm", "gru"], "Cells to compare.")
common.define("integer", "params", 120_000, "Target number of parameters of every model.")
common.define("float", "minutes_each", 3.0, "Training minutes per model.")
common.define("list", "cell_learning_rates", ["mrnn=3e-3"], "Per-cell learning rates as "
                  "cell=rate, overriding --learning_rate for that cell (the MRNN diverges "
                  "transiently at Adam 1e-2).")


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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS.max_minutes = FLAGS.minutes_each
    cfg = lm_train.validate()
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: each model's run and the table go there")
    if not FLAGS.minutes_each > 0:
        raise app.UsageError(f"--minutes_each={FLAGS.minutes_each} is invalid: expected > 0")
    from rnnjax import cells as cells_lib
    for c in FLAGS.cells:
        if c not in cells_lib.CELL_NAMES:
            raise app.UsageError(f"--cells: {c!r} is unknown; accepted: "
                                 f"{', '.join(cells_lib.CELL_NAMES)}")
    rates = {}
    for item in FLAGS.cell_learning_rates:
        cell, _, value = item.partition("=")
        try:
            rates[cell] = float(value)
        except ValueError:
            raise app.UsageError(f"--cell_learning_rates: {item!r} is not cell=rate") from None
        if not rates[cell] > 0:
            raise app.UsageError(f"--cell_learning_rates: {item!r} needs a positive rate")
    corpus = text.load_corpus(cfg["corpus"], cfg["data_path"])
    vocab_size = len(text.build_vocabulary(corpus.train, "char"))
    rows = []
    for cell in FLAGS.cells:
        hidden, n_params = hidden_for(cell, FLAGS.params, vocab_size, cfg["layers"])
        lr = rates.get(cell, cfg["learning_rate"])
        FLAGS.learning_rate = lr          # read by the optimizer factory
        run_cfg = dict(cfg, cell=cell, hidden=hidden, learning_rate=lr)
        print(f"\n##### {cell}: hidden {hidden}, {n_params:,} parameters, learning rate "
              f"{lr:g}, {FLAGS.minutes_each} minutes", flush=True)
        r = lm_train.train_and_evaluate(run_cfg, os.path.join(FLAGS.workdir, cell),
                                        print_samples=True)
        rows.append({
            "cell": cell, "hidden": hidden, "parameters": r["parameters"], "learning_rate": lr,
            "steps": r["steps"], "characters_seen": r["tokens_seen"],
            "train_minutes": round(r["train_seconds"] / 60, 2),
            "valid_bits_per_char": round(r["valid"]["bits"], 4),
            "test_bits_per_char": round(r["test"]["bits"], 4) if r["test"] else None,
            "valid_nats_per_char": round(r["valid"]["nats"], 4),
        })
    keys = list(rows[0])
    with open(os.path.join(FLAGS.workdir, "table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    with open(os.path.join(FLAGS.workdir, "table.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    checkpoint.save_json(FLAGS.workdir, "compare", {"rows": rows, "config": cfg})
    print("\n" + "\n".join(md))


if __name__ == "__main__":
    lm_train.set_defaults(char_lm.DEFAULTS)
    FLAGS.set_default("eval_every", 0)
    FLAGS.set_default("sample_length", 300)
    app.run(main)
