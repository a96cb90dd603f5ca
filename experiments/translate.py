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

From Python::

    config = dataclasses.replace(translate.Config(), task="num_de", steps=300)
    results = translate.run(config, "runs/de")       # also in runs/de/results.json

BLEU is computed on characters (``sacrebleu`` with ``tokenize="char"``): a
Pig Latin "sentence" is one word, where word-level BLEU says nothing. chrF is
sacrebleu's default chrF2. Results go to ``<workdir>/results.json``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import app

from experiments import cli
from rnnjax import cells, checkpoint, device, errors, train
from rnnjax.data import translation as tr
from rnnjax.models import lockstep
from rnnjax.models import seq2seq as s2s
from rnnjax.optim import factory

MAX_NUMBER = 1_000_000  # num2words writes about 30,000 numbers a second


def _cell_name(name: str) -> str | None:
    return None if name in cells.CELL_NAMES else "accepted: " + ", ".join(cells.CELL_NAMES)


def _number_range(value: int) -> str | None:
    return None if 10 <= value <= MAX_NUMBER else f"expected an integer in [10, {MAX_NUMBER:,}]"


@dataclasses.dataclass(frozen=True)
class Config(cli.TrainConfig):
    """The task, the model, its decoding and the run."""

    # Settings of decoding, evaluation and --translate: they may change on a rerun.
    RESUMABLE = frozenset({"beam_width", "length_penalty", "eval_batch_size", "eval_limit",
                           "translate", "plot"})

    task: str = cli.field("piglatin", "Which pairs to learn.", choices=tr.TASKS)
    data_path: str | None = cli.field(None, "With --task=tsv: a UTF-8 file of "
                                      "'source<TAB>target' lines.")
    max_length: int = cli.field(200, "With --task=tsv: the longest source or target accepted, "
                                "in characters (one long line would pad every batch).",
                                check=cli.positive)
    max_number: int = cli.field(10_000, "Number tasks use 0 .. max_number-1, 20% held out.",
                                check=_number_range)
    model: str = cli.field("seq2seq", "The encoder–decoder, or the lockstep baseline (one "
                           "output character per input character).",
                           choices=("seq2seq", "lockstep"))
    decoder_cell: str | None = cli.field(None, "The decoder's cell (default: --cell).",
                                         check=_cell_name)
    embed: int = cli.field(32, "Character embedding size.", check=cli.positive)
    bidirectional: bool = cli.field(False, "Bidirectional encoder (states of size 2 * --hidden).")
    attention: str = cli.field("none", "none, additive (Bahdanau 2015) or dot (scaled dot "
                               "product).", choices=s2s.ATTENTIONS)
    attention_size: int = cli.field(64, "Size of the attention's query/key projections.",
                                    check=cli.positive)
    reverse_source: bool = cli.field(False, "Read each source backwards (Sutskever et al. 2014).")
    beam_width: int = cli.field(1, "Beam width; 1 is greedy decoding only, >1 evaluates greedy "
                                "and beam search.", check=cli.positive)
    length_penalty: float = cli.field(1.0, "Beam search ranks finished outputs by log p / "
                                      "steps**length_penalty (0: plain log-probability).",
                                      check=cli.non_negative)
    eval_every: int = cli.field(500, "Validation cross-entropy every N steps (0: at the end "
                                "only).", check=cli.non_negative)
    eval_batch_size: int = cli.field(256, "Pairs per evaluation / decoding batch.",
                                     check=cli.positive)
    eval_limit: int = cli.field(0, "Decode only the first N validation pairs for exact match, "
                                "BLEU and chrF (0: all). Cross-entropy always uses all.",
                                check=cli.non_negative)
    translate: str | None = cli.field(None, "Translate this text with the model saved in "
                                      "--workdir (no training). For --task=piglatin each word "
                                      "is translated on its own.")
    plot: str | None = cli.field(None, "Where to draw the attention heat map (PNG); default "
                                 "<workdir>/attention.png. Needs --attention.")

    # This experiment's defaults for the common settings.
    cell: str = "gru"
    hidden: int = 64
    batch_size: int = 64
    learning_rate: float = 3e-3
    clip_norm: float | None = 5.0
    steps: int = 1500
    checkpoint_every: int = 0

    def check(self) -> None:
        if self.task == "tsv" and not self.data_path and self.translate is None:
            raise cli.ConfigError("data_path", self.data_path, "task=tsv needs a UTF-8 file "
                                  "of 'source<TAB>target' lines")
        if self.task != "tsv" and self.data_path:
            raise cli.ConfigError("data_path", self.data_path, f"is only used with task=tsv, "
                                  f"not task={self.task}")
        if self.model == "lockstep":
            for name in ("bidirectional", "reverse_source"):
                if getattr(self, name):
                    raise cli.ConfigError(name, True, "is for model=seq2seq; the lockstep "
                                          "baseline has no encoder")
            if self.attention != "none":
                raise cli.ConfigError("attention", self.attention, "is for model=seq2seq; the "
                                      "lockstep baseline emits one character per input step")
            if self.beam_width != 1:
                raise cli.ConfigError("beam_width", self.beam_width, "is for model=seq2seq; the "
                                      "lockstep baseline emits one character per input step")
        if self.plot and self.attention == "none" and self.translate is None:
            raise cli.ConfigError("plot", self.plot, "draws attention weights: it needs "
                                  "attention=additive|dot")
        if self.plot:
            cli.check_output_file("plot", self.plot)
        super().check()


# --------------------------------------------------------------------------- the model

class Model:
    """The functions a run needs, for either model."""

    def __init__(self, config: Config, data: tr.TranslationData):
        self.kind = config.model
        if self.kind == "lockstep":
            self.config = lockstep.Config(data.src_vocab.size, data.tgt_vocab.size,
                                          config.embed, config.hidden, config.cell)
            self.module = lockstep
        else:
            self.config = s2s.Config(
                data.src_vocab.size, data.tgt_vocab.size, config.embed, config.hidden,
                config.cell, config.decoder_cell or config.cell, config.bidirectional,
                config.attention, config.attention_size, config.reverse_source).validate()
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
            raise cli.ConfigError("translate", text, "the piglatin model translates words of "
                                  f"the letters a-z; offending: {bad or 'no words'}")
        return words
    if not text.strip():
        raise cli.ConfigError("translate", text, "expected some text")
    return [text.strip()]


# --------------------------------------------------------------------------- run

def trained_config(config: Config, workdir: str) -> Config:
    """``config`` with the settings that shaped ``workdir``'s model (its ``config.json``);
    the decoding settings stay the caller's."""
    saved = checkpoint.load_json(workdir, "config")
    names = {f.name for f in dataclasses.fields(config)} - Config.RESUMABLE
    return dataclasses.replace(config, **{k: v for k, v in saved.items() if k in names})


def translate_from_workdir(config: Config, workdir: str | None) -> dict[str, Any]:
    """Load ``workdir``'s model and translate ``config.translate``; nothing in the workdir
    is changed (a heat map goes to ``plot``, or beside the model)."""
    if not workdir or checkpoint.latest_step(workdir) is None:
        raise errors.RunError(
            f"--translate needs --workdir with a trained model (a checkpoint, config.json and "
            f"vocab.json); {workdir!r} has no checkpoint. Train first, e.g. python -m "
            "experiments.translate --task=piglatin --attention=additive --workdir=DIR")
    try:
        trained = trained_config(config, workdir)
        vocab = checkpoint.load_json(workdir, "vocab")
    except FileNotFoundError as e:
        raise errors.RunError(f"--workdir={workdir!r} is not a trained translation model: "
                              f"{e}") from None
    sources = _split_input(trained.task, config.translate)
    data = tr.TranslationData(trained.task, [], [], tr.CharVocab.from_json(vocab["src"]),
                              tr.CharVocab.from_json(vocab["tgt"]), vocab["max_src_len"],
                              vocab["max_tgt_len"])
    model = Model(trained, data)
    params = model.init(jax.random.key(0))
    template = train.init_state(params, factory.from_config(trained), seed=trained.seed)
    params = checkpoint.restore(workdir, template).params
    outputs, attentions = translate_pairs(model, params, data, sources, 64, config.beam_width,
                                          config.length_penalty)
    print(" ".join(outputs))
    results: dict[str, Any] = {"sources": sources, "outputs": outputs}
    if model.kind == "seq2seq" and trained.attention != "none":
        path = config.plot or os.path.join(workdir, "translation_attention.png")
        plot_attention(path, list(zip(sources, outputs, attentions))[:6])
        print(f"attention heat map: {path}")
        results["plot"] = path
    return results


def check_fits(config: Config, model: Model, data: tr.TranslationData) -> None:
    """ConfigError naming the size settings when training needs more memory than there is."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
    # Per pair and time step: embeddings, encoder and decoder states and gates, attention.
    steps = data.max_src_len + data.max_tgt_len
    per_step = 8 * config.hidden + config.embed + config.attention_size + data.tgt_vocab.size
    problem = device.check_fits(n_params, config.batch_size * steps * per_step)
    if problem:
        raise cli.ConfigError("hidden", config.hidden, f"{problem}; lower hidden, embed, "
                              "attention_size or batch_size")


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Train on the task and evaluate it (or, with ``translate``, translate with the model
    saved in ``workdir``); results also in ``workdir/results.json``."""
    cli.validate(config)
    if config.translate is not None:
        return translate_from_workdir(config, workdir)
    try:
        data = tr.load_task(config.task, data_path=config.data_path, seed=config.seed,
                            max_number=config.max_number, max_length=config.max_length)
    except (OSError, ValueError, ImportError) as e:
        raise errors.RunError(str(e)) from None
    if config.batch_size > len(data.train):
        raise cli.ConfigError("batch_size", config.batch_size, f"is larger than the "
                              f"{len(data.train)} training pairs")
    model = Model(config, data)
    check_fits(config, model, data)
    with cli.workdir_session(workdir, config):
        return train_and_evaluate(config, workdir, data, model)


def train_and_evaluate(config: Config, workdir: str | None, data: tr.TranslationData,
                       model: Model) -> dict[str, Any]:
    """Train ``model`` on ``data``, decode the validation pairs, write the results."""
    print(f"task {data.name}: {len(data.train)} train / {len(data.valid)} valid pairs, "
          f"source vocab {data.src_vocab.size}, target vocab {data.tgt_vocab.size}, "
          f"lengths {data.max_src_len} / {data.max_tgt_len}")
    if workdir:
        checkpoint.save_json(workdir, "vocab", data.vocab_json())

    key = jax.random.key(config.seed)
    params = model.init(key)
    optimizer = factory.from_config(config)
    state = train.init_state(params, optimizer, seed=config.seed)
    step_fn = train.make_train_step(model.loss_fn, optimizer, has_aux=True)
    seed = config.seed
    batch_fn: Callable[[int], tr.Batch] = lambda s: tr.train_batch(data, config.batch_size, s,
                                                                   seed)

    def eval_fn(st: train.TrainState) -> dict[str, float]:
        return {"valid_nats": cross_entropy(model, st.params, data, data.valid,
                                            config.eval_batch_size)}

    events = cli.event_log(config, workdir)
    loop = cli.loop_kwargs(config, workdir, events=events)
    if loop["checkpoint_every"] is None and workdir:
        loop["checkpoint_every"] = config.steps  # keep the final model for --translate
    t0 = time.time()
    state, history = train.run(workdir, state, step_fn, batch_fn, eval_fn=eval_fn,
                               eval_every=config.eval_every or None, **loop)
    # A rerun of a finished workdir restores it and only evaluates: report the
    # training time that its log recorded.
    train_seconds = history[-1].get("time", time.time() - t0) if history else time.time() - t0
    params = state.params

    results: dict[str, Any] = {"config": cli.as_dict(config),
                               "train_seconds": round(train_seconds, 1),
                               "train_pairs": len(data.train), "valid_pairs": len(data.valid)}
    results["valid_nats"] = history[-1].get("eval_valid_nats") if history else None
    if results["valid_nats"] is None:
        results["valid_nats"] = cross_entropy(model, params, data, data.valid,
                                              config.eval_batch_size)
    results["train_nats_last"] = next((r["loss"] for r in reversed(history) if "loss" in r),
                                      float("nan"))
    valid = data.valid[:config.eval_limit] if config.eval_limit else data.valid
    refs = [t for _, t in valid]
    sources = [s for s, _ in valid]
    widths = [1] + ([config.beam_width] if config.beam_width > 1 else [])
    decoded_attention = None
    for width in widths:
        t1 = time.time()
        hyps, attns = translate_pairs(model, params, data, sources, config.eval_batch_size,
                                      width, config.length_penalty)
        name = "greedy" if width == 1 else f"beam{width}"
        results[name] = decode_metrics(hyps, refs)
        results[name]["decode_seconds"] = round(time.time() - t1, 1)
        results[name]["examples"] = [[s, h, r] for s, h, r in zip(sources[:8], hyps, refs)]
        if decoded_attention is None:
            decoded_attention = list(zip(sources, hyps, attns))
    print(f"trained {config.steps} steps in {train_seconds:.0f} s; validation cross-entropy "
          f"{float(results['valid_nats']):.4f} nats/char")
    for name in ("greedy", f"beam{config.beam_width}"):
        if name in results:
            r = results[name]
            print(f"{name:>8}: exact match {r['exact_match']:.3f}  BLEU(char) {r['bleu_char']:.1f}"
                  f"  chrF {r['chrf']:.1f}  ({len(valid)} pairs, {r['decode_seconds']} s)")
    for s, h, r in results["greedy"]["examples"]:
        print(f"  {s!r} -> {h!r}  (reference {r!r})")
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    events.text("translations", "\n".join(f"    {s} -> {h} (reference {r})" for s, h, r
                                           in results["greedy"]["examples"]), config.steps)
    if model.kind == "seq2seq" and config.attention != "none" and (workdir or config.plot):
        path = config.plot or os.path.join(workdir, "attention.png")
        plot_attention(path, decoded_attention[:4])
        print(f"attention heat map: {path}")
        results["plot"] = path
        events.image("attention", path, config.steps)
    events.close()
    return results


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
