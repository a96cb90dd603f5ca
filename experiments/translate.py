"""Character-level translation with an encoder–decoder (or the lockstep baseline).

Trains on one task, evaluates it on held-out pairs (cross-entropy per target
character, exact-match accuracy, BLEU and chrF through ``sacrebleu``; greedy and,
with ``--beam_width`` > 1, beam search) and draws the attention of a translation
as a PNG heat map. With ``--translate`` it loads a trained ``--workdir`` instead
and translates the given text.

Tasks (``--task``): ``piglatin`` (the unique words of Shakespeare's plays),
``num_de`` / ``num_fr`` (English number words into German / French, disjoint
train and validation numbers), ``tsv`` (your own ``--data_path``, one
``source<TAB>target`` pair a line).

Examples (2-core CPU; the first trains for a few minutes)::

    python -m experiments.translate --task=piglatin --attention=additive \\
        --workdir=/tmp/pig_attn
    python -m experiments.translate --workdir=/tmp/pig_attn \\
        --translate="the air conditioning is working"
    python -m experiments.translate --task=num_de --reverse_source --beam_width=4
    python -m experiments.translate --task=piglatin --model=lockstep

BLEU is computed on characters (``sacrebleu`` with ``tokenize="char"``): a
Pig Latin "sentence" is one word, where word-level BLEU says nothing. chrF is
sacrebleu's default chrF2. Results go to ``<workdir>/results.json``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags

from experiments import flags as common
from rnnjax import checkpoint, train
from rnnjax.data import translation as tr
from rnnjax.models import lockstep
from rnnjax.models import seq2seq as s2s

FLAGS = flags.FLAGS
common.define("enum", "task", "piglatin", list(tr.TASKS), "Which pairs to learn.")
common.define("string", "data_path", None, "With --task=tsv: a UTF-8 file of 'source<TAB>target' "
                    "lines.")
common.define("integer", "max_number", 10_000, "Number tasks use 0 .. max_number-1, 20% held out.")
common.define("enum", "model", "seq2seq", ["seq2seq", "lockstep"], "The encoder–decoder, or the "
                  "lockstep baseline (one output character per input character).")
common.define("string", "decoder_cell", None, "The decoder's cell (default: --cell).")
common.define("integer", "embed", 32, "Character embedding size.")
common.define("bool", "bidirectional", False, "Bidirectional encoder (states of size 2 * --hidden).")
common.define("enum", "attention", "none", list(s2s.ATTENTIONS), "none, additive (Bahdanau 2015) "
                  "or dot (scaled dot product).")
common.define("integer", "attention_size", 64, "Size of the attention's query/key projections.")
common.define("bool", "reverse_source", False, "Read each source backwards (Sutskever et al. 2014).")
common.define("integer", "beam_width", 1, "Beam width; 1 is greedy decoding only, >1 evaluates "
                     "greedy and beam search.")
common.define("float", "length_penalty", 1.0, "Beam search ranks finished outputs by "
                   "log p / steps**length_penalty (0: plain log-probability).")
common.define("integer", "eval_every", 500, "Validation cross-entropy every N steps (0: at the end "
                     "only).")
common.define("integer", "eval_batch_size", 256, "Pairs per evaluation / decoding batch.")
common.define("integer", "eval_limit", 0, "Decode only the first N validation pairs for exact match, "
                     "BLEU and chrF (0: all). Cross-entropy always uses all.")
common.define("string", "translate", None, "Translate this text with the model saved in --workdir "
                    "(no training). For --task=piglatin each word is translated on its own.")
common.define("string", "plot", None, "Where to draw the attention heat map (PNG); default "
                    "<workdir>/attention.png. Needs --attention.")

MODEL_FLAGS = ("task", "max_number", "model", "cell", "decoder_cell", "hidden", "embed",
               "bidirectional", "attention", "attention_size", "reverse_source", "seed",
               "optimizer", "learning_rate", "lr_schedule", "warmup_steps", "steps")

# This experiment's defaults for the common flags, set only when run as a script
# (importing the module must not change other experiments' defaults).
DEFAULTS = dict(cell="gru", hidden=64, batch_size=64, learning_rate=3e-3, clip_norm=5.0,
                steps=1500, checkpoint_every=0)


def set_defaults() -> None:
    for name, value in DEFAULTS.items():
        FLAGS.set_default(name, value)


# --------------------------------------------------------------------------- the model

class Model:
    """The functions a run needs, for either model."""

    def __init__(self, cfg: dict[str, Any], data: tr.TranslationData):
        self.kind = cfg["model"]
        if self.kind == "lockstep":
            self.config = lockstep.Config(data.src_vocab.size, data.tgt_vocab.size,
                                          cfg["embed"], cfg["hidden"], cfg["cell"])
            self.module = lockstep
        else:
            self.config = s2s.Config(
                data.src_vocab.size, data.tgt_vocab.size, cfg["embed"], cfg["hidden"],
                cfg["cell"], cfg["decoder_cell"] or cfg["cell"], cfg["bidirectional"],
                cfg["attention"], cfg["attention_size"], cfg["reverse_source"]).validate()
            self.module = s2s

    def init(self, key: jax.Array):
        return self.module.init(key, self.config)

    def loss_fn(self, params, batch, key):
        del key  # deterministic models
        return self.module.loss_fn(params, self.config, batch)

    def eval_sums(self, params, batch):
        return self.module.eval_sums(params, self.config, batch)

    def decode(self, params, src, src_lengths, max_len: int, beam_width: int,
               length_penalty: float) -> s2s.Decoded:
        if beam_width == 1 or self.kind == "lockstep":
            return self.module.greedy_decode(params, self.config, src, src_lengths, max_len)
        return s2s.beam_search(params, self.config, src, src_lengths, beam_width, max_len,
                               length_penalty).best()


def _make_optimizer(cfg: dict[str, Any]):
    from rnnjax import optimizers
    return optimizers.make(cfg["optimizer"], cfg["learning_rate"], schedule=cfg["lr_schedule"],
                           steps=cfg["steps"], warmup_steps=cfg["warmup_steps"])


# --------------------------------------------------------------------------- evaluation

def cross_entropy(model: Model, params, data: tr.TranslationData, pairs,
                  batch_size: int) -> float:
    nats = count = 0.0
    for batch, _ in tr.eval_batches(data, pairs, batch_size):
        sums = model.eval_sums(params, batch)
        nats += float(sums["nats"])
        count += float(sums["count"])
    return nats / count


def translate_pairs(model: Model, params, data: tr.TranslationData, sources: list[str],
                    batch_size: int, beam_width: int, length_penalty: float):
    """Decoded strings and attention [L, S] per source."""
    pairs = [(s, "") for s in sources]
    max_len = data.max_tgt_len
    outputs, attentions = [], []
    for batch, chunk in tr.eval_batches(data, pairs, batch_size):
        decoded = model.decode(params, batch.src, batch.src_lengths, max_len, beam_width,
                               length_penalty)
        tokens, attn = np.asarray(decoded.tokens), np.asarray(decoded.attention)
        for i, (src, _) in enumerate(chunk):
            outputs.append(data.tgt_vocab.decode(tokens[i]))
            attentions.append(attn[i, :len(outputs[-1]) + 1, :len(src)])
    return outputs, attentions


def decode_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    from sacrebleu.metrics import BLEU, CHRF
    return {"exact_match": float(np.mean([h == r for h, r in zip(hyps, refs)])),
            "bleu_char": BLEU(tokenize="char").corpus_score(hyps, [refs]).score,
            "chrf": CHRF().corpus_score(hyps, [refs]).score}


def plot_attention(path: str, items: list[tuple[str, str, np.ndarray]]) -> None:
    """One heat map per (source, output, attention [len(output)+1, len(source)])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.8, 3.6), squeeze=False)
    for ax, (src, out, attn) in zip(axes[0], items):
        ax.imshow(attn, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), list(src))
        ax.set_yticks(range(attn.shape[0]), list(out) + ["<eos>"][:attn.shape[0] - len(out)])
        ax.set_xlabel("source")
        title = f"{src} → {out}"
        ax.set_title(title if len(title) <= 40 else title[:39] + "…", fontsize=9)
    axes[0][0].set_ylabel("output")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _split_input(task: str, text: str) -> list[str]:
    if task == "piglatin":
        words = [w for w in text.lower().split() if w]
        bad = [w for w in words if not w.isalpha() or not w.isascii()]
        if not words or bad:
            raise app.UsageError(f"--translate={text!r}: the piglatin model translates words "
                                 f"of the letters a-z; offending: {bad or 'no words'}")
        return words
    if not text.strip():
        raise app.UsageError("--translate needs some text")
    return [text.strip()]


# --------------------------------------------------------------------------- main

def _validate_own_flags() -> None:
    for name in ("embed", "attention_size", "beam_width", "eval_batch_size", "max_number"):
        common.check_positive_int(name, FLAGS[name].value)
    for name in ("eval_every", "eval_limit"):
        common.check_positive_int(name, FLAGS[name].value, allow_zero=True)
    if FLAGS.decoder_cell is not None:
        common.check_choice("decoder_cell", FLAGS.decoder_cell, s2s.cells_lib.CELL_NAMES)
    if FLAGS.length_penalty < 0:
        raise app.UsageError(f"--length_penalty={FLAGS.length_penalty} is invalid: expected a "
                             "number >= 0")
    if FLAGS.model == "lockstep":
        for name in ("bidirectional", "reverse_source"):
            if FLAGS[name].value:
                raise app.UsageError(f"--{name} is for --model=seq2seq; the lockstep baseline "
                                     "has no encoder")
        if FLAGS.attention != "none" or FLAGS.beam_width != 1:
            raise app.UsageError("--attention and --beam_width are for --model=seq2seq; the "
                                 "lockstep baseline emits one character per input step")
    if FLAGS.plot and FLAGS.attention == "none" and not FLAGS.translate:
        raise app.UsageError("--plot draws attention weights: it needs --attention=additive|dot")


def run_translate(text: str) -> None:
    """Load --workdir's model and translate ``text``."""
    workdir = FLAGS.workdir
    if not workdir or checkpoint.latest_step(workdir) is None:
        raise app.UsageError(f"--translate needs --workdir with a trained model (a checkpoint, "
                             f"config.json and vocab.json); {workdir!r} has no checkpoint. Train "
                             "first, e.g. python -m experiments.translate --task=piglatin "
                             "--attention=additive --workdir=DIR")
    cfg = checkpoint.load_json(workdir, "config")
    vocab = checkpoint.load_json(workdir, "vocab")
    data = tr.TranslationData(cfg["task"], [], [], tr.CharVocab.from_json(vocab["src"]),
                              tr.CharVocab.from_json(vocab["tgt"]), vocab["max_src_len"],
                              vocab["max_tgt_len"])
    model = Model(cfg, data)
    params = model.init(jax.random.key(0))
    template = train.init_state(params, _make_optimizer(cfg), seed=cfg["seed"])
    params = checkpoint.restore(workdir, template).params
    sources = _split_input(cfg["task"], text)
    beam = FLAGS.beam_width
    outputs, attentions = translate_pairs(model, params, data, sources, 64, beam,
                                          FLAGS.length_penalty)
    print(" ".join(outputs))
    if model.kind == "seq2seq" and cfg["attention"] != "none":
        path = FLAGS.plot or os.path.join(workdir, "translation_attention.png")
        plot_attention(path, list(zip(sources, outputs, attentions))[:6])
        print(f"attention heat map: {path}")


def main(argv):
    del argv
    cfg = common.validate()
    _validate_own_flags()
    if FLAGS.translate is not None:
        run_translate(FLAGS.translate)
        return
    cfg.update({name: FLAGS[name].value for name in MODEL_FLAGS})
    data = tr.load_task(FLAGS.task, data_path=FLAGS.data_path, seed=FLAGS.seed,
                        max_number=FLAGS.max_number)
    if FLAGS.batch_size > len(data.train):
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} is larger than the "
                             f"{len(data.train)} training pairs")
    print(f"task {data.name}: {len(data.train)} train / {len(data.valid)} valid pairs, "
          f"source vocab {data.src_vocab.size}, target vocab {data.tgt_vocab.size}, "
          f"lengths {data.max_src_len} / {data.max_tgt_len}")
    model = Model(cfg, data)
    workdir = FLAGS.workdir
    if workdir:
        common.save_config(workdir, cfg)
        checkpoint.save_json(workdir, "vocab", data.vocab_json())

    key = jax.random.key(FLAGS.seed)
    params = model.init(key)
    optimizer = common.make_optimizer()
    state = train.init_state(params, optimizer, seed=FLAGS.seed)
    step_fn = train.make_train_step(model.loss_fn, optimizer, clip_norm=FLAGS.clip_norm,
                                    has_aux=True)
    seed = FLAGS.seed
    batch_fn: Callable[[int], tr.Batch] = lambda s: tr.train_batch(data, FLAGS.batch_size, s, seed)

    def eval_fn(st: train.TrainState) -> dict[str, float]:
        return {"valid_nats": cross_entropy(model, st.params, data, data.valid,
                                            FLAGS.eval_batch_size)}

    loop = common.loop_kwargs()
    if loop["checkpoint_every"] is None and workdir:
        loop["checkpoint_every"] = FLAGS.steps  # keep the final model for --translate
    t0 = time.time()
    state, history = train.run(workdir, state, step_fn, batch_fn, eval_fn=eval_fn,
                               eval_every=FLAGS.eval_every or None, **loop)
    # A rerun of a finished workdir restores it and only evaluates: report the
    # training time that its log recorded.
    train_seconds = history[-1].get("time", time.time() - t0) if history else time.time() - t0
    params = state.params

    results: dict[str, Any] = {"config": cfg, "train_seconds": round(train_seconds, 1),
                               "train_pairs": len(data.train), "valid_pairs": len(data.valid)}
    results["valid_nats"] = history[-1].get("eval_valid_nats")
    results["train_nats_last"] = history[-1]["loss"]
    valid = data.valid[:FLAGS.eval_limit] if FLAGS.eval_limit else data.valid
    refs = [t for _, t in valid]
    sources = [s for s, _ in valid]
    widths = [1] + ([FLAGS.beam_width] if FLAGS.beam_width > 1 else [])
    decoded_attention = None
    for width in widths:
        t1 = time.time()
        hyps, attns = translate_pairs(model, params, data, sources, FLAGS.eval_batch_size,
                                      width, FLAGS.length_penalty)
        name = "greedy" if width == 1 else f"beam{width}"
        results[name] = decode_metrics(hyps, refs)
        results[name]["decode_seconds"] = round(time.time() - t1, 1)
        results[name]["examples"] = [[s, h, r] for s, h, r in zip(sources[:8], hyps, refs)]
        if decoded_attention is None:
            decoded_attention = list(zip(sources, hyps, attns))
    print(f"trained {FLAGS.steps} steps in {train_seconds:.0f} s; validation cross-entropy "
          f"{results['valid_nats']:.4f} nats/char")
    for name in ("greedy", f"beam{FLAGS.beam_width}"):
        if name in results:
            r = results[name]
            print(f"{name:>8}: exact match {r['exact_match']:.3f}  BLEU(char) {r['bleu_char']:.1f}"
                  f"  chrF {r['chrf']:.1f}  ({len(valid)} pairs, {r['decode_seconds']} s)")
    for s, h, r in results["greedy"]["examples"]:
        print(f"  {s!r} -> {h!r}  (reference {r!r})")
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    if model.kind == "seq2seq" and FLAGS.attention != "none" and (workdir or FLAGS.plot):
        path = FLAGS.plot or os.path.join(workdir, "attention.png")
        plot_attention(path, decoded_attention[:4])
        print(f"attention heat map: {path}")


if __name__ == "__main__":
    set_defaults()
    app.run(main)
