"""Running parity learned by backprop through time (Lecture 13's hand-set network, learned).

The lecture sets an RNN's weights by hand so that it outputs the running parity
of a bit stream: hidden units compute AND and OR of the previous output and
the input, the output is "OR and not AND" (XOR). Here the same behaviour is
learned from data, and tested where it matters: on sequences far longer than
the ones trained on. Three models:

1. ``rnn``: a recurrent cell (``--cell``, ``--hidden``) with a softmax readout
   at every step, trained by BPTT on sequences of ``--train_length``. When the
   learned dynamics saturate to two attractors (a discrete two-state
   automaton) the solution holds at 10x and 100x the training length; when
   they do not, errors appear once sequences are long enough. ``--steepness``
   (tanh(beta z)) is a knob for that saturation.
2. ``lecture``: the lecture's own architecture (2 hidden units, recurrence
   through the output unit, ``rnnjax.handset.output_feedback``) with logistic
   units, trained by BPTT from several seeds at once (``rnnjax.sweep``); its
   learned weights are printed beside the hand-set ones, with each unit's
   truth table.
3. ``window``: a feed-forward network (MLP) that sees only the last
   ``--window`` inputs. It can be perfect on the training length when the
   window covers it, and falls to chance beyond its window: the lecture's
   argument for recurrence.

Run (about two minutes on 2 busy CPU cores)::

    python -m experiments.parity --workdir=/tmp/parity

It prints the accuracy table (per step and whole sequences) and writes it to
``<workdir>/results.json``; training curves are in ``<workdir>/<model>/metrics.jsonl``.
From Python::

    config = dataclasses.replace(parity.Config(), steps=200, models=("rnn",))
    results = parity.run(config, "runs/parity")     # also in runs/parity/results.json
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app

from experiments import cli
from rnnjax import cells, checkpoint, device, handset, losses, recurrence, sweep, train
from rnnjax.data import synthetic
from rnnjax.models import tagger
from rnnjax.optim import factory

PARITY = synthetic.get("parity")
MODELS = ("rnn", "lecture", "window")
VANILLA = ("tanh", "relu", "identity", "logistic", "irnn")  # cells --steepness applies to
LogitsFn = Callable[[Any, jax.Array], jax.Array]


def _model_name(value: str) -> str | None:
    return None if value in MODELS else "accepted: a comma-separated subset of " + ", ".join(MODELS)


@dataclasses.dataclass(frozen=True)
class Config(cli.TrainConfig):
    """The parity experiment's settings (the flags of ``python -m experiments.parity``)."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-2
    hidden: int = 16
    clip_norm: float | None = 1.0
    log_every: int = 100
    checkpoint_every: int = 500
    train_length: int = cli.field(10, "Length of the training sequences.", check=cli.positive)
    steepness: float = cli.field(
        1.0, "beta in act(beta z) of a vanilla RNN cell. Steep units saturate sooner (a discrete "
        "automaton generalises to any length); measured over 3 seeds, beta=4 did not generalise "
        "more often than beta=1 (docs/training.md).", check=cli.positive)
    length_factors: tuple[int, ...] = cli.field(
        (10, 100), "Test at these multiples of --train_length.", check=cli.positive)
    eval_sequences: int = cli.field(1000, "Held-out sequences per test length.",
                                    check=cli.positive)
    window: int | None = cli.field(None, "Inputs the feed-forward baseline sees (default: "
                                   "--train_length, so it can be perfect on training-length "
                                   "sequences).", check=cli.positive)
    window_hidden: int = cli.field(128, "Hidden units per layer of the feed-forward baseline.",
                                   check=cli.positive)
    window_steps: int = cli.field(1500, "Training steps of the feed-forward baseline.",
                                  check=cli.positive)
    lecture_steps: int = cli.field(1500, "Training steps of the lecture-architecture network.",
                                   check=cli.positive)
    lecture_seeds: int = cli.field(8, "Seeds of the lecture-architecture network, trained at "
                                   "once with jax.vmap; the best is reported.", check=cli.positive)
    models: tuple[str, ...] = cli.field(MODELS, "Which models to train: any of rnn, lecture, "
                                        "window.", check=_model_name)

    # Only what is measured after training may change when a workdir is reused.
    RESUMABLE = frozenset({"eval_sequences", "length_factors", "models"})

    def check(self) -> None:
        if not self.length_factors:
            raise cli.ConfigError("length_factors", self.length_factors,
                                  "expected a comma-separated list of positive integers, e.g. 10,100")
        if not self.models:
            raise cli.ConfigError("models", self.models, _model_name(""))
        if self.steepness != 1.0 and self.cell not in VANILLA:
            raise cli.ConfigError("steepness", self.steepness,
                                  f"applies to vanilla cells only; with cell={self.cell} set "
                                  "steepness=1")
        super().check()


# ----------------------------------------------------------------------------- models

def rnn_model(config: Config) -> tagger.Tagger:
    """Model 1: the cell of ``config`` (steepened) with a 2-way softmax readout at every step."""
    cell = cells.steep(cells.by_name(config.cell, config.hidden), config.steepness)
    return tagger.make(cell, input_size=1, output_size=2)


def windows(xs: jax.Array, k: int) -> jax.Array:
    """xs [T, B, 1] -> [T, B, k]: at step t the inputs t-k+1..t (zeros before the start)."""
    padded = jnp.concatenate([jnp.zeros((k - 1,) + xs.shape[1:], xs.dtype), xs], axis=0)
    return jnp.concatenate([padded[i:i + xs.shape[0]] for i in range(k)], axis=-1)


def init_mlp(key: jax.Array, k: int, hidden: int) -> dict:
    """A two-hidden-layer tanh MLP from a window of k inputs to 2 logits."""
    keys = jax.random.split(key, 3)
    sizes = [k, hidden, hidden, 2]
    return {f"W{i}": jax.random.normal(keys[i], (a, b)) / np.sqrt(a)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))} | {
            f"b{i}": jnp.zeros(b) for i, b in enumerate(sizes[1:])}


def mlp_logits(k: int, params: dict, xs: jax.Array) -> jax.Array:
    """xs [T, B, 1] -> logits [T, B, 2], each step from its window of k inputs only."""
    # Bits as +-1 so that "no input yet" (0) is distinct from a zero bit.
    h = windows(2 * xs - 1, k)
    h = jnp.tanh(h @ params["W0"] + params["b0"])
    h = jnp.tanh(h @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def lecture_cell() -> cells.Cell:
    """The lecture's parity architecture with logistic units (trainable)."""
    return handset.output_feedback(2, 1, "logistic")


def lecture_outputs(params: dict, xs: jax.Array) -> jax.Array:
    """xs [T, B, 1] -> P(parity = 1) [T, B] of the output-feedback network."""
    _, hs = recurrence.unroll(lecture_cell(), params, xs)
    return hs[..., 2]


def lecture_logits(params: dict, xs: jax.Array) -> jax.Array:
    """Two-class logits [T, B, 2] from the output unit's probability."""
    p = jnp.clip(lecture_outputs(params, xs), 1e-6, 1 - 1e-6)
    return jnp.stack([jnp.log1p(-p), jnp.log(p)], axis=-1)


# ----------------------------------------------------------------------------- training

def parity_batch_fn(seed: int, batch_size: int, length: int) -> Callable[[int], synthetic.Batch]:
    """Batches as a pure function of (seed, step): resume-exact data order."""
    base = jax.random.fold_in(jax.random.key(seed), 0xDA7A)

    def batch_fn(step: int) -> synthetic.Batch:
        return PARITY.generate(jax.random.fold_in(base, step), batch_size, length)

    return batch_fn


def classification_loss(logits_fn: LogitsFn) -> Callable:
    """loss_fn(params, batch, key) -> (cross-entropy, {"accuracy"}) for the train step."""

    def loss_fn(params, batch, key):
        logits = logits_fn(params, batch.inputs)
        return losses.cross_entropy(logits, batch.targets), {
            "accuracy": losses.accuracy(logits, batch.targets)}

    return loss_fn


def accuracy(logits_fn: LogitsFn, params: Any, key: jax.Array, length: int,
             num_sequences: int, *, split: int = 10, chunk: int = 500) -> dict[str, float]:
    """Held-out accuracy at ``length``: per step, whole sequences, and by position.

    Returns {"step": fraction of steps right, "sequence": fraction of sequences
    right at every step, "early": per-step accuracy on steps 1..split,
    "late": on later steps (nan if none)}.
    """
    predict = jax.jit(lambda p, xs: jnp.argmax(logits_fn(p, xs), -1))
    right_steps = []
    for i, start in enumerate(range(0, num_sequences, chunk)):
        batch = PARITY.generate(jax.random.fold_in(key, i), min(chunk, num_sequences - start), length)
        right_steps.append(np.asarray(predict(params, batch.inputs) == batch.targets))
    right = np.concatenate(right_steps, axis=1)  # [T, N]
    return {"step": float(right.mean()), "sequence": float(right.all(0).mean()),
            "early": float(right[:split].mean()),
            "late": float(right[split:].mean()) if length > split else float("nan")}


def _subdir(workdir: str | None, name: str) -> str | None:
    return None if workdir is None else os.path.join(workdir, name)


def train_model(workdir: str | None, params: Any, logits_fn: LogitsFn, *, steps: int,
                seed: int, batch_size: int, length: int, optimizer: Any,
                clip_norm: float | None = None, log_every: int,
                checkpoint_every: int | None = None, keep: int = 2,
                max_bad_steps: int | None = 10, progress: bool = False,
                on_log: Any = None) -> tuple[train.TrainState, list[dict]]:
    """Train ``params`` on parity of length ``length`` with the rnnjax loop (``clip_norm``:
    clipping in the step, for an optimizer that does not clip itself)."""
    state = train.init_state(params, optimizer, seed=seed)
    step_fn = train.make_train_step(classification_loss(logits_fn), optimizer,
                                    clip_norm=clip_norm, has_aux=True)
    return train.run(workdir, state, step_fn, parity_batch_fn(seed, batch_size, length),
                     steps=steps, log_every=log_every,
                     checkpoint_every=checkpoint_every if workdir else None, keep=keep,
                     max_bad_steps=max_bad_steps, progress=progress, on_log=on_log)


def train_lecture_networks(workdir: str | None, *, seeds: int, steps: int, seed: int,
                           batch_size: int, length: int, learning_rate: float,
                           log_every: int) -> tuple[dict, list[float]]:
    """Train ``seeds`` lecture-architecture networks at once (vmap); return the best.

    Returns (params of the best member, final train loss of every member).
    """
    optimizer = factory.make("adam", learning_rate)
    cell = lecture_cell()

    def init_one(key):
        return train.init_state(cell.init(key, 1), optimizer, rng=key)

    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 0x1EC), seeds)
    states = sweep.init_many(init_one, keys)
    step_fn = train.make_train_step(classification_loss(lecture_logits), optimizer,
                                    clip_norm=1.0, has_aux=True)
    states, history = train.run(workdir, states, sweep.vmap_step(step_fn),
                                parity_batch_fn(seed, batch_size, length), steps=steps,
                                log_every=log_every, progress=False)
    final = history[-1]["loss"]
    return sweep.member(states, int(np.argmin(final))).params, list(final)


# ----------------------------------------------------------------------------- run

def train_and_measure_rnn(config: Config, workdir: str | None, eval_key: jax.Array,
                          test_lengths: list[int]) -> dict[str, Any]:
    """Model 1: the RNN of --cell/--hidden/--steepness, trained and tested."""
    model = rnn_model(config)
    state, history = train_model(
        _subdir(workdir, "rnn"), model.init(jax.random.key(config.seed)), model.apply,
        steps=config.steps, seed=config.seed, batch_size=config.batch_size,
        length=config.train_length, optimizer=factory.from_config(config),
        log_every=config.log_every, checkpoint_every=config.checkpoint_every or None,
        keep=config.keep_checkpoints, max_bad_steps=config.max_bad_steps,
        progress=config.progress, on_log=cli.event_log(config, _subdir(workdir, "rnn")).log)
    return {"cell": model.cell.name, "hidden": config.hidden, "steps": config.steps,
            "final_train_loss": history[-1]["loss"],
            "accuracy": {L: accuracy(model.apply, state.params, eval_key, L,
                                     config.eval_sequences) for L in test_lengths},
            "unit_functions": handset.unit_functions(model.cell, state.params["cell"], eval_key)}


def train_and_measure_lecture(config: Config, workdir: str | None, eval_key: jax.Array,
                              test_lengths: list[int]) -> tuple[dict, dict[str, Any]]:
    """Model 2: the lecture's architecture from several seeds; the best one measured."""
    params, member_losses = train_lecture_networks(
        _subdir(workdir, "lecture"), seeds=config.lecture_seeds, steps=config.lecture_steps,
        seed=config.seed, batch_size=config.batch_size, length=config.train_length,
        learning_rate=0.05, log_every=config.log_every)
    return params, {
        "seeds": config.lecture_seeds, "member_final_losses": member_losses,
        "accuracy": {L: accuracy(lecture_logits, params, eval_key, L, config.eval_sequences)
                     for L in test_lengths},
        "truth_tables": handset.truth_tables(params),
        "canonical_truth_tables": handset.truth_tables(handset.canonical_parity_params(params)),
        "hand_set_truth_tables": handset.truth_tables(handset.parity_network().params),
        "weights": jax.tree.map(lambda x: np.asarray(x).tolist(), params)}


def train_and_measure_window(config: Config, workdir: str | None, eval_key: jax.Array,
                             test_lengths: list[int]) -> dict[str, Any]:
    """Model 3: the feed-forward network on a window of the last k inputs."""
    k = config.window or config.train_length
    mlp_fn = functools.partial(mlp_logits, k)
    state, history = train_model(
        _subdir(workdir, "window"), init_mlp(jax.random.key(config.seed + 1), k,
                                             config.window_hidden),
        mlp_fn, steps=config.window_steps, seed=config.seed, batch_size=config.batch_size,
        length=config.train_length, optimizer=factory.make("adam", 3e-3),
        log_every=config.log_every, on_log=cli.event_log(config, _subdir(workdir, "window")).log)
    return {"window": k, "final_train_loss": history[-1]["loss"],
            "accuracy": {L: accuracy(mlp_fn, state.params, eval_key, L, config.eval_sequences,
                                     split=k) for L in test_lengths}}


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """Train the models of ``config.models`` and measure them; print the table; write
    ``results.json`` (and each model's ``metrics.jsonl`` in a subdirectory) into ``workdir``."""
    cli.validate(config)
    with cli.workdir_session(workdir, config):
        length = config.train_length
        test_lengths = [length] + [length * f for f in config.length_factors]
        eval_key = jax.random.fold_in(jax.random.key(config.seed), 0xE7A1)  # held-out stream
        results: dict[str, Any] = {"train_length": length, "test_lengths": test_lengths,
                                   "device": device.summary()}
        lecture_params = None
        if "rnn" in config.models:
            results["rnn"] = train_and_measure_rnn(config, workdir, eval_key, test_lengths)
        if "lecture" in config.models:
            lecture_params, results["lecture"] = train_and_measure_lecture(
                config, workdir, eval_key, test_lengths)
        if "window" in config.models:
            results["window"] = train_and_measure_window(config, workdir, eval_key, test_lengths)
        print(report(results, lecture_params))
        if workdir:
            checkpoint.save_json(workdir, "results", results)
    return results


def report(results: dict[str, Any], lecture_params: dict | None = None) -> str:
    """The human-readable summary of :func:`run`'s results."""
    lines = [f"Running parity on {results.get('device', '?')}, trained on length "
             f"{results['train_length']}; held-out accuracy (per step / whole sequences):",
             f"{'model':34s}" + "".join(f"{'T=' + str(L):>18s}" for L in results["test_lengths"])]
    names = {"rnn": lambda r: f"RNN {r['cell']}, H={r['hidden']}",
             "lecture": lambda r: "lecture architecture (2+1 units)",
             "window": lambda r: f"feed-forward, window {r['window']}"}
    for model, label in names.items():
        if model not in results:
            continue
        accs = results[model]["accuracy"]
        lines.append(f"{label(results[model]):34s}" + "".join(
            f"{accs[L]['step']:>10.4f} /{accs[L]['sequence']:6.3f}" for L in results["test_lengths"]))
    long = results["test_lengths"][-1]
    if "window" in results:
        w = results["window"]
        lines.append(f"feed-forward at T={long}: per-step accuracy on the first {w['window']} "
                     f"steps {w['accuracy'][long]['early']:.3f}, on the steps beyond its window "
                     f"{w['accuracy'][long]['late']:.3f} (chance: 0.5)")
    if "rnn" in results:
        lines.append(f"RNN hidden units as functions of (previous parity, input): "
                     f"{results['rnn']['unit_functions']}")
    if "lecture" in results:
        lec = results["lecture"]
        lines.append(f"Lecture architecture, best of {lec['seeds']} seeds (final losses "
                     + ", ".join(f"{x:.3g}" for x in lec["member_final_losses"]) + ")")
        lines.append(f"  learned truth tables:  {lec['truth_tables']}")
        lines.append(f"  the same, NAND/NOR units negated and AND first (an equivalent network): "
                     f"{lec['canonical_truth_tables']}")
        lines.append(f"  hand-set truth tables: {lec['hand_set_truth_tables']}")
        if lecture_params is not None:
            lines.append("  " + handset.parity_weight_table(lecture_params).replace("\n", "\n  "))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
