"""The long-term-dependency table: problems x lengths x methods x seeds, resumable.

Each row trains one network on one problem of :mod:`rnnjax.data.synthetic` (the
papers' definitions) at one nominal length T with one method, until it is solved
(under 1% wrong on 10,000 fresh sequences, Pascanu et al. 2013) or its budget
(``--max_updates`` updates or ``--max_minutes`` of training time) is spent, and
appends one JSON line to ``--results``. Rows already in that file (same problem,
T, method, seed and ``--tag``) are skipped, so the table fills across many runs.

    python -m experiments.long_memory_table --results=docs/long_memory_table.jsonl \
        --problems=addition,temporal_order --lengths=100,200 --methods=hf_sd --seeds=0,1,2

Methods (the model is the cell unrolled over the inputs with a linear readout at
every step; the task's mask scores the steps that matter):

* ``hf_sd``: Hessian-free with structural damping, Martens & Sutskever (2011)'s
  protocol (:func:`rnnjax.optim.hessian_free.martens2011`): 100 tanh units, sparse
  init (15 incoming weights per unit, W_hh at spectral radius 1.1), μ = 1/30, up to ``--cg_iters`` CG steps,
  the gradient on ``--hf_gradient_batch`` fresh sequences, curvature and
  backtracking/line search on separate ``--hf_curvature_batch`` batches;
* ``hf``: the same without structural damping (μ = 0);
* ``sgd_cr``: Pascanu et al. (2013)'s SGD-CR: 50 tanh units, sparse W_hh scaled to
  spectral radius 0.95, SGD at rate 0.01 on batches of 20, clipping at 1, the
  regulariser Ω with weight ``--omega`` (:mod:`rnnjax.regularizers`);
* ``adam_clip``: 100 tanh units (orthogonal W_hh), Adam 1e-3, clipping at 1;
* ``lstm_adam``: a 100-unit LSTM, Adam 1e-3, clipping at 1.

Training time excludes compilation and the periodic checks (every ``--eval_every``
updates, or every 5% of the updates made so far when that is more, on 1,000 fresh
sequences; the 10,000-sequence test runs when that check passes). Under Pascanu et
al.'s stopping rule (``--stop_error_rate=0``) the checks stay every ``--eval_every``
updates, as in their code: on a noisy trajectory a zero-error network can last only a
few hundred updates; with ``--min_train_length`` that rule's test also spans the
training lengths (``--test_sequences`` spread over ten lengths from the shortest to T),
as their validation does, and the row adds ``train_lengths_error_rate``. ``--generalize_to``
also scores a solved model at longer lengths (``generalization``; split by the answer's
class in ``generalization_by_class`` for the problems answered once, with few classes).

With ``--vmap_seeds`` the seeds of a cell train together, one vmapped program (a
solved network stops updating, the others go on), so their budget is the program's:
each row's ``train_seconds`` is the program's time when that seed was solved, and
``seeds_in_program`` says how many shared it. (On a 2-core CPU that was slower than
one seed at a time, which is the default: ``docs/results.md``.)
With ``--workdir`` a program's state is checkpointed as it trains (a rerun resumes it)
and its trained networks are kept in ``workdir/networks/<program>/`` (an orbax
checkpoint; a program stacks its seeds' parameters on a leading axis, one seed too):
``rnnjax.checkpoint.restore(path, template)`` brings them back for further tests.
``--min_train_length=50`` with ``--lengths=200`` trains on one length per batch drawn
from [50, 200] (Pascanu et al.'s protocol; batches are padded to T, which leaves
a causal network's outputs and the loss unchanged) and tests at T.
``--summary``, ``--plot`` and ``--plot_generalization`` draw on
:mod:`experiments.long_memory_report`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app

from experiments import cli
from experiments import long_memory_report
from rnnjax import cells, checkpoint, initializers, regularizers, sweep, train
from rnnjax.data import synthetic
from rnnjax.models import hf as hf_adapter
from rnnjax.models import tagger
from rnnjax.optim import hessian_free

# First-order variable-length batches are padded to the next multiple of this many steps
# (one program each): [50, 200] then costs about 0.7 of padding every batch to 200.
LENGTH_BUCKET = 25


def _each_in(accepted: tuple) -> cli.Check:
    def check(value: Any) -> str | None:
        return None if value in accepted else "accepted values are " + ", ".join(map(str, accepted))
    return check


def _at_most_success(value: float) -> str | None:
    ok = 0 <= value <= synthetic.SUCCESS_ERROR_RATE
    return None if ok else f"expected a rate in [0, {synthetic.SUCCESS_ERROR_RATE}]"


@dataclasses.dataclass(frozen=True)
class Config:
    """The table's grid and the budget of every row."""

    results: str = cli.field("docs/long_memory_table.jsonl",
                             "JSONL file the rows are appended to (rows already there are skipped).")
    problems: tuple[str, ...] = cli.field(synthetic.PAPER_TASKS, "Problems (comma-separated).",
                                          check=_each_in(synthetic.PAPER_TASKS))
    lengths: tuple[int, ...] = cli.field((50, 100, 200), "Nominal lengths T (comma-separated).",
                                         check=cli.at_least(10))
    methods: tuple[str, ...] = cli.field(
        long_memory_report.METHODS, "Methods (comma-separated).",
        check=_each_in(long_memory_report.METHODS))
    seeds: tuple[int, ...] = cli.field((0, 1, 2), "Seeds (comma-separated).", check=cli.non_negative)
    tag: str = cli.field("", "A label kept in each row and in the resume key (a different "
                         "budget or protocol gets its own rows).")
    max_minutes: float = cli.field(60.0, "Training-time budget per program (minutes): per "
                                   "row, or per cell with --vmap_seeds.",
                                   check=cli.positive)
    max_updates: int = cli.field(100_000, "Update budget per row.", check=cli.positive)
    eval_every: int = cli.field(20, "Check the error rate every N updates of the first-order "
                                "methods (HF: every max(1, N // 20) updates), or every 5% of "
                                "the updates so far when that is more (not with "
                                "--stop_error_rate=0).",
                                check=cli.positive)
    hf_gradient_batch: int = cli.field(10_000, "HF: fresh sequences for each gradient.",
                                       check=cli.positive)
    hf_curvature_batch: int = cli.field(1_000, "HF: fresh sequences for the curvature products "
                                        "and, separately, for backtracking and line search.",
                                        check=cli.positive)
    hf_score_on: str = cli.field("separate", "HF: where backtracking, rho and the line search "
                                 "score the loss: a separate fresh batch (the paper) or the "
                                 "gradient batch.", choices=("separate", "gradient"))
    hf_input_scale: float = cli.field(0.1, "HF: standard deviation of the sparse input "
                                      "weights (1 left HF on a plateau at T = 100).",
                                      check=cli.positive)
    cg_iters: int = cli.field(300, "HF: cap on CG iterations per update.", check=cli.positive)
    hf_lambda: float = cli.field(1.0, "HF: initial damping lambda.", check=cli.positive)
    hidden: int = cli.field(100, "Hidden units of hf, hf_sd, adam_clip and lstm_adam "
                            "(sgd_cr: --sgd_cr_hidden).", check=cli.positive)
    sgd_cr_hidden: int = cli.field(50, "SGD-CR: hidden units.", check=cli.positive)
    omega: float = cli.field(2.0, "SGD-CR: weight alpha of the regulariser Omega.",
                             check=cli.non_negative)
    sgd_cr_init: str = cli.field(
        "smart_tanh", "SGD-CR: Pascanu et al.'s initialisation: smart_tanh (input and readout "
        "weights N(0, 0.01^2), sparse W_hh at spectral radius 0.95) or basic_tanh (every "
        "weight N(0, 0.1^2), dense; the paper's 50-200 model that generalised to 5,000).",
        choices=("smart_tanh", "basic_tanh"))
    first_order_batch: int = cli.field(20, "Batch of sgd_cr, adam_clip and lstm_adam.",
                                       check=cli.positive)
    generalize_to: tuple[int, ...] = cli.field((), "Also score a solved model at these lengths.",
                                               check=cli.at_least(10))
    min_train_length: int | None = cli.field(
        None, "Train on one length per batch drawn uniformly from [this, T] (Pascanu et al. "
        "2013: 50 with T = 200), batches padded to T; none: every batch at T.",
        check=cli.at_least(10))
    checkpoint_minutes: float = cli.field(
        5.0, "With --workdir: save each program's state every N minutes of training into "
        "WORKDIR/programs/ (a rerun resumes it; removed once its rows are written).",
        check=cli.positive)
    progress: bool = cli.field(True, "Show a progress bar for each program (its training-time "
                               "budget, updates and error rates).")
    vmap_seeds: bool = cli.field(False, "Train the seeds of a cell together in one vmapped "
                                 "program (each stops updating once solved); on a 2-core "
                                 "CPU it was 0.57-1.0x as fast as one by one.")
    test_sequences: int = cli.field(synthetic.NUM_TEST_SEQUENCES, "Fresh sequences of the "
                                    "success test.", check=cli.positive)
    stop_error_rate: float = cli.field(
        synthetic.SUCCESS_ERROR_RATE, "Stop training a network once at most this fraction of "
        "the --test_sequences is wrong (it counts as solved under 1%); 0 is Pascanu et al.'s "
        "rule: train until no test sequence is wrong (with --min_train_length, none at T and "
        "none across the training lengths).", check=_at_most_success)
    only_tags: tuple[str, ...] = cli.field((), "--summary and the plots: only the rows with "
                                           "these tags (default: every row).")
    summary: bool = cli.field(False, "Only print the rows in --results as markdown: seeds "
                              "solved per method, length and problem, then one line per cell "
                              "(seeds pooled); train nothing.")
    plot: str | None = cli.field(None, "Only draw the success-against-T plot of the rows in "
                                 "--results into this PNG (no training).")
    plot_generalization: str | None = cli.field(
        None, "Only draw the error rate against test length of the rows in --results that "
        "were scored with --generalize_to into this PNG (no training).")

    def check(self) -> None:
        if self.min_train_length is not None and self.min_train_length > min(self.lengths):
            raise cli.ConfigError("min_train_length", self.min_train_length, "expected at most "
                                  f"the shortest of --lengths ({min(self.lengths)})")
        if self.hf_curvature_batch > self.hf_gradient_batch:
            raise cli.ConfigError("hf_curvature_batch", self.hf_curvature_batch,
                                  f"expected at most hf_gradient_batch={self.hf_gradient_batch}")


def machine() -> str:
    """CPU model and core count (or the accelerator), for the rows."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.device_kind} ({dev.platform})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} core(s) usable"


# ----------------------------------------------------------------------------- models

def hf_protocol(method: str, config: Config) -> hessian_free.Protocol:
    """Martens & Sutskever's protocol with the table's settings (``hf``: μ = 0)."""
    return hessian_free.martens2011(
        structural_damping=1.0 / 30.0 if method == "hf_sd" else 0.0,
        max_cg_iters=config.cg_iters, initial_damping=config.hf_lambda,
        gradient_batch=config.hf_gradient_batch, curvature_batch=config.hf_curvature_batch,
        eval_batch=config.hf_curvature_batch, hidden=config.hidden,
        input_scale=config.hf_input_scale)


def build(method: str, task: synthetic.Task, config: Config, key: jax.Array):
    """The tagger, its params and ``net(params, batch) -> (outputs [T', B, O], hs [T', B, H])``."""
    if method in ("hf", "hf_sd"):
        cell = hf_adapter.protocol_cell(hf_protocol(method, config))
    elif method == "sgd_cr" and config.sgd_cr_init == "basic_tanh":  # every weight N(0, 0.1²)
        cell = cells.vanilla(config.sgd_cr_hidden, "tanh",
                             recurrent_init=initializers.normal(0.1),
                             input_init=initializers.normal(0.1))
    elif method == "sgd_cr":  # Pascanu's smart_tanh: N(0, 0.01²) weights, sparse W_hh at 0.95
        cell = cells.vanilla(config.sgd_cr_hidden, "tanh",
                             recurrent_init=initializers.sparse(15, 0.01, radius=0.95),
                             input_init=initializers.normal(0.01))
    elif method == "adam_clip":
        cell = cells.vanilla(config.hidden, "tanh")
    else:
        cell = cells.lstm(config.hidden)
    # A small readout (Pascanu's N(0, 0.01²)) for every method but basic_tanh's N(0, 0.1²):
    # the sparse N(0, 1) readout starts HF at a squared error of ~5 and wastes its first updates.
    basic = method == "sgd_cr" and config.sgd_cr_init == "basic_tanh"
    model = tagger.make(cell, task.input_size, task.output_size,
                        readout_scale=0.1 if basic else 0.01)

    def net(p, batch):
        return model.outputs_and_hiddens(p, batch.inputs)

    return model, model.init(key), net


def _first_order_step(method: str, task: synthetic.Task, model: tagger.Tagger, net,
                      config: Config):
    """The optimizer and ``step(state, batch) -> (state, metrics)`` of one network."""
    rate = 0.01 if method == "sgd_cr" else 1e-3
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.sgd(rate) if method == "sgd_cr" else optax.adam(rate))

    def loss_fn(p, batch, key):
        del key
        outputs, hs = net(p, batch)
        if method != "sgd_cr" or config.omega == 0:
            return task.loss(outputs, batch)
        readout = lambda h: task.loss(model.readout(p, h), batch)
        loss, om = regularizers.loss_and_omega(readout, p["cell"]["W_hh"], hs, squared=True)
        return loss + config.omega * om

    return opt, train.make_train_step(loss_fn, opt)


# ----------------------------------------------------------------------------- data

def _keys(seeds: tuple[int, ...], stream: int) -> jax.Array:
    """[N] keys: stream ``stream`` of each seed (0 init, 1 training data, 2 tests)."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), stream))(jnp.asarray(seeds))


class Lengths:
    """The training length of each update: T, or Pascanu et al.'s one length per
    batch uniform in [``min_train_length``, T] (a fixed draw per cell, so a rerun
    sees the same lengths). A batch of length L is right-padded to :meth:`padded`
    steps: T's array length, or with ``bucket`` the next multiple of ``bucket`` steps
    (a program per bucket, so that short batches cost less than T's)."""

    def __init__(self, task: synthetic.Task, T: int, lowest: int | None, seed: int,
                 bucket: int | None = None):
        self.task, self.T, self.steps, self.bucket = task, T, task.steps(T), bucket
        self.draws = None if lowest is None else np.random.default_rng([seed, T]).integers(
            lowest, T + 1, size=4096)

    def __call__(self, update: int) -> int:
        return self.T if self.draws is None else int(self.draws[update % len(self.draws)])

    def padded(self, L: int) -> int:
        """Array length of a training batch of length L."""
        if self.draws is None or self.bucket is None:
            return self.steps
        return min(self.steps, -(-self.task.steps(L) // self.bucket) * self.bucket)

    def distinct(self) -> list[int]:
        """The training lengths that occur, ascending."""
        return [self.T] if self.draws is None else sorted(set(self.draws.tolist()))

    def buckets(self) -> dict[int, int]:
        """{array length: the longest training length padded to it}."""
        return {self.padded(L): L for L in self.distinct()}

    def warm_up(self, draw, keys) -> None:
        """Compile ``draw(keys, update, L)`` for every length before the clock starts
        (once per array length for a task whose generator takes a traced length)."""
        for L in self.distinct():
            jax.block_until_ready(draw(keys, 0, L))


@functools.lru_cache(maxsize=None)
def _batches(task: synthetic.Task, batch_size: int, steps: int):
    """``draw(keys [N], update, L) -> Batch`` with leaves [N, steps, batch_size, ...]:
    one fresh batch of length L per network, padded to ``steps``; one program for
    every L where the task draws traced lengths (the paper problems), else one per L."""

    def draw(keys, update, L):
        one = lambda k: task.generate_padded(jax.random.fold_in(k, update), batch_size, L, steps)
        return jax.vmap(one)(keys)

    if task.padded_fn is not None:
        traced = jax.jit(draw)
        return lambda keys, update, L: traced(keys, update, np.int32(L))
    at = functools.lru_cache(maxsize=None)(
        lambda L: jax.jit(lambda keys, update: draw(keys, update, L)))
    return lambda keys, update, L: at(L)(keys, update)


def _predictor(net):
    """``predict(params [N, ...], inputs [N, T, b, D]) -> outputs [N, T, b, O]``, jitted."""
    return jax.jit(jax.vmap(lambda p, xs: net(p, synthetic.Batch(xs, None, None))[0]))


def _error_rates(task: synthetic.Task, predict, params, keys: jax.Array, L: int,
                 n: int) -> np.ndarray:
    """[N] fraction of ``n`` fresh length-L sequences each network gets wrong
    (``predict`` from :func:`_predictor`), in chunks whose hidden states stay < ~1 GB."""
    return synthetic.error_rates(task, lambda xs: predict(params, xs), keys, L,
                                 num_sequences=n, batch_size=_chunk(task, L, n))


def _chunk(task: synthetic.Task, L: int, n: int) -> int:
    """Sequences per call when testing at length L: hidden states stay < ~1 GB."""
    return max(1, min(n, 1000, 2_000_000 // task.steps(L)))


def _zero_error_rule(config: Config) -> bool:
    """Whether networks train on past a solve, towards ``--stop_error_rate`` (0: Pascanu's
    rule, no test sequence wrong)."""
    return config.stop_error_rate < synthetic.SUCCESS_ERROR_RATE


def _across_lengths(config: Config) -> bool:
    """Whether a network's full test also spans its training lengths: Pascanu et al.'s
    zero-error rule on variable lengths (their validation draws from the training range;
    a network with no errors at T alone can fail at shorter training lengths)."""
    return config.min_train_length is not None and _zero_error_rule(config)


def _training_lengths_rates(task, predict, params, keys: jax.Array, T: int, config: Config,
                            n: int) -> np.ndarray:
    """[N] fraction wrong of ``n`` fresh sequences spread over ten lengths evenly spaced
    in [``--min_train_length``, T] (each length its own key stream)."""
    lengths = np.unique(np.linspace(config.min_train_length, T, 10).round().astype(int))
    each = -(-n // len(lengths))
    return np.mean([_error_rates(task, predict, params,
                                 jax.vmap(lambda k: jax.random.fold_in(k, int(L)))(keys), int(L),
                                 each) for L in lengths], axis=0)


def _test(task, predict, params, keys: jax.Array, T: int, config: Config, n: int) -> np.ndarray:
    """[N, 2] each network's test: the fraction of ``n`` fresh sequences at T it gets
    wrong, and with :func:`_across_lengths` of ``n`` more over its training lengths
    (else NaN); its full test is the worse of the two (:func:`_full`)."""
    at_T = _error_rates(task, predict, params, keys, T, n)
    across = (_training_lengths_rates(task, predict, params, keys, T, config, n)
              if _across_lengths(config) else np.full_like(at_T, np.nan))
    return np.stack([at_T, across], axis=-1)


def _full(parts: np.ndarray) -> np.ndarray:
    """The full test's rate from :func:`_test`'s parts ``[..., 2]``: the worse part."""
    return np.nanmax(parts, axis=-1)


# ----------------------------------------------------------------------------- rows

class _Saver:
    """A program's state every ``--checkpoint_minutes`` of training, in
    ``workdir/programs/<name>`` (an orbax checkpoint with a fingerprint; NaN
    is stored as -1, which no rate or loss can be); a rerun resumes from it. None
    workdir: nothing saved. Removed by :meth:`finish` once the rows are written."""

    def __init__(self, workdir: str | None, name: str, config: Config):
        name = re.sub(r"[^A-Za-z0-9_.=-]", "_", name)
        self.path = None if workdir is None else os.path.join(workdir, "programs", name)
        self.networks = None if workdir is None else os.path.join(workdir, "networks", name)
        self.every, self.saved_at = 60 * config.checkpoint_minutes, 0.0

    NAN_KEYS = ("rates", "loss", "best_parts")  # entries that may hold NaN

    @classmethod
    def _encode(cls, tree: dict) -> dict:
        return {k: np.nan_to_num(v, nan=-1.0) if k in cls.NAN_KEYS else v
                for k, v in tree.items()}

    def restore(self, template: dict, added: tuple[str, ...] = ()) -> dict | None:
        """The saved state, or None; a state saved before some of the ``added`` keys
        (in the order they joined the snapshot) comes back without those (the caller
        fills them in)."""
        if self.path is None or not checkpoint.all_steps(self.path):
            return None
        for k in range(len(added), -1, -1):  # the full snapshot, then each older one
            older = {name: v for name, v in template.items() if name not in added[k:]}
            try:
                saved = checkpoint.restore(self.path, self._encode(older))
                break
            except ValueError:  # a different structure
                if k == 0:
                    raise
        for name in self.NAN_KEYS:
            if name in saved:
                saved[name] = np.where(np.asarray(saved[name]) == -1.0, np.nan, saved[name])
        self.saved_at = float(saved["clock"][1])
        print(f"resuming {self.path} at update {int(saved['clock'][0])} "
              f"({self.saved_at:.0f} s trained)", file=sys.stderr, flush=True)
        return saved

    def __call__(self, tree: dict, train_time: float) -> None:
        if self.path is None or train_time - self.saved_at < self.every:
            return
        mngr = checkpoint.manager(self.path, keep=1)
        try:
            checkpoint.save(mngr, int(tree["clock"][0]), self._encode(tree))
            mngr.wait_until_finished()
        finally:
            mngr.close()
        self.saved_at = train_time

    def keep(self, params) -> None:
        """Save the trained parameters in ``workdir/networks/<program>`` (a new step
        beside any earlier run's: nothing is overwritten)."""
        if self.networks is None:
            return
        step = max(checkpoint.all_steps(self.networks), default=-1) + 1
        mngr = checkpoint.manager(self.networks, keep=None)
        try:
            checkpoint.save(mngr, step, params)
            mngr.wait_until_finished()
        finally:
            mngr.close()
        print(f"trained networks in {self.networks} (step {step})", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.path is not None and os.path.isdir(self.path):
            shutil.rmtree(self.path)


class _Best:
    """Each network's best 10,000-sequence test so far, when it was, and its params
    (leaves ``[n, ...]``): training past a solve (``--stop_error_rate=0``) can lose it
    again, and the row reports the best test and keeps that network."""

    # its entries in a program's snapshot; best_parts: the best test's parts (_test)
    KEYS = ("best", "best_rate", "best_at", "best_parts")

    def __init__(self, params):
        n = len(jax.tree.leaves(params)[0])
        self.params, self.at = params, np.zeros(n, np.int64)
        self.parts = np.full((n, 2), np.nan)  # [at T, across the lengths]; NaN: not tested

    def state(self) -> dict:
        return dict(best=self.params, best_rate=self.rate, best_at=self.at,
                    best_parts=self.parts)

    def load(self, saved: dict) -> None:
        """From a snapshot (one saved before these keys existed leaves them as they are)."""
        self.params, self.at = saved.get("best", self.params), saved.get("best_at", self.at)
        if "best_parts" in saved:
            self.parts = np.array(saved["best_parts"])
        elif "best_rate" in saved:  # saved before the parts were: the full test stands for T
            rate = np.asarray(saved["best_rate"], np.float64)
            self.parts = np.stack([np.where(rate <= 1.0, rate, np.nan),
                                   np.full_like(rate, np.nan)], -1)

    def saw(self, i: int, parts: np.ndarray, updates: int, params) -> None:
        """Network ``i`` (of ``params``) had the test ``parts`` (:func:`_test`'s ``[2]``)
        after ``updates``."""
        if _full(parts) < self.rate[i]:
            self.at[i], self.parts[i] = updates, parts
            self.params = jax.tree.map(lambda b, x: b.at[i].set(x[i]), self.params, params)

    @property
    def tested(self) -> np.ndarray:
        """[n] whether each network had a full test."""
        return ~np.isnan(self.parts[:, 0])

    @property
    def rate(self) -> np.ndarray:
        """[n] each network's best full test (2.0, worse than any, before its first)."""
        tested = self.tested
        return np.where(tested, _full(np.where(tested[:, None], self.parts, 0.0)), 2.0)

    def kept(self, params):
        """Each network's params at its best test, else ``params`` (its last state)."""
        tested = self.tested
        return jax.tree.map(lambda b, x: jnp.where(tested.reshape((-1,) + (1,) * (x.ndim - 1)),
                                                   b, x), self.params, params)

    def rates(self, last: np.ndarray) -> np.ndarray:
        """[n] each network's reported error rate: its best test's rate at T, else its
        ``last`` check."""
        return np.where(self.tested, self.parts[:, 0], last)

    @property
    def across(self) -> np.ndarray:
        """[n] each best test's rate over the training lengths (NaN: not so tested)."""
        return self.parts[:, 1]

    def fields(self, i: int, updates: int, last: float) -> dict:
        """Row fields of a network that trained on past its best test."""
        if self.tested[i] and self.at[i] != updates:
            return dict(best_updates=int(self.at[i]), last_error_rate=float(last))
        return {}


class _Progress:
    """A bar over a program's training-time budget (seconds), with its updates, the
    last check's error rate of each network and a note (HF: λ and ρ); silent with
    ``--noprogress``."""

    def __init__(self, config: Config, label: str):
        self.bar, self.shown = None, 0.0
        if config.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=round(60 * config.max_minutes), desc=label, unit="s",
                            dynamic_ncols=True, leave=False)

    def __call__(self, train_time: float, updates: int, rates, note: str = "") -> None:
        if self.bar is None:
            return
        self.bar.update(min(round(train_time), self.bar.total) - self.shown)
        self.shown = min(round(train_time), self.bar.total)
        wrong = "/".join(f"{100 * r:.1f}%" for r in np.atleast_1d(rates))
        self.bar.set_postfix_str(f"{updates} updates, wrong {wrong}{note}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _program(problem: str, T: int, method: str, seeds: tuple[int, ...],
             config: Config, workdir: str | None) -> tuple[_Progress, _Saver]:
    """The progress bar and the saver of the program training ``seeds`` in one cell."""
    seeds_text = ",".join(map(str, seeds))
    progress = _Progress(config, f"{problem} T={T} {method} seed {seeds_text}")
    saver = _Saver(workdir, f"{problem}-T{T}-{method}-seeds{seeds_text}-{config.tag}"
                   f"-min{config.min_train_length}", config)
    return progress, saver


def _row(problem: str, T: int, method: str, seed: int, config: Config, first_solved: int,
         **fields) -> dict:
    """A row; ``first_solved`` (updates at the first solve) is kept when a solved network
    trained on towards a lower ``--stop_error_rate``."""
    row: dict[str, Any] = dict(problem=problem, T=T, method=method, seed=seed, tag=config.tag)
    if config.min_train_length is not None:
        row["train_lengths"] = [config.min_train_length, T]
    row.update(fields)
    if _across_lengths(config):  # the zero-error test also spanned the training lengths
        row["budget"] = dict(row["budget"], across_lengths=True)
    if row["solved"] and _zero_error_rule(config):
        row["first_solved_updates"] = int(first_solved)
    row.update(machine=machine(), date=time.strftime("%Y-%m-%d", time.gmtime()))
    return row


# problems whose rows also split the generalisation errors by the answer's class
MAX_CLASSES_SPLIT = 8


def _generalization(task, predict, params, keys, config: Config) -> list[dict[str, dict]]:
    """Per network, row fields: ``generalization``, its error rate at each
    ``--generalize_to`` length, and for a problem answered by one of at most
    :data:`MAX_CLASSES_SPLIT` classes at its last step ``generalization_by_class``, the
    rate among the sequences of each answer (None: none drawn), on the same sequences."""
    split = (task.kind == "classification" and task.output_size <= MAX_CLASSES_SPLIT
             and synthetic.answered_once(task))
    fields = [dict(generalization={}, **({"generalization_by_class": {}} if split else {}))
              for _ in range(len(keys))]
    for L in config.generalize_to:
        if split:
            rates, by_class = synthetic.error_rates_by_class(
                task, lambda xs: predict(params, xs), keys, L, num_sequences=config.test_sequences,
                batch_size=_chunk(task, L, config.test_sequences))
        else:
            rates = _error_rates(task, predict, params, keys, L, config.test_sequences)
        for i, f in enumerate(fields):
            f["generalization"][str(L)] = float(rates[i])
            if split:
                f["generalization_by_class"][str(L)] = [
                    None if np.isnan(r) else float(r) for r in by_class[i]]
    return fields


def _masked(step_fn):
    """``step(state, batch, active)``: ``step_fn``'s update where ``active``, else the
    state as it was (a solved network of a vmapped program stops updating)."""

    def step(state, batch, active):
        new, metrics = step_fn(state, batch)
        keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(active, a, b), n, o)
        return new._replace(step=keep(new.step, state.step), params=keep(new.params, state.params),
                            opt_state=keep(new.opt_state, state.opt_state)), metrics
    return step


@dataclasses.dataclass(frozen=True)
class _Program:
    """What :func:`_train_program` needs to know of one program beside its states and
    step: the cell and seeds, the task, ``predict`` (:func:`_predictor`), the test
    keys, the updates between checks, ``fields(states, i, updates)`` (the method's own
    row fields of network ``i``, its ``budget`` entries among them) and ``note(states,
    metrics)`` (added to the progress bar)."""

    problem: str
    T: int
    method: str
    seeds: tuple[int, ...]
    task: synthetic.Task
    predict: Callable
    test_keys: jax.Array
    compile_seconds: float
    eval_every: int
    fields: Callable[[Any, int, int], dict]
    note: Callable[[Any, dict], str] = lambda states, metrics: ""


def _train_program(p: _Program, states, step, batch_fn, config: Config,
                   workdir: str | None) -> tuple[list[dict], _Saver]:
    """Train the networks ``states`` (leaves ``[n, ...]``, one per seed) with
    ``step(states, batch_fn(update), active)`` until each is solved or the program's
    budget is spent (a solved network stops updating), checking every ``p.eval_every``
    updates (see :func:`_until_check`) and saving the program's state as it goes; a
    row per seed and the program's :class:`_Saver` (remove its state once the rows
    are kept)."""
    task, T, n = p.task, p.T, len(p.seeds)
    progress, saver = _program(p.problem, T, p.method, p.seeds, config, workdir)

    def snapshot():
        return dict(states=states, active=active.astype(np.int8), done_at=done_at,
                    solved_at=solved_at, seconds=seconds, rates=rates, loss=loss,
                    clock=np.array([updates, train_time]), **best.state())

    best = _Best(states.params)
    active = np.ones(n, bool)
    done_at = np.zeros(n, np.int64)     # updates when stopped (or at the end)
    solved_at = np.zeros(n, np.int64)   # updates when first solved (0: not yet)
    seconds = np.zeros(n)
    rates, loss = np.full(n, np.nan), np.full(n, np.nan)
    train_time, updates = 0.0, 0
    try:
        saved = saver.restore(snapshot(), added=_Best.KEYS)
    except ValueError:  # e.g. HF's programs once saved one seed's unstacked state
        raise cli.ConfigError("workdir", saver.path, "a program state of an earlier version "
                              "of the table, which this one cannot resume: move it away "
                              "to start the program afresh") from None
    if saved is not None:
        states, done_at, seconds = saved["states"], saved["done_at"], saved["seconds"]
        solved_at = saved["solved_at"]
        best.load(saved)
        active, rates, loss = saved["active"].astype(bool), saved["rates"], saved["loss"]
        updates, train_time = int(saved["clock"][0]), float(saved["clock"][1])
    while active.any() and updates < config.max_updates and train_time < 60 * config.max_minutes:
        t0 = time.perf_counter()
        mask = jnp.asarray(active)
        until = _until_check(updates, p.eval_every, config)
        for _ in range(min(until, config.max_updates - updates)):
            states, metrics = step(states, batch_fn(updates), mask)
            updates += 1
        loss = np.where(active, np.asarray(metrics["loss"]), loss)
        train_time += time.perf_counter() - t0
        done_at[active], seconds[active] = updates, train_time
        quick = _error_rates(task, p.predict, states.params, _check_keys(p.test_keys), T, 1000)
        rates = np.where(active, quick, rates)
        for i in np.flatnonzero(active & (quick < synthetic.SUCCESS_ERROR_RATE)):
            sub = jax.tree.map(lambda x: x[i:i + 1], states.params)
            parts = _test(task, p.predict, sub, p.test_keys[i:i + 1], T, config,
                          config.test_sequences)[0]
            rates[i] = _full(parts)
            best.saw(i, parts, updates, states.params)
            if synthetic.solved(float(rates[i])) and not solved_at[i]:
                solved_at[i] = updates
            active[i] = not _done(float(rates[i]), config)
        progress(train_time, updates, rates, p.note(states, metrics))
        saver(snapshot(), train_time)
    progress.close()
    kept = best.kept(states.params)
    saver.keep(kept)
    last_rates, rates = rates, best.rates(rates)
    solved = np.array([synthetic.solved(float(r)) for r in rates])
    general = (_generalization(task, p.predict, kept, p.test_keys, config)
               if config.generalize_to and solved.any() else None)
    rows = []
    for i, seed in enumerate(p.seeds):
        own = p.fields(states, i, int(done_at[i]))
        budget = dict(max_minutes=config.max_minutes, max_updates=config.max_updates,
                      stop_error_rate=config.stop_error_rate, **own.pop("budget"))
        row = _row(p.problem, T, p.method, seed, config, solved_at[i], solved=bool(solved[i]),
                   error_rate=float(rates[i]), updates=int(done_at[i]),
                   train_seconds=round(float(seconds[i]), 1),
                   compile_seconds=round(p.compile_seconds, 1), final_loss=float(loss[i]),
                   **own, seeds_in_program=n, budget=budget)
        row.update(best.fields(i, done_at[i], last_rates[i]))
        if best.tested[i] and np.isfinite(best.across[i]):
            row["train_lengths_error_rate"] = float(best.across[i])
        if general is not None and solved[i]:
            row.update(general[i])
        rows.append(row)
    return rows, saver


def run_first_order(problem: str, T: int, method: str, seeds: tuple[int, ...],
                    config: Config, workdir: str | None = None) -> tuple[list[dict], _Saver]:
    """Train one network per seed, all in one vmapped program, each until solved or
    the program's budget is spent (a solved network stops updating); a row per seed,
    and the program's :class:`_Saver` (remove its state once the rows are kept)."""
    task = synthetic.get(problem)
    init_keys, data_keys, test_keys = (_keys(seeds, i) for i in range(3))
    model, _, net = build(method, task, config, init_keys[0])
    opt, one_step = _first_order_step(method, task, model, net, config)
    states = sweep.stack([train.init_state(model.init(init_keys[i]), opt, seed=s)
                          for i, s in enumerate(seeds)])
    lengths = Lengths(task, T, config.min_train_length, seeds[0], bucket=LENGTH_BUCKET)
    buckets = lengths.buckets()
    batches = {s: _batches(task, config.first_order_batch, s) for s in buckets}
    draw = lambda keys, update, L: batches[lengths.padded(L)](keys, update, L)
    t0 = time.perf_counter()
    lengths.warm_up(draw, data_keys)
    vstep = jax.jit(jax.vmap(_masked(one_step)))
    steps = {s: vstep.lower(states, draw(data_keys, 0, L), jnp.ones(len(seeds), bool)).compile()
             for s, L in buckets.items()}
    compile_seconds = time.perf_counter() - t0

    def fields(states, i: int, updates: int) -> dict:
        return dict(grad_evals=updates, curvature_products=0, loss_evals=0,
                    budget=dict(batch=config.first_order_batch,
                                hidden=config.sgd_cr_hidden if method == "sgd_cr" else config.hidden,
                                omega=config.omega if method == "sgd_cr" else 0.0,
                                **({"init": config.sgd_cr_init} if method == "sgd_cr" else {})))

    return _train_program(
        _Program(problem, T, method, seeds, task, _predictor(net), test_keys, compile_seconds,
                 config.eval_every, fields),
        states, lambda states, batch, mask: steps[batch.mask.shape[1]](states, batch, mask),
        lambda update: draw(data_keys, update, lengths(update)), config, workdir)


def _done(rate: float, config: Config) -> bool:
    """Whether a network stops training: solved, and at most ``--stop_error_rate`` wrong."""
    return synthetic.solved(rate) and rate <= config.stop_error_rate


def _until_check(updates: int, every: int, config: Config) -> int:
    """Updates before the next check: ``every``, or 5% of the updates made so far if
    more (the checks' cost stays a small share of long runs; ``updates`` at success
    is then known to within 5%). Training towards zero errors checks every ``every``
    updates: a zero-error network on a noisy trajectory can be gone 5% later."""
    if _zero_error_rule(config):
        return every
    return max(every, updates // 20)


def _check_keys(test_keys: jax.Array) -> jax.Array:
    """The periodic 1,000-sequence checks draw from their own stream of the test keys."""
    return jax.vmap(lambda k: jax.random.fold_in(k, 10**6))(test_keys)


def run_hf(problem: str, T: int, method: str, seeds: tuple[int, ...], config: Config,
           workdir: str | None = None) -> tuple[list[dict], _Saver]:
    """Train one network per seed with Hessian-free, all in one vmapped program (one
    seed unless ``--vmap_seeds``), each until solved or the program's budget is spent (a
    solved network stops updating); a row per seed and the program's :class:`_Saver`."""
    task = synthetic.get(problem)
    init_keys, data_keys, test_keys = (_keys(seeds, i) for i in range(3))
    protocol = hf_protocol(method, config)
    model, _, net = build(method, task, config, init_keys[0])
    programs = [hf_adapter.state_and_step(net, task.kind, model.init(init_keys[i]), protocol,
                                          seed=s) for i, s in enumerate(seeds)]
    states, step_fn = sweep.stack([state for state, _ in programs]), programs[0][1]
    lengths = Lengths(task, T, config.min_train_length, seeds[0])  # padded to T: one program
    draws = {n: _batches(task, n, lengths.steps)
             for n in {protocol.gradient_batch, protocol.curvature_batch}}
    streams = jax.vmap(lambda k: jax.random.split(k, 3))(data_keys)  # gradient, curvature, scoring

    def batch_fn(update):
        L = lengths(update)
        grad = draws[protocol.gradient_batch](streams[:, 0], update, L)
        curv = draws[protocol.curvature_batch](streams[:, 1], update, L)
        if config.hf_score_on == "gradient":
            return grad, curv, grad
        return grad, curv, draws[protocol.curvature_batch](streams[:, 2], update, L)

    t0 = time.perf_counter()
    for draw in draws.values():
        lengths.warm_up(draw, streams[:, 0])
    step = jax.jit(jax.vmap(_masked(step_fn))).lower(
        states, batch_fn(0), jnp.ones(len(seeds), bool)).compile()
    compile_seconds = time.perf_counter() - t0

    def fields(states, i: int, updates: int) -> dict:
        hs = states.opt_state
        return dict(grad_evals=int(hs.grad_evals[i]),
                    curvature_products=int(hs.curvature_products[i]),
                    loss_evals=int(hs.loss_evals[i]), final_damping=float(hs.damping[i]),
                    budget=dict(gradient_batch=protocol.gradient_batch,
                                curvature_batch=protocol.curvature_batch,
                                cg_iters=protocol.max_cg_iters, mu=protocol.structural_damping,
                                score_on=config.hf_score_on, hidden=config.hidden,
                                input_scale=protocol.input_scale))

    # the current λ and the last ρ say whether HF still takes real steps (a λ that only
    # grows is stuck)
    note = lambda states, metrics: (
        ", λ " + "/".join(f"{d:.3g}" for d in np.asarray(states.opt_state.damping))
        + ", ρ " + "/".join(f"{r:.2f}" for r in np.asarray(metrics["rho"])))
    return _train_program(
        _Program(problem, T, method, seeds, task, _predictor(net), test_keys, compile_seconds,
                 max(1, config.eval_every // 20), fields, note),
        states, step, batch_fn, config, workdir)


def run_cell(problem: str, T: int, method: str, seeds: tuple[int, ...], config: Config,
             workdir: str | None = None) -> tuple[list[dict], _Saver]:
    """``(rows, saver)`` of the program that trains ``seeds`` (one vmapped program) in
    one cell of the table."""
    if method in ("hf", "hf_sd"):
        return run_hf(problem, T, method, seeds, config, workdir)
    return run_first_order(problem, T, method, seeds, config, workdir)


def run(config: Config, workdir: str | None = None, report=None) -> dict:
    """Fill the table: every (problem, T, method, seed) row not yet in ``config.results``.

    Returns ``{"rows": rows run now, "skipped": n}``; ``report(row)`` is called after
    each row. ``workdir`` also receives ``results.json`` (the rows run now).
    """
    cli.validate(config)
    if config.plot or config.summary or config.plot_generalization:
        rows = [r for r in cli.read_jsonl(config.results)
                if not config.only_tags or r.get("tag", "") in config.only_tags]
        if not rows:
            raise cli.ConfigError("results", config.results,
                                  "--plot and --summary need a results file with rows"
                                  + (" with the --only_tags" if config.only_tags else ""))
        if config.plot_generalization and not any(r.get("generalization") for r in rows):
            raise cli.ConfigError("plot_generalization", config.plot_generalization,
                                  "expected rows in --results scored with --generalize_to")
        if config.summary:
            print(long_memory_report.overview(rows), long_memory_report.summarize(rows),
                  sep="\n\n")
        if config.plot:
            long_memory_report.plot_success(rows, config.plot)
        if config.plot_generalization:
            long_memory_report.plot_generalization(rows, config.plot_generalization)
        return {"rows": [], "skipped": len(rows), "plot": config.plot}
    for problem in config.problems:
        shortest = synthetic.get(problem).min_seq_len
        if min(config.lengths) < shortest:
            raise cli.ConfigError("lengths", config.lengths,
                                  f"problem {problem} needs lengths >= {shortest}")
    directory = os.path.dirname(os.path.abspath(config.results))
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise cli.ConfigError("results", config.results, "its directory must be writable")
    done = {long_memory_report.row_key(r) for r in cli.read_jsonl(config.results)}
    new, skipped = [], 0
    for T in config.lengths:
        for problem in config.problems:
            for method in config.methods:
                cell = (problem, T, method, config.tag, config.min_train_length)
                todo = [s for s in config.seeds if (*cell, s) not in done]
                skipped += len(config.seeds) - len(todo)
                for group in ([tuple(todo)] if config.vmap_seeds and todo
                              else [(s,) for s in todo]):
                    rows, saver = run_cell(problem, T, method, group, config, workdir)
                    for row in rows:
                        cli.append_jsonl(config.results, row)
                        print(json.dumps(row), flush=True)
                        new.append(row)
                        if report is not None:
                            report(row)
                    saver.finish()  # the rows are kept: the program's state is not needed
    results = {"rows": new, "skipped": skipped}
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    return results


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
