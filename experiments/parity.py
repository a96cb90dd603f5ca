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
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import flags as common
from rnnjax import cells, checkpoint, handset, losses, optimizers, recurrence, sweep, train
from rnnjax.data import synthetic

FLAGS = flags.FLAGS
common.define("integer", "train_length", 10, "Length of the training sequences.")
common.define("float", "steepness", 1.0, "beta in act(beta z) of a vanilla RNN cell. Steep units "
                   "saturate sooner (a discrete automaton generalises to any length); measured "
                   "over 3 seeds, beta=4 did not generalise more often than beta=1 (docs/training.md).")
common.define("list", "length_factors", ["10", "100"], "Test at these multiples of --train_length.")
common.define("integer", "eval_sequences", 1000, "Held-out sequences per test length.")
common.define("integer", "window", None, "Inputs the feed-forward baseline sees (default: "
                     "--train_length, so it can be perfect on training-length sequences).")
common.define("integer", "window_hidden", 128, "Hidden units per layer of the feed-forward baseline.")
common.define("integer", "window_steps", 1500, "Training steps of the feed-forward baseline.")
common.define("integer", "lecture_steps", 1500, "Training steps of the lecture-architecture network.")
common.define("integer", "lecture_seeds", 8, "Seeds of the lecture-architecture network, trained "
                     "at once with jax.vmap; the best is reported.")

common.define("list", "models", ["rnn", "lecture", "window"], "Which models to train: any of "
                  "rnn, lecture, window.")

PARITY = synthetic.get("parity")
MODELS = ("rnn", "lecture", "window")
LogitsFn = Callable[[Any, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- models

def steep(cell: cells.Cell, beta: float) -> cells.Cell:
    """``cell`` with its pre-activations multiplied by ``beta`` (vanilla cells).

    act(beta * (x W_xh + h W_hh + b)): the same function class, but the units
    saturate at smaller weights, and gradient descent finds saturated
    (automaton-like) solutions sooner.
    """
    if beta == 1.0:
        return cell
    if not cell.name.startswith("vanilla"):
        raise ValueError(f"--steepness applies to vanilla cells (tanh, logistic, ...), not {cell.name}")

    def scaled(p: dict) -> dict:
        # beta * (x W_xh + h W_hh + b_h) == x (beta W_xh) + h (beta W_hh) + beta b_h
        return {k: beta * v if k in ("W_xh", "W_hh", "b_h") else v for k, v in p.items()}

    base_unroll = cell.unroll
    return cell._replace(
        name=f"{cell.name}*{beta:g}",
        project=lambda p, xs: cell.project(scaled(p), xs),
        recurrent_step=lambda p, h, xp: cell.recurrent_step(scaled(p), h, xp),
        # The cell's own (fused) unroll, if it has one, on the scaled weights.
        unroll=None if base_unroll is None else (
            lambda p, xs, **kw: base_unroll(scaled(p), xs, **kw)))


def init_rnn(key: jax.Array, cell: cells.Cell) -> dict:
    """Params of a cell with a 2-way softmax readout: {"cell", "W_hy" [H, 2], "b_y" [2]}."""
    k_cell, k_out = jax.random.split(key)
    return {"cell": cell.init(k_cell, 1),
            "W_hy": jax.random.normal(k_out, (cell.hidden_size, 2)) / np.sqrt(cell.hidden_size),
            "b_y": jnp.zeros(2)}


def rnn_logits(cell: cells.Cell, params: dict, xs: jax.Array) -> jax.Array:
    """xs [T, B, 1] bits -> logits [T, B, 2] of the running parity."""
    _, hs = recurrence.unroll(cell, params["cell"], xs)
    return hs @ params["W_hy"] + params["b_y"]


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
                clip_norm: float | None, log_every: int, checkpoint_every: int | None = None,
                keep: int = 2, max_bad_steps: int | None = 10,
                progress: bool = False) -> tuple[train.TrainState, list[dict]]:
    """Train ``params`` on parity of length ``length`` with the rnnjax loop."""
    state = train.init_state(params, optimizer, seed=seed)
    step_fn = train.make_train_step(classification_loss(logits_fn), optimizer,
                                    clip_norm=clip_norm, has_aux=True)
    return train.run(workdir, state, step_fn, parity_batch_fn(seed, batch_size, length),
                     steps=steps, log_every=log_every,
                     checkpoint_every=checkpoint_every if workdir else None, keep=keep,
                     max_bad_steps=max_bad_steps, progress=progress)


def train_lecture_networks(workdir: str | None, *, seeds: int, steps: int, seed: int,
                           batch_size: int, length: int, learning_rate: float,
                           log_every: int) -> tuple[dict, list[float]]:
    """Train ``seeds`` lecture-architecture networks at once (vmap); return the best.

    Returns (params of the best member, final train loss of every member).
    """
    optimizer = optimizers.make("adam", learning_rate)
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


# ----------------------------------------------------------------------------- probes

BOOLEAN_NAMES = {  # truth table over (a, b) = (0,0), (0,1), (1,0), (1,1)
    (0, 0, 0, 1): "AND", (0, 1, 1, 1): "OR", (0, 1, 1, 0): "XOR", (1, 1, 1, 0): "NAND",
    (1, 0, 0, 0): "NOR", (1, 0, 0, 1): "XNOR", (0, 0, 1, 1): "a", (0, 1, 0, 1): "b",
    (1, 1, 0, 0): "NOT a", (1, 0, 1, 0): "NOT b", (0, 0, 1, 0): "a AND NOT b",
    (0, 1, 0, 0): "b AND NOT a", (1, 0, 1, 1): "a OR NOT b", (1, 1, 0, 1): "b OR NOT a",
    (0, 0, 0, 0): "FALSE", (1, 1, 1, 1): "TRUE",
}


def lecture_truth_tables(params: dict) -> dict[str, str]:
    """Each unit of an output-feedback parity network as a boolean function.

    Hidden units are read as functions of (a, b) = (previous output, input);
    the output unit as a function of the two hidden units (a, b) = (h1, h2).
    A unit is "on" when its logistic (or threshold) output exceeds 0.5.
    """
    ab = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
    z_hidden = ab[:, 1:] @ params["W_xh"] + ab[:, :1] @ params["W_yh"] + params["b_h"]  # [4, 2]
    z_out = ab @ params["W_hy"] + params["b_y"]  # [4, 1]
    table = lambda z: BOOLEAN_NAMES[tuple(int(v) for v in np.asarray(z > 0))]
    return {"h1 (prev output, input)": table(z_hidden[:, 0]),
            "h2 (prev output, input)": table(z_hidden[:, 1]),
            "output (h1, h2)": table(z_out[:, 0])}


def negate_hidden_unit(params: dict, i: int) -> dict:
    """An equivalent output-feedback network with hidden unit ``i`` negated.

    With logistic (or threshold) units, act(-z) = 1 - act(z): flipping the
    signs of the unit's incoming weights and bias makes it compute NOT of what
    it computed; the output unit then sees 1 - h_i, which its weight -w and
    bias b + w undo exactly. So (NOR, AND -> NOR) is the same network as the
    lecture's (OR, AND -> "OR and not AND") up to this symmetry.
    """
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    for name in ("W_xh", "W_yh"):
        p[name][:, i] *= -1
    p["b_h"][i] *= -1
    p["b_y"] = p["b_y"] + p["W_hy"][i]
    p["W_hy"][i] *= -1
    return p


def canonical_lecture_params(params: dict) -> dict:
    """Learned lecture-network params mapped onto the hand-set network's form.

    Hidden units that compute NAND or NOR are negated (to AND or OR, see
    :func:`negate_hidden_unit`) and the two hidden units are ordered AND
    first, as in the lecture. The function computed does not change.
    """
    tables = lecture_truth_tables(params)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for i, key in enumerate(("h1 (prev output, input)", "h2 (prev output, input)")):
        if tables[key] in ("NAND", "NOR"):
            p = negate_hidden_unit(p, i)
    if lecture_truth_tables(p)["h2 (prev output, input)"] == "AND":
        p = {k: (v[..., ::-1] if k in ("W_xh", "W_yh", "b_h") else v[::-1] if k == "W_hy" else v)
             for k, v in p.items()}
    return p


def lecture_weight_table(learned: dict) -> str:
    """Hand-set and learned weights side by side, each unit scaled to unit norm.

    The learned network is first put in the hand-set one's form
    (:func:`canonical_lecture_params`: negated units flipped back, AND unit
    first). A threshold unit is unchanged by a positive scaling of its incoming
    weights and bias, so each unit's weights are compared after normalising;
    the last column is the cosine of the two.
    """
    hand = handset.parity_network().params
    learned = canonical_lecture_params(learned)

    def units(p):
        rows = {f"h{i + 1}": np.array([p["W_xh"][0, i], p["W_yh"][0, i], p["b_h"][i]])
                for i in range(2)}
        rows["y"] = np.array([p["W_hy"][0, 0], p["W_hy"][1, 0], p["b_y"][0]])
        return {k: v / np.linalg.norm(v) for k, v in rows.items()}, rows

    (h, _), (mine, raw) = units(hand), units(learned)
    fmt = lambda v: " ".join(f"{x:+6.2f}" for x in v)
    lines = ["weights: h1, h2 = [input, prev output, bias]; y = [h1, h2, bias]",
             "unit  hand-set (normalised)   learned (normalised)    cosine   learned (raw)"]
    for k in h:
        lines.append(f"{k:4s}  {fmt(h[k]):24s}{fmt(mine[k]):24s}{float(h[k] @ mine[k]):+.3f}"
                     f"    {fmt(raw[k])}")
    return "\n".join(lines)


def rnn_unit_functions(cell: cells.Cell, params: dict, key: jax.Array, length: int = 50,
                       num: int = 200, agreement: float = 0.99) -> dict[str, int]:
    """Behavioural probe: which boolean function of (previous parity, input) each unit computes.

    A hidden unit is read as "on" when h > 0 (tanh) or h > 0.5 (logistic).
    If on at least ``agreement`` of the visits to each of the four cases the
    unit agrees with one truth table, it computes that function; otherwise it
    is "mixed". Returns counts per function name.
    """
    batch = PARITY.generate(key, num, length)
    _, hs = recurrence.unroll(cell, params["cell"], batch.inputs)
    threshold = 0.5 if "logistic" in cell.name else 0.0
    on = np.asarray(hs > threshold)  # [T, B, H]
    bits = np.asarray(batch.inputs[..., 0]).astype(int)
    prev = np.concatenate([np.zeros((1, num), int), np.asarray(batch.targets)[:-1]], 0)
    counts: dict[str, int] = {}
    for unit in range(on.shape[-1]):
        table = []
        for a in (0, 1):
            for b in (0, 1):
                visits = on[(prev == a) & (bits == b), unit]
                frac = visits.mean() if visits.size else 0.5
                table.append(1 if frac >= agreement else 0 if frac <= 1 - agreement else None)
        name = BOOLEAN_NAMES[tuple(table)] if None not in table else "mixed"
        counts[name] = counts.get(name, 0) + 1
    return counts


# ----------------------------------------------------------------------------- main

def run_experiment(cfg: dict[str, Any], workdir: str | None, log: Callable[[str], None] = print
                   ) -> dict[str, Any]:
    """Train the models of ``cfg["models"]`` and measure them; returns the results dict."""
    length = cfg["train_length"]
    test_lengths = [length] + [length * f for f in cfg["length_factors"]]
    eval_key = jax.random.fold_in(jax.random.key(cfg["seed"]), 0xE7A1)  # held out: other stream
    results: dict[str, Any] = {"train_length": length, "test_lengths": test_lengths,
                               "device": common.device_summary()}

    models = cfg.get("models", MODELS)
    lecture_params = None
    if "rnn" in models:
        results["rnn"] = train_and_measure_rnn(cfg, workdir, eval_key, test_lengths)
    if "lecture" in models:
        lecture_params, results["lecture"] = train_and_measure_lecture(
            cfg, workdir, eval_key, test_lengths)
    if "window" in models:
        results["window"] = train_and_measure_window(cfg, workdir, eval_key, test_lengths)
    log(report(results, lecture_params))
    return results


def train_and_measure_rnn(cfg: dict[str, Any], workdir: str | None, eval_key: jax.Array,
                          test_lengths: list[int]) -> dict[str, Any]:
    """Model 1: the RNN of --cell/--hidden/--steepness, trained and tested."""
    length = cfg["train_length"]
    cell = steep(cells.by_name(cfg["cell"], cfg["hidden"]), cfg["steepness"])
    rnn_fn = functools.partial(rnn_logits, cell)
    optimizer = optimizers.make(cfg["optimizer"], cfg["learning_rate"], schedule=cfg["lr_schedule"],
                                steps=cfg["steps"], warmup_steps=cfg["warmup_steps"])
    state, history = train_model(
        _subdir(workdir, "rnn"), init_rnn(jax.random.key(cfg["seed"]), cell), rnn_fn,
        steps=cfg["steps"], seed=cfg["seed"], batch_size=cfg["batch_size"], length=length,
        optimizer=optimizer, clip_norm=cfg["clip_norm"], log_every=cfg["log_every"],
        checkpoint_every=cfg["checkpoint_every"] or None, keep=cfg["keep_checkpoints"],
        max_bad_steps=cfg["max_bad_steps"], progress=cfg["progress"])
    rnn_params = state.params
    return {"cell": cell.name, "hidden": cfg["hidden"], "steps": cfg["steps"],
            "final_train_loss": history[-1]["loss"],
            "accuracy": {L: accuracy(rnn_fn, rnn_params, eval_key, L, cfg["eval_sequences"])
                         for L in test_lengths},
            "unit_functions": rnn_unit_functions(cell, rnn_params, eval_key)}


def train_and_measure_lecture(cfg: dict[str, Any], workdir: str | None, eval_key: jax.Array,
                              test_lengths: list[int]) -> tuple[dict, dict[str, Any]]:
    """Model 2: the lecture's architecture from several seeds; the best one measured."""
    length = cfg["train_length"]
    lecture_params, member_losses = train_lecture_networks(
        _subdir(workdir, "lecture"), seeds=cfg["lecture_seeds"], steps=cfg["lecture_steps"],
        seed=cfg["seed"], batch_size=cfg["batch_size"], length=length, learning_rate=0.05,
        log_every=cfg["log_every"])
    return lecture_params, {
        "seeds": cfg["lecture_seeds"], "member_final_losses": member_losses,
        "accuracy": {L: accuracy(lecture_logits, lecture_params, eval_key, L, cfg["eval_sequences"])
                     for L in test_lengths},
        "truth_tables": lecture_truth_tables(lecture_params),
        "canonical_truth_tables": lecture_truth_tables(canonical_lecture_params(lecture_params)),
        "hand_set_truth_tables": lecture_truth_tables(handset.parity_network().params),
        "weights": jax.tree.map(lambda x: np.asarray(x).tolist(), lecture_params)}



def train_and_measure_window(cfg: dict[str, Any], workdir: str | None, eval_key: jax.Array,
                             test_lengths: list[int]) -> dict[str, Any]:
    """Model 3: the feed-forward network on a window of the last k inputs."""
    length = cfg["train_length"]
    k = cfg["window"] or length
    mlp_fn = functools.partial(mlp_logits, k)
    state, history = train_model(
        _subdir(workdir, "window"), init_mlp(jax.random.key(cfg["seed"] + 1), k, cfg["window_hidden"]),
        mlp_fn, steps=cfg["window_steps"], seed=cfg["seed"], batch_size=cfg["batch_size"],
        length=length, optimizer=optimizers.make("adam", 3e-3), clip_norm=None,
        log_every=cfg["log_every"])
    return {"window": k, "final_train_loss": history[-1]["loss"],
            "accuracy": {L: accuracy(mlp_fn, state.params, eval_key, L, cfg["eval_sequences"],
                                     split=k) for L in test_lengths}}


def report(results: dict[str, Any], lecture_params: dict | None = None) -> str:
    """The human-readable summary of :func:`run_experiment`'s results."""
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
            lines.append("  " + lecture_weight_table(lecture_params).replace("\n", "\n  "))
    return "\n".join(lines)


def config_from_flags() -> dict[str, Any]:
    """Validate every flag (common and parity-specific); return the config dict."""
    cfg = common.validate()
    common.check_positive_int("train_length", FLAGS.train_length)
    try:
        factors = [int(f) for f in FLAGS.length_factors]
    except ValueError:
        factors = [-1]
    if not factors or min(factors) < 1:
        raise app.UsageError(f"--length_factors={','.join(FLAGS.length_factors)!r} is invalid: "
                             "expected a comma-separated list of positive integers, e.g. 10,100.")
    for name in ("eval_sequences", "window_hidden", "window_steps", "lecture_steps", "lecture_seeds"):
        common.check_positive_int(name, FLAGS[name].value)
    if not FLAGS.models or set(FLAGS.models) - set(MODELS):
        raise app.UsageError(f"--models={','.join(FLAGS.models)!r} is invalid: accepted: a "
                             f"comma-separated subset of {', '.join(MODELS)}")
    if FLAGS.window is not None:
        common.check_positive_int("window", FLAGS.window)
    if not FLAGS.steepness > 0:
        raise app.UsageError(f"--steepness={FLAGS.steepness!r} is invalid: expected a positive number.")
    if FLAGS.steepness != 1.0 and FLAGS.cell not in ("tanh", "relu", "identity", "logistic", "irnn"):
        raise app.UsageError(f"--steepness={FLAGS.steepness} applies to vanilla cells only; with "
                             f"--cell={FLAGS.cell} set --steepness=1.")
    cfg.update(train_length=FLAGS.train_length, length_factors=factors,
               eval_sequences=FLAGS.eval_sequences, window=FLAGS.window,
               window_hidden=FLAGS.window_hidden, window_steps=FLAGS.window_steps,
               lecture_steps=FLAGS.lecture_steps, lecture_seeds=FLAGS.lecture_seeds,
               steepness=FLAGS.steepness, models=list(FLAGS.models))
    return cfg


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = config_from_flags()
    workdir = cfg["workdir"]
    if workdir:
        common.save_config(workdir, cfg)
    results = run_experiment(cfg, workdir)
    if workdir:
        checkpoint.save_json(workdir, "results", results)


if __name__ == "__main__":
    FLAGS.set_default("steps", 1000)
    FLAGS.set_default("batch_size", 64)
    FLAGS.set_default("learning_rate", 1e-2)
    FLAGS.set_default("hidden", 16)
    FLAGS.set_default("clip_norm", 1.0)
    FLAGS.set_default("log_every", 100)
    FLAGS.set_default("checkpoint_every", 500)
    app.run(main)
