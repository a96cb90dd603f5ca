"""Synthetic sequence problems that test long-term memory, plus running parity.

One small :class:`Task` per problem, in the spirit of pascanur/trainingRNNs: a
generator of batches from a PRNG key, the task's loss, and its success rule.

    >>> import jax
    >>> from rnnjax.data import synthetic
    >>> task = synthetic.get("addition")
    >>> batch = task.generate(jax.random.PRNGKey(0), 32, 100)
    >>> batch.inputs.shape, batch.targets.shape, batch.mask.shape
    ((100, 32, 2), (100, 32, 1), (100, 32))

Every batch is time-major and has exactly ``seq_len`` steps:

* ``inputs`` [T, B, D] float32;
* ``targets`` [T, B, 1] float32 for regression tasks (addition, multiplication),
  [T, B] int32 class ids for classification tasks (everything else);
* ``mask`` [T, B] float32, 1 on the steps that are scored. Unscored steps carry a
  target of 0 and contribute nothing to the loss nor to the success rule.

The model's outputs are [T, B, O] with ``O = task.output_size``: the prediction
itself for regression, logits for classification. ``task.loss(outputs, batch)``
is the mean squared error or softmax cross-entropy over the scored steps;
``task.wrong(outputs, batch)`` [B] says which sequences are wrong by the task's
criterion. A problem counts as solved (Pascanu et al. 2013) when fewer than 1% of
10,000 fresh sequences are wrong: :func:`evaluate` and :func:`solved`.

The problems (definitions after Martens & Sutskever 2011, as in Sutskever's
released HF code, with ``f = T / 100`` scaling the marker windows; Pascanu et
al. 2013 use the same problems):

==================  ===  ====  ========================================================
name                 D    O    what must be remembered
==================  ===  ====  ========================================================
addition             2    1    channel 0 a value ~U[0,1], channel 1 a marker on two
                               steps in [1,10)f and [10,50)f; at the last step output
                               the sum of the two marked values. Wrong: |error| > 0.04.
multiplication       2    1    the same, the product.
xor                  2    2    binary values, markers in [1,10)f and [15,25)f with f =
                               T/50 (Sutskever's XOR sequences are half as long as the
                               others: 50f..55f steps); classify the XOR of the two
                               marked bits at the last step. Wrong: argmax != target.
temporal_order       8    4    one-hot symbols: 0-3 distractors, 4/5 the specials X/Y,
                               6 the "answer now" cue (last step), 7 the start symbol
                               (step 0). Specials at [1,10]f and [40,50]f; classify
                               their order XX, XY, YX, YY (class 2·first + second).
temporal_order3      8    8    three specials at [1,10]f, [30,40]f, [50,60]f; class
                               4·first + 2·second + third.
permutation         100  100   step 0 shows symbol 0 or 1, every later step a random
                               symbol from 2..99; at the last step predict the symbol
                               of step 0 (only that step is scored).
memorization5        4    3    5 binary symbols, blanks, a cue 6 steps before the end,
                               then the 5 symbols must be reproduced; every step is
                               scored (blank class elsewhere). Wrong: any step wrong.
memorization20       7    6    the same with 10 symbols of 5 values (~23 bits).
copy                 10   9    Arjovsky et al. 2016's copy memory: 10 symbols from an
                               alphabet of 8, blanks, a delimiter, then reproduce them
                               in the last 10 steps; every step scored.
parity               1    2    running parity: bits in, at every step the parity of
                               the bits so far (a teaching problem, not a long-memory
                               benchmark); every step scored.
==================  ===  ====  ========================================================

Deviations from the originals, and why: sequences have a fixed length ``T`` per
batch (Sutskever draws it from [T, 1.1T)) so that ``jit`` compiles once; marker
windows are rounded to whole steps and kept non-empty and in order, so that the
problems are defined for short T (T >= 10) too; ``seq_len`` is always the total
length (for the recall problems the blank stretch is ``T - 2·n - 1`` long, so
Arjovsky's copy problem with delay ``T'`` is ``seq_len = T' + 20``); XOR is a
two-class softmax rather than one sigmoid unit (the same model).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import losses

__all__ = [
    "Batch",
    "Task",
    "TASKS",
    "TASK_NAMES",
    "LONG_MEMORY_TASKS",
    "SUCCESS_ERROR_RATE",
    "NUM_TEST_SEQUENCES",
    "REGRESSION_TOLERANCE",
    "get",
    "evaluate",
    "solved",
    "markers",
]

SUCCESS_ERROR_RATE = 0.01   # solved: under 1% of sequences wrong ...
NUM_TEST_SEQUENCES = 10_000  # ... on this many fresh sequences (Pascanu et al. 2013)
REGRESSION_TOLERANCE = 0.04  # a regression answer is wrong when |error| exceeds this


class Batch(NamedTuple):
    """One batch of a synthetic problem (time-major).

    inputs: [T, B, D] float32.
    targets: [T, B, 1] float32 (regression) or [T, B] int32 class ids.
    mask: [T, B] float32, 1 on the scored steps.
    """

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array


class Task(NamedTuple):
    """A synthetic problem: generator, loss and success rule.

    Attributes:
      name: the registry name.
      input_size: D.
      output_size: O, the size of the model's readout.
      kind: ``"regression"`` (outputs are predictions) or ``"classification"``
        (outputs are logits over O classes).
      min_seq_len: the shortest T for which the problem is defined.
      description: one line.
      generate_fn: ``(key, batch_size, seq_len) -> Batch`` (use :meth:`generate`).
    """

    name: str
    input_size: int
    output_size: int
    kind: str
    min_seq_len: int
    description: str
    generate_fn: Callable[[jax.Array, int, int], Batch]

    def generate(self, key: jax.Array, batch_size: int, seq_len: int) -> Batch:
        """A fresh batch: inputs [seq_len, batch_size, D]; see :class:`Batch`.

        ``batch_size`` and ``seq_len`` are static (Python ints): each pair compiles once.
        """
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("seq_len", seq_len)
        if seq_len < self.min_seq_len:
            raise ValueError(f"task {self.name!r} needs seq_len >= {self.min_seq_len}, "
                             f"got {seq_len}")
        return _jitted(self.generate_fn)(key, batch_size, seq_len)

    def loss(self, outputs: jax.Array, batch: Batch) -> jax.Array:
        """Mean loss over the scored steps: squared error or cross-entropy (nats).

        outputs: [T, B, O], predictions (regression) or logits (classification).
        """
        self._check_outputs(outputs, batch)
        if self.kind == "regression":
            return losses.squared_error(outputs, batch.targets, batch.mask)
        return losses.cross_entropy(outputs, batch.targets, batch.mask)

    def wrong(self, outputs: jax.Array, batch: Batch) -> jax.Array:
        """[B] bool: True for each sequence the task's criterion counts as wrong.

        Regression: some scored step has |prediction - target| > 0.04.
        Classification: some scored step has argmax(logits) != target.
        """
        self._check_outputs(outputs, batch)
        scored = batch.mask > 0
        if self.kind == "regression":
            bad = jnp.any(jnp.abs(outputs - batch.targets) > REGRESSION_TOLERANCE, axis=-1)
        else:
            bad = jnp.argmax(outputs, axis=-1) != batch.targets
        return jnp.any(bad & scored, axis=0)

    def error_rate(self, outputs: jax.Array, batch: Batch) -> jax.Array:
        """Fraction of the batch's sequences that are wrong (scalar)."""
        return jnp.mean(self.wrong(outputs, batch).astype(jnp.float32))

    def _check_outputs(self, outputs: jax.Array, batch: Batch) -> None:
        T, B = batch.mask.shape
        if tuple(outputs.shape) != (T, B, self.output_size):
            raise ValueError(f"task {self.name!r}: outputs must have shape [T, B, O] = "
                             f"{(T, B, self.output_size)}, got {tuple(outputs.shape)}")


@functools.lru_cache(maxsize=None)
def _jitted(fn):
    return jax.jit(fn, static_argnums=(1, 2))


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------- marker windows

def markers(seq_len: int, windows: tuple[tuple[float, float], ...], scale: float = 100.0,
            inclusive: bool = False) -> list[tuple[int, int]]:
    """Half-open step ranges [lo, hi) for the marked positions of a problem.

    Each window ``(a, b)`` is in units of ``f = seq_len / scale``: [a·f, b·f) (or
    [a·f, b·f] with ``inclusive``). Rounded to whole steps, kept inside
    [1, seq_len - 1) (step 0 and the last step are reserved), non-empty and in
    order (each window starts where the previous one ended, at the earliest), so
    that the problems stay defined for short sequences.
    """
    f = seq_len / scale
    out, start = [], 1
    for a, b in windows:
        lo = max(start, int(a * f))
        hi = max(lo + 1, int(b * f) + (1 if inclusive else 0))
        hi = min(hi, seq_len - 1)
        if lo >= hi:
            raise ValueError(f"seq_len={seq_len} is too short for marker windows {windows}")
        out.append((lo, hi))
        start = hi
    return out


def _positions(key: jax.Array, batch_size: int, window: tuple[int, int]) -> jax.Array:
    """[B] int32 positions uniform in the half-open window."""
    return jax.random.randint(key, (batch_size,), window[0], window[1])


def _one_hot_at(positions: jax.Array, seq_len: int) -> jax.Array:
    """[T, B] bool, True at each sequence's position."""
    return jnp.arange(seq_len)[:, None] == positions[None, :]


def _last_step_mask(seq_len: int, batch_size: int) -> jax.Array:
    return jnp.zeros((seq_len, batch_size), jnp.float32).at[-1].set(1.0)


# ----------------------------------------------------------------------------- two-operand problems

def _operand_task(name: str, op: Callable, binary: bool, windows, scale: float,
                  description: str) -> Task:
    """Addition, multiplication and XOR: values plus a marker channel."""

    def generate(key, batch_size: int, seq_len: int) -> Batch:
        k_val, k_a, k_b = jax.random.split(key, 3)
        wa, wb = markers(seq_len, windows, scale)
        if binary:
            values = jax.random.bernoulli(k_val, 0.5, (seq_len, batch_size)).astype(jnp.float32)
        else:
            values = jax.random.uniform(k_val, (seq_len, batch_size), jnp.float32)
        at_a = _one_hot_at(_positions(k_a, batch_size, wa), seq_len)
        at_b = _one_hot_at(_positions(k_b, batch_size, wb), seq_len)
        marks = (at_a | at_b).astype(jnp.float32)
        a = jnp.sum(values * at_a, axis=0)
        b = jnp.sum(values * at_b, axis=0)
        inputs = jnp.stack([values, marks], axis=-1)
        mask = _last_step_mask(seq_len, batch_size)
        answer = op(a, b)
        if binary:
            targets = jnp.zeros((seq_len, batch_size), jnp.int32).at[-1].set(
                answer.astype(jnp.int32))
        else:
            targets = jnp.zeros((seq_len, batch_size, 1), jnp.float32).at[-1, :, 0].set(answer)
        return Batch(inputs, targets, mask)

    kind = "classification" if binary else "regression"
    return Task(name, 2, 2 if binary else 1, kind, 10, description, generate)


# ----------------------------------------------------------------------------- temporal order

_START, _CUE = 7, 6  # the start symbol at step 0 and the "answer now" cue at the last step


def _temporal_task(name: str, windows) -> Task:
    """Temporal order with len(windows) specials (X = symbol 4, Y = symbol 5)."""
    n = len(windows)

    def generate(key, batch_size: int, seq_len: int) -> Batch:
        keys = jax.random.split(key, 2 * n + 1)
        spans = markers(seq_len, windows, inclusive=True)
        symbols = jax.random.randint(keys[0], (seq_len, batch_size), 0, 4)
        symbols = symbols.at[0].set(_START).at[-1].set(_CUE)
        label = jnp.zeros((batch_size,), jnp.int32)
        for i, span in enumerate(spans):
            bit = jax.random.bernoulli(keys[1 + i], 0.5, (batch_size,)).astype(jnp.int32)
            at = _one_hot_at(_positions(keys[1 + n + i], batch_size, span), seq_len)
            symbols = jnp.where(at, 4 + bit[None, :], symbols)
            label = 2 * label + bit  # the first special is the most significant bit
        inputs = jax.nn.one_hot(symbols, 8, dtype=jnp.float32)
        targets = jnp.zeros((seq_len, batch_size), jnp.int32).at[-1].set(label)
        return Batch(inputs, targets, _last_step_mask(seq_len, batch_size))

    description = f"temporal order of {n} specials among distractors; {2 ** n} classes"
    return Task(name, 8, 2 ** n, "classification", 10, description, generate)


# ----------------------------------------------------------------------------- permutation

def _permutation_task(num_symbols: int = 100) -> Task:
    def generate(key, batch_size: int, seq_len: int) -> Batch:
        k_first, k_rest = jax.random.split(key)
        first = jax.random.randint(k_first, (batch_size,), 0, 2)
        rest = jax.random.randint(k_rest, (seq_len, batch_size), 2, num_symbols)
        symbols = rest.at[0].set(first)
        inputs = jax.nn.one_hot(symbols, num_symbols, dtype=jnp.float32)
        targets = jnp.zeros((seq_len, batch_size), jnp.int32).at[-1].set(first)
        return Batch(inputs, targets, _last_step_mask(seq_len, batch_size))

    return Task("permutation", num_symbols, num_symbols, "classification", 2,
                "recall the first symbol (0 or 1) after random symbols 2..99", generate)


# ----------------------------------------------------------------------------- recall problems

def _recall_task(name: str, num_chars: int, char_size: int, description: str) -> Task:
    """Noiseless memorisation / copy memory.

    Inputs D = char_size + 2: the symbols, then the cue, then the blank. Outputs
    O = char_size + 1: the symbols, then the blank. Layout of a sequence of T
    steps: symbols on steps [0, n), blanks, the cue on step T - n - 1, blanks on the
    last n steps, during which the n symbols must be reproduced.
    """
    cue, blank_in, blank_out = char_size, char_size + 1, char_size

    def generate(key, batch_size: int, seq_len: int) -> Batch:
        data = jax.random.randint(key, (num_chars, batch_size), 0, char_size)
        symbols = jnp.full((seq_len, batch_size), blank_in, jnp.int32)
        symbols = symbols.at[:num_chars].set(data).at[seq_len - num_chars - 1].set(cue)
        inputs = jax.nn.one_hot(symbols, char_size + 2, dtype=jnp.float32)
        targets = jnp.full((seq_len, batch_size), blank_out, jnp.int32)
        targets = targets.at[seq_len - num_chars:].set(data)
        return Batch(inputs, targets, jnp.ones((seq_len, batch_size), jnp.float32))

    return Task(name, char_size + 2, char_size + 1, "classification", 2 * num_chars + 1,
                description, generate)


# ----------------------------------------------------------------------------- parity

def _parity_task() -> Task:
    def generate(key, batch_size: int, seq_len: int) -> Batch:
        bits = jax.random.bernoulli(key, 0.5, (seq_len, batch_size)).astype(jnp.int32)
        parity = jnp.cumsum(bits, axis=0) % 2
        return Batch(bits[..., None].astype(jnp.float32), parity.astype(jnp.int32),
                     jnp.ones((seq_len, batch_size), jnp.float32))

    return Task("parity", 1, 2, "classification", 1,
                "running parity: at every step the parity of the bits so far", generate)


# ----------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {
    "addition": _operand_task(
        "addition", lambda a, b: a + b, False, ((1, 10), (10, 50)), 100.0,
        "sum of the two marked values ~U[0,1], answered at the last step"),
    "multiplication": _operand_task(
        "multiplication", lambda a, b: a * b, False, ((1, 10), (10, 50)), 100.0,
        "product of the two marked values ~U[0,1], answered at the last step"),
    "xor": _operand_task(
        "xor", lambda a, b: jnp.logical_xor(a > 0.5, b > 0.5), True, ((1, 10), (15, 25)), 50.0,
        "XOR of the two marked bits, answered at the last step"),
    "temporal_order": _temporal_task("temporal_order", ((1, 10), (40, 50))),
    "temporal_order3": _temporal_task("temporal_order3", ((1, 10), (30, 40), (50, 60))),
    "permutation": _permutation_task(),
    "memorization5": _recall_task(
        "memorization5", 5, 2, "reproduce 5 binary symbols after a blank stretch"),
    "memorization20": _recall_task(
        "memorization20", 10, 5, "reproduce 10 symbols of 5 values after a blank stretch"),
    "copy": _recall_task(
        "copy", 10, 8, "copy memory: reproduce 10 symbols of 8 after a delimiter"),
    "parity": _parity_task(),
}
TASK_NAMES = tuple(TASKS)
# The long-term-dependency problems (parity is a teaching problem, not one of them).
LONG_MEMORY_TASKS = tuple(n for n in TASK_NAMES if n != "parity")


def get(name: str) -> Task:
    """The task registered under ``name``; ValueError naming the accepted names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; accepted: {', '.join(TASK_NAMES)}")
    return TASKS[name]


# ----------------------------------------------------------------------------- success rule

def evaluate(
    task: Task | str,
    predict: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    seq_len: int,
    *,
    num_sequences: int = NUM_TEST_SEQUENCES,
    batch_size: int = 1000,
) -> float:
    """Fraction of ``num_sequences`` fresh sequences that are wrong.

    Args:
      task: a Task or its name.
      predict: ``predict(inputs [T, B, D]) -> outputs [T, B, O]`` (jit it yourself).
      key: PRNG key for the fresh sequences (use one the training never saw).
      seq_len: T.
      num_sequences: how many sequences (10,000 for the success rule).
      batch_size: sequences per call of ``predict``; the last batch may be smaller.
    """
    task = get(task) if isinstance(task, str) else task
    _check_positive_int("num_sequences", num_sequences)
    _check_positive_int("batch_size", batch_size)
    wrong, done, i = 0, 0, 0
    while done < num_sequences:
        b = min(batch_size, num_sequences - done)
        batch = task.generate(jax.random.fold_in(key, i), b, seq_len)
        wrong += int(jnp.sum(task.wrong(predict(batch.inputs), batch)))
        done += b
        i += 1
    return wrong / num_sequences


def solved(error_rate: float) -> bool:
    """The success rule: under 1% of sequences wrong."""
    return bool(error_rate < SUCCESS_ERROR_RATE) and not math.isnan(error_rate)
