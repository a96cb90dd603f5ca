"""Training, evaluating and sampling recurrent language models: ``run(config, workdir)``
behind ``experiments.char_lm``, ``experiments.word_lm`` and ``experiments.lm_compare``.

Flow (:func:`train_and_evaluate`): corpus -> vocabulary of the training split (saved
as ``vocab.json``) -> B parallel streams cut into segments of T tokens, the batch of
step s a pure function of s -> ``rnnjax.train.run`` with the truncated-BPTT loss, the
hidden state carried in ``TrainState.extra`` (so checkpoints hold it and resume is
exact) -> every ``eval_every`` steps the validation loss on the first ``eval_tokens``
tokens and a sample -> at the end (or when ``max_minutes`` is spent) a checkpoint,
the whole validation and test splits evaluated with the state carried, a sample, and
``results.json``.

``max_minutes`` bounds the training time of one call: the run stops after the first
step that ends past the budget (``train.run``'s ``stop_fn``), saves a checkpoint there
and goes on to the final evaluation. Running again with the same workdir continues
from it.

Everything a setting can get wrong (a bad data file, a vocabulary that differs from
the workdir's, a model too large for the machine, a prime with no tokens) is found
before anything is written to the workdir or trained.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli, hf_config
from experiments.lm.config import LMConfig, model_of
from rnnjax import allocator, checkpoint, device, errors, parallel, train
from rnnjax.data import text
from rnnjax.models import hf, lm
from rnnjax.optim import factory

Report = Callable[[int, dict[str, Any]], None]

# Settings of a sampling call that are the caller's, not the trained workdir's.
SAMPLING = ("sample_only", "sample_length", "temperature", "top_k", "prime", "seed")

# Evaluation streams shorter than this many tokens waste a large part of a split
# (every stream's first token is never predicted): fewer, longer streams instead.
MIN_EVAL_STREAM = 10


# ----------------------------------------------------------------------------- flags

def define_flags(config_cls: type) -> None:
    """The Config's flags and ``--allocator``, a setting of the process rather than of the
    run (not saved with it): ``main`` applies it with ``allocator.ensure`` before the
    heavy allocations."""
    cli.define_flags(config_cls)
    flags.DEFINE_enum("allocator", "auto", list(allocator.ALLOCATORS), "Memory allocator of "
                      "the process (re-executes once, see rnnjax.allocator): auto = mimalloc if "
                      "installed, else glibc told to keep XLA's per-step scratch; system: as "
                      "started.")


def main(config_cls: type, argv: list[str], run_fn: Callable[..., Any] | None = None) -> None:
    """The entry point of an LM experiment: flags -> checked Config; ``--allocator``
    (re-executes the process once, before the heavy allocations); ``run_fn(config,
    --workdir)`` (default :func:`run`) with one-line errors."""
    # The allocator re-executes the process: before anything else starts (a multi-process
    # run's connection to the other processes included).
    allocator.ensure(flags.FLAGS.allocator)
    cli.call(run_fn or run, cli.from_flags(config_cls, argv))


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Data:
    vocab: text.Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    corpus: str


def load_data(config: LMConfig, workdir: str | None) -> Data:
    """Corpus and vocabulary; a workdir's saved vocabulary must match the rebuilt one."""
    try:
        corpus = text.load_corpus(config.corpus, config.data_path)
    except (OSError, ValueError, ImportError) as e:
        raise errors.RunError(str(e)) from None
    vocab = text.build_vocabulary(corpus.train, config.level, max_size=config.max_vocab)
    if workdir and os.path.exists(os.path.join(workdir, "vocab.json")):
        saved = text.Vocabulary.load(os.path.join(workdir, "vocab.json"))
        if saved != vocab:
            raise errors.ConfigMismatchError(
                f"workdir {workdir!r} holds a model with a different vocabulary "
                f"({len(saved)} {saved.level} tokens vs {len(vocab)} {vocab.level} tokens here): "
                "use a fresh --workdir for another corpus or level")
    return Data(vocab, vocab.encode(corpus.train), vocab.encode(corpus.valid),
                vocab.encode(corpus.test), corpus.name)


def eval_batch(config: LMConfig, tokens: int) -> int:
    """Evaluation streams for a split of ``tokens``: ``eval_batch_size``, fewer when the
    split is too short for that many streams of ``MIN_EVAL_STREAM`` tokens."""
    return max(1, min(config.eval_batch_size, tokens // MIN_EVAL_STREAM))


def _eval_segments(config: LMConfig, ids: np.ndarray):
    return text.eval_segments(ids, eval_batch(config, len(ids)), config.seq_len)


# ----------------------------------------------------------------------------- checks

def default_prime(level: str) -> str:
    return "\n" if level == "char" else "the"


def prime_ids(vocab: text.Vocabulary, prime: str | None) -> tuple[str, np.ndarray]:
    """The prime text (or the level's default) and its ids; ConfigError if it has no tokens."""
    prime = prime if prime else default_prime(vocab.level)
    ids = vocab.encode(prime)
    if len(ids) == 0:
        raise cli.ConfigError("prime", prime, f"it has no tokens at the {vocab.level} level")
    return prime, ids


def check_fits(config: LMConfig, model: lm.LanguageModel) -> int:
    """The model's parameter count; ConfigError naming the size settings when training
    it would need more memory than the device has (found before anything starts)."""
    shapes = jax.eval_shape(lambda k: lm.init(model, k), jax.random.key(0))
    n_params = lm.count_params(shapes)
    # Per time step and layer the scan keeps about 8 [B, H] arrays (gates, states);
    # the readout's logits and their gradient are [T, B, V].
    tokens = config.seq_len * config.batch_size
    problem = device.check_fits(n_params, tokens * (8 * model.hidden * model.layers
                                                    + 3 * model.vocab_size))
    if problem:
        raise cli.ConfigError("hidden", config.hidden, f"{problem}; lower hidden, layers, "
                              "embed_size, batch_size or seq_len")
    return n_params


# ----------------------------------------------------------------------------- pieces

def generate(model: lm.LanguageModel, params, vocab: text.Vocabulary, *, seed: int,
             length: int, temperature: float, top_k: int, prime: str | None) -> str:
    """Prime text + ``length`` sampled tokens, decoded."""
    prime, ids = prime_ids(vocab, prime)
    out = lm.sample(model, params, jax.random.key(seed), jnp.asarray(ids), length=length,
                    temperature=temperature, top_k=top_k)
    sep = "" if vocab.level == "char" else " "
    return prime + sep + vocab.decode(np.asarray(out))


def _fmt(value: float, spec: str) -> str:
    """``format(value, spec)``, also for NaN and Inf (a diverged run still reports)."""
    return format(float(value), spec)


def summary(result: dict[str, float], level: str) -> str:
    if level == "char":
        return (f"{_fmt(result['nats'], '.4f')} nats/char = {_fmt(result['bits'], '.4f')} "
                f"bits/char ({result['tokens']} characters)")
    return (f"perplexity {_fmt(result['perplexity'], '.2f')} ({_fmt(result['nats'], '.4f')} "
            f"nats/word, {result['tokens']} words)")


def _write(msg: str) -> None:
    """Print without breaking a progress bar."""
    try:
        from tqdm.auto import tqdm
        tqdm.write(msg, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(msg, flush=True)


def hf_settings(config: LMConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in hf_config.HF_FIELDS}


def make_template(model: lm.LanguageModel, config: LMConfig) -> train.TrainState:
    """A fresh TrainState for ``model`` (also the restore template of a checkpoint)."""
    params = lm.init(model, jax.random.fold_in(jax.random.key(config.seed), 1))
    carry = lm.initial_carry(model, params, config.batch_size)
    if config.optimizer == "hf":
        opt = hf.language_model(model, carry, hf_settings(config))
        return train.init_state(params, None, opt_state=opt.init(params), seed=config.seed,
                                extra=carry)
    return train.init_state(params, factory.from_config(config), seed=config.seed, extra=carry)


def make_step(model: lm.LanguageModel, config: LMConfig, state: train.TrainState):
    """The jitted training step and the state placed for it: truncated BPTT with the optax
    optimizer of the settings (clipping included), or one Hessian-free update per segment
    (``optimizer="hf"``); with ``data_parallel``, the batch [T, B] and the carry [B, H]
    split over all devices along B, everything else replicated."""
    if config.optimizer == "hf":
        opt = hf.language_model(model, state.extra, hf_settings(config))
        return jax.jit(lm.hf_tbptt_step(model, opt,
                                        curvature_batch_size=config.curvature_batch_size)), state
    step_fn = train.make_train_step(lm.tbptt_loss(model), factory.from_config(config),
                                    uses_extra=True)
    if not config.data_parallel:
        return jax.jit(step_fn), state
    mesh = parallel.data_mesh()
    shardings = parallel.train_state_shardings(state, mesh)
    return (parallel.data_parallel_step(step_fn, mesh, batch_axis=1, state_shardings=shardings),
            parallel.put(state, shardings))


# ----------------------------------------------------------------------------- training

def run(config: LMConfig, workdir: str | None, report: Report | None = None, *,
        print_samples: bool = True) -> dict[str, Any]:
    """Train per ``config`` and evaluate (or, with ``sample_only``, sample from ``workdir``).

    Returns the results, also written to ``workdir/results.json``; ``report(step,
    {"valid": {...}})`` is called at every periodic evaluation (sweeps prune with it).
    """
    cli.validate(config)
    if config.sample_only:
        if not workdir:
            raise cli.ConfigError("sample_only", True, "needs workdir, the directory of a "
                                  "trained model")
        sample = sample_from_workdir(config, workdir)
        print(sample)
        return {"sample": sample}
    data = load_data(config, workdir)
    model = model_of(config, len(data.vocab))
    check_fits(config, model)
    prime_ids(data.vocab, config.prime)  # a prime without tokens stops before training
    try:
        streams = text.make_streams(data.train, config.batch_size, config.seq_len)
    except ValueError as e:
        raise errors.RunError(str(e)) from None
    with cli.workdir_session(workdir, config):
        return train_and_evaluate(config, workdir, data, model, streams, report=report,
                                  print_samples=print_samples)


def train_and_evaluate(config: LMConfig, workdir: str | None, data: Data,
                       model: lm.LanguageModel, streams: text.TBPTTStreams, *,
                       report: Report | None = None,
                       print_samples: bool = True) -> dict[str, Any]:
    """Train ``model`` on ``streams``, evaluate the whole validation (and test) split,
    print a sample; return the results (also in ``workdir/results.json``). Call through
    :func:`run`, which checks the settings and holds the workdir."""
    t0 = time.time()
    level = config.level
    tokens = "characters" if level == "char" else "words"
    print(f"corpus {data.corpus}: {len(data.train):,} / {len(data.valid):,} / "
          f"{len(data.test):,} {tokens} (train/valid/test), vocabulary {len(data.vocab)}; "
          f"one epoch = {streams.segments_per_epoch} steps of {config.batch_size}x"
          f"{config.seq_len}", flush=True)
    if workdir:
        data.vocab.save(os.path.join(workdir, "vocab.json"))

    state = make_template(model, config)
    where = device.summary()
    print(f"model: {config.layers} x {config.cell} (hidden {config.hidden}), "
          f"{lm.count_params(state.params):,} parameters; device {where}", flush=True)
    step_fn, state = make_step(model, config, state)
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    t_train = time.time()

    def out_of_time(_state) -> bool:
        return budget is not None and time.time() - t_train > budget

    eval_ids = data.valid[:config.eval_tokens + 1]
    if config.eval_batch_size > eval_batch(config, len(data.valid)):
        print(f"note: the validation split ({len(data.valid):,} {tokens}) is evaluated with "
              f"{eval_batch(config, len(data.valid))} streams, fewer than "
              f"--eval_batch_size={config.eval_batch_size}, so that each stream is at least "
              f"{MIN_EVAL_STREAM} tokens long", flush=True)
    sample_seed = [config.seed]
    events = cli.event_log(config, workdir)

    def eval_fn(st: train.TrainState) -> dict[str, float]:
        r = lm.evaluate(model, st.params, _eval_segments(config, eval_ids))
        if print_samples:
            sample_seed[0] += 1
            s = generate(model, st.params, data.vocab, seed=sample_seed[0], length=200,
                         temperature=config.temperature, top_k=config.top_k,
                         prime=config.prime)
            events.text("sample", s, int(st.step))
            _write(f"\n--- step {int(st.step)}: validation (first {r['tokens']:,} {tokens}) "
                   f"{summary(r, level)}; sample:\n{s}\n---")
        if report is not None:
            report(int(st.step), {"valid": r})
        return {"valid_nats": r["nats"], "valid_bits": r["bits"],
                "valid_perplexity": r["perplexity"]}

    state, history = train.run(workdir, state, step_fn, streams.segment, jit=False,
                               eval_fn=eval_fn if config.eval_every else None,
                               eval_every=config.eval_every or None, stop_fn=out_of_time,
                               after_eval=factory.anneal_on_plateau(  # factor 1: no-op
                                   "eval_valid_nats", config.plateau_factor,
                                   min_improvement=config.plateau_threshold),
                               **cli.loop_kwargs(config, workdir, events=events))
    stopped_early = int(state.step) < config.steps
    if stopped_early:
        _write(f"--max_minutes={config.max_minutes} spent: stopped after step "
               f"{int(state.step)}")
    train_seconds = time.time() - t_train
    steps_done = int(state.step)

    print("evaluating the whole validation split" + (" and test split" if config.eval_test
                                                      else ""), flush=True)
    valid = lm.evaluate(model, state.params, _eval_segments(config, data.valid))
    test = (lm.evaluate(model, state.params, _eval_segments(config, data.test))
            if config.eval_test else None)
    last_loss = next((r["loss"] for r in reversed(history) if "loss" in r), float("nan"))
    results = {
        "corpus": data.corpus, "level": level, "vocab_size": len(data.vocab),
        "parameters": lm.count_params(state.params), "steps": steps_done,
        "tokens_seen": steps_done * config.batch_size * config.seq_len,
        "epochs": steps_done / streams.segments_per_epoch,
        "train_seconds": train_seconds, "total_seconds": time.time() - t0,
        "steps_per_second": steps_done / max(train_seconds, 1e-9),
        "device": where,
        "stopped_by_time": stopped_early, "last_train_loss": last_loss,
        "valid": valid, "test": test, "config": cli.as_dict(config),
    }
    if print_samples:
        s = generate(model, state.params, data.vocab, seed=config.seed,
                     length=config.sample_length, temperature=config.temperature,
                     top_k=config.top_k, prime=config.prime)
        print(f"\n=== sample (temperature {config.temperature}) ===\n{s}\n===")
        results["sample"] = s
        events.text("sample", s, steps_done)
    events.close()
    print(f"trained {steps_done} steps ({results['epochs']:.2f} epochs, "
          f"{results['tokens_seen']:,} {tokens}) in {train_seconds / 60:.1f} min, "
          f"{results['steps_per_second']:.1f} steps/s, evaluations included")
    print(f"validation: {summary(valid, level)}")
    if test is not None:
        print(f"test:       {summary(test, level)}")
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    return results


# ----------------------------------------------------------------------------- sampling

def trained_config(config: LMConfig, workdir: str) -> LMConfig:
    """``config`` with the settings that shaped ``workdir``'s model and optimizer state
    (read from its ``config.json``); the sampling settings stay the caller's."""
    try:
        saved = checkpoint.load_json(workdir, "config")
    except FileNotFoundError:
        raise errors.RunError(f"--workdir={workdir!r} has no config.json: give the workdir "
                              "of a trained language model") from None
    names = {f.name for f in dataclasses.fields(config)} - set(SAMPLING)
    return dataclasses.replace(config, **{k: v for k, v in saved.items() if k in names})


def sample_from_workdir(config: LMConfig, workdir: str) -> str:
    """Load ``workdir``'s settings, vocabulary and latest checkpoint; return a sample
    (``config``'s seed, length, temperature, top_k and prime)."""
    trained = trained_config(config, workdir)
    vocab_path = os.path.join(workdir, "vocab.json")
    if not os.path.isfile(vocab_path):
        raise errors.RunError(f"--workdir={workdir!r} has no vocab.json: give the workdir of "
                              "a trained language model")
    vocab = text.Vocabulary.load(vocab_path)
    prime_ids(vocab, config.prime)
    model = model_of(trained, len(vocab))
    template = make_template(model, trained)
    try:
        state = checkpoint.restore(workdir, template)
    except FileNotFoundError as e:
        raise errors.RunError(f"--workdir={workdir!r}: {e}") from None
    print(f"loaded step {int(state.step)} of {workdir} ({trained.layers} x {trained.cell}, "
          f"hidden {trained.hidden}, vocabulary {len(vocab)})", flush=True)
    return generate(model, state.params, vocab, seed=config.seed, length=config.sample_length,
                    temperature=config.temperature, top_k=config.top_k, prime=config.prime)
