"""Synthetic sequence problems that test long-term memory, plus running parity.

One small :class:`Task` per problem, in the spirit of pascanur/trainingRNNs: a
generator of batches from a PRNG key, the task's loss, and its success rule.

    >>> import jax
    >>> from rnnjax.data import synthetic
    >>> task = synthetic.get("addition")
    >>> batch = task.generate(jax.random.PRNGKey(0), 32, 100)
    >>> batch.inputs.shape, batch.targets.shape, batch.mask.shape
    ((109, 32, 2), (109, 32, 1), (109, 32))

Every batch is time-major and has ``task.steps(seq_len)`` steps (``seq_len``
itself except for the variable-length and memorisation problems):

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

The problems, as defined by Pascanu, Mikolov & Bengio (2013)'s released code
(github.com/pascanur/trainingRNNs, files ``addition.py``, ``multiplication.py``,
``tempOrder.py``, ``tempOrder3bit.py``, ``permutation.py``, ``memorization.py``
and the error rule of ``RNN.py``), which follows Martens & Sutskever (2011) and
Hochreiter & Schmidhuber (1997). ``T`` is the nominal length passed to
:meth:`Task.generate`; :meth:`Task.steps` is the array length it returns.

==================  ===  ====  ========================================================
name                 D    O    definition (source: Pascanu et al.'s code unless noted)
==================  ===  ====  ========================================================
addition             2    1    each sequence has its own length l ~ U{T, .., T+⌊T/10⌋−1}
                               (arrays padded with zeros to the longest, the padding
                               unscored); channel 0 values ~U[0,1], channel 1 a marker
                               at p0 ~ U{0..⌊l/10⌋−1} and p1 ~ ⌊l/10⌋ + U{0..⌊4l/10⌋−1};
                               at step l−1 output (X0 + X1)/2. Wrong: squared error
                               > 0.04 (|error| > 0.2).
multiplication       2    1    the same, target X0·X1.
xor                  2    2    binary values, markers in [1,10)f and [15,25)f with f =
                               T/50, fixed length; classify the XOR of the two marked
                               bits at the last step (not in Pascanu's code; after the
                               description of Martens & Sutskever 2011, unverified).
temporal_order       6    4    one-hot symbols: 0/1 the specials A/B, 2..5 distractors;
                               specials at p0 ∈ [⌊T/10⌋, 2⌊T/10⌋) and p1 ∈ [⌊5T/10⌋,
                               ⌊5T/10⌋+⌊T/10⌋); class v0 + 2·v1 at the last step.
temporal_order3      6    8    specials at [⌊T/10⌋,+⌊T/10⌋), [⌊3T/10⌋,+), [⌊6T/10⌋,+);
                               class v0 + 2·v1 + 4·v2.
permutation         100  100   step 0 shows symbol 0 or 1, every later step a random
                               symbol from 2..99; at the last step predict the symbol
                               of step 0 (only that step is scored).
memorization5        4    3    5 binary symbols on steps [0, 5), T blank steps, the cue
                               on step T+5, where recall starts; the symbols must be
                               reproduced on steps [T+5, T+10); T+10 steps, every step
                               scored (blank class elsewhere); wrong: any step wrong.
memorization20       7    6    the same with 10 symbols of 5 values (~23 bits; the
                               default of Pascanu's ``MemTask``).
copy                 10   9    Arjovsky et al. 2016's copy memory: 10 symbols from an
                               alphabet of 8, blanks, a delimiter, then reproduce them
                               in the last 10 steps; ``T`` is the total length.
parity               1    2    running parity: bits in, at every step the parity of
                               the bits so far (a teaching problem, not a long-memory
                               benchmark); every step scored.
addition_hs97        2    1    Hochreiter & Schmidhuber (1997)'s adding problem: values
                               ~U[−1,1], length l ~ U{T..T+⌊T/10⌋}, the first marker in
                               the first 10 steps, the second before step ⌊l/2⌋; target
                               0.5 + (X1+X2)/4; wrong: |error| > 0.04.
==================  ===  ====  ========================================================

Deviations from the code, and why: arrays are time-major JAX arrays drawn from a
PRNG key; addition and multiplication draw one length per sequence and pad
(Pascanu draws one per batch), so that ``jit`` compiles once per T (and
:meth:`Task.generate_padded` draws Pascanu's one length per batch from a traced
length, one program for every length; each step's draws use ``fold_in(key, t)``); the marker
channel of addition is channel 1 (Pascanu's channel 0); XOR is a two-class softmax
rather than one sigmoid unit (the same model). The windows of temporal order and
XOR stay non-empty for short T (T >= 10).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import losses

__all__ = [
    "Batch",
    "Task",
    "TASKS",
    "TASK_NAMES",
    "LONG_MEMORY_TASKS",
    "PAPER_TASKS",
    "SUCCESS_ERROR_RATE",
    "NUM_TEST_SEQUENCES",
    "REGRESSION_TOLERANCE",
    "get",
    "evaluate",
    "error_rates",
    "solved",
    "markers",
    "pad",
]

SUCCESS_ERROR_RATE = 0.01   # solved: under 1% of sequences wrong ...
NUM_TEST_SEQUENCES = 10_000  # ... on this many fresh sequences (Pascanu et al. 2013)
REGRESSION_TOLERANCE = 0.2  # Pascanu's rule: wrong when the squared error exceeds 0.04


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
      steps_fn: ``seq_len -> `` the number of steps of a generated batch (None: seq_len).
      padded_fn: ``(key, batch_size, seq_len, steps) -> Batch`` with ``seq_len`` an int32
        array (traceable) and ``steps`` static, or None (use :meth:`generate_padded`).
      tolerance: regression only: an answer is wrong when |error| exceeds this.
      source: where the definition comes from.
    """

    name: str
    input_size: int
    output_size: int
    kind: str
    min_seq_len: int
    description: str
    generate_fn: Callable[[jax.Array, int, int], Batch]
    steps_fn: Callable[[int], int] | None = None
    padded_fn: Callable[[jax.Array, int, jax.Array, int], Batch] | None = None
    tolerance: float = REGRESSION_TOLERANCE
    source: str = "Pascanu et al. 2013, github.com/pascanur/trainingRNNs"

    def steps(self, seq_len: int) -> int:
        """Array length of a batch generated for nominal length ``seq_len``."""
        return seq_len if self.steps_fn is None else self.steps_fn(seq_len)

    def generate(self, key: jax.Array, batch_size: int, seq_len: int) -> Batch:
        """A fresh batch: inputs [steps(seq_len), batch_size, D]; see :class:`Batch`.

        ``batch_size`` and ``seq_len`` are static (Python ints): each pair compiles once.
        """
        _check_positive_int("batch_size", batch_size)
        self.check_length(seq_len)
        return _jitted(self.generate_fn)(key, batch_size, seq_len)

    def check_length(self, seq_len: int) -> None:
        """ValueError unless ``seq_len`` is a whole number >= ``min_seq_len``."""
        _check_positive_int("seq_len", seq_len)
        if seq_len < self.min_seq_len:
            raise ValueError(f"task {self.name!r} needs seq_len >= {self.min_seq_len}, "
                             f"got {seq_len}")

    def generate_padded(self, key: jax.Array, batch_size: int, seq_len: int | jax.Array,
                        steps: int) -> Batch:
        """``pad(generate(key, batch_size, seq_len), steps)``, equal to it step for step.

        Where the task has a ``padded_fn`` (every problem of :data:`PAPER_TASKS`),
        ``seq_len`` may be a traced int32 scalar: under ``jit`` one program then draws
        every length up to ``steps``, as Pascanu et al.'s one-length-per-batch
        training needs (a Python int is checked as in :meth:`generate`). Not jitted:
        call it inside your own ``jit``; ``batch_size`` and ``steps`` are static.
        """
        if isinstance(seq_len, int):
            _check_positive_int("batch_size", batch_size)
            self.check_length(seq_len)
            if steps < self.steps(seq_len):
                raise ValueError(f"task {self.name!r}: steps={steps} is shorter than the "
                                 f"{self.steps(seq_len)} steps of seq_len={seq_len}")
        if self.padded_fn is not None:
            return self.padded_fn(key, batch_size, jnp.asarray(seq_len, jnp.int32), steps)
        if not isinstance(seq_len, int):
            raise TypeError(f"task {self.name!r} draws one length per program: seq_len must "
                            f"be a Python int, got {type(seq_len).__name__}")
        return pad(self.generate_fn(key, batch_size, seq_len), steps)

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

        Regression: some scored step has |prediction - target| > ``tolerance``.
        Classification: some scored step has argmax(logits) != target.
        """
        self._check_outputs(outputs, batch)
        scored = batch.mask > 0
        if self.kind == "regression":
            bad = jnp.any(jnp.abs(outputs - batch.targets) > self.tolerance, axis=-1)
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
    spans = _marker_spans(seq_len, windows, scale, inclusive)
    if any(lo >= hi for lo, hi in spans):
        raise ValueError(f"seq_len={seq_len} is too short for marker windows {windows}")
    return spans


def _marker_spans(seq_len, windows, scale, inclusive: bool = False) -> list[tuple]:
    """The spans of :func:`markers`, unchecked; ``seq_len`` a Python int or a traced
    int32 (then integer ``windows`` and ``scale``; the lengths are checked against
    ``min_seq_len`` before tracing)."""
    traced = not isinstance(seq_len, int)
    most, least = (jnp.maximum, jnp.minimum) if traced else (max, min)
    # a·T/scale rather than a·(T/scale): exact for whole a, T, scale
    floor = (lambda x: x // scale) if traced else (lambda x: math.floor(x / scale))
    out, start = [], 1
    for a, b in windows:
        lo = most(start, floor(a * seq_len))
        hi = least(most(lo + 1, floor(b * seq_len) + (1 if inclusive else 0)), seq_len - 1)
        out.append((lo, hi))
        start = hi
    return out


def _per_step(key: jax.Array, steps: int, draw: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """[steps, ...]: row t drawn with ``fold_in(key, t)``, so that a row does not depend
    on how many steps are drawn and a padded batch equals the unpadded one."""
    return jax.vmap(lambda t: draw(jax.random.fold_in(key, t)))(jnp.arange(steps))


def _answer_at_last_step(steps: int, seq_len: jax.Array, answer: jax.Array) -> tuple:
    """(targets [steps, B] int32, mask [steps, B]) scoring ``answer`` [B] at step seq_len − 1."""
    last = jnp.broadcast_to(jnp.arange(steps)[:, None] == seq_len - 1, (steps, answer.shape[0]))
    return jnp.where(last, answer[None, :], 0).astype(jnp.int32), last.astype(jnp.float32)


def _fixed_length(padded_fn: Callable, steps_fn: Callable[[int], int] = lambda T: T) -> Callable:
    """``generate_fn`` from a ``padded_fn``: the batch of exactly ``steps_fn(T)`` steps."""
    return lambda key, batch_size, seq_len: padded_fn(
        key, batch_size, jnp.int32(seq_len), steps_fn(seq_len))


# ----------------------------------------------------------------------------- two-operand problems

def _jitter(seq_len: int) -> int:
    """How many lengths a variable-length problem draws from: ⌊T/10⌋ (at least 1)."""
    return max(seq_len // 10, 1)


def _pascanu_operand_task(name: str, op: Callable, description: str) -> Task:
    """Addition and multiplication as in Pascanu et al.'s ``addition.py``/``multiplication.py``.

    Per sequence: l ~ U{T, .., T + ⌊T/10⌋ − 1}; p0 ~ U{0..⌊l/10⌋−1}; p1 ~ ⌊l/10⌋ +
    U{0..⌊4l/10⌋−1}; values ~U[0,1]; the answer op(X0, X1) is scored at step l − 1.
    """

    def padded(key, batch_size: int, seq_len: jax.Array, steps: int) -> Batch:
        k_len, k_val, k_a, k_b = jax.random.split(key, 4)
        jitter = jnp.maximum(seq_len // 10, 1)  # _jitter, traced
        length = seq_len + jax.random.randint(k_len, (batch_size,), 0, jitter)
        tenth = length // 10
        p0 = jax.random.randint(k_a, (batch_size,), 0, jnp.maximum(tenth, 1))
        p1 = tenth + jax.random.randint(k_b, (batch_size,), 0, jnp.maximum(4 * length // 10, 1))
        t = jnp.arange(steps)[:, None]
        inside = t < length[None, :]
        uniform = lambda k: jax.random.uniform(k, (batch_size,), jnp.float32)
        values = _per_step(k_val, steps, uniform) * inside
        at_a, at_b = t == p0[None, :], t == p1[None, :]
        marks = (at_a | at_b).astype(jnp.float32)
        answer = op(jnp.sum(values * at_a, axis=0), jnp.sum(values * at_b, axis=0))
        end = (t == length[None, :] - 1)
        targets = (end * answer[None, :])[..., None].astype(jnp.float32)
        return Batch(jnp.stack([values, marks], axis=-1), targets, end.astype(jnp.float32))

    steps_fn = lambda T: T + _jitter(T) - 1
    return Task(name, 2, 1, "regression", 10, description, _fixed_length(padded, steps_fn),
                steps_fn=steps_fn, padded_fn=padded)


def _hs97_addition_task() -> Task:
    """Hochreiter & Schmidhuber (1997) §5.4's adding problem (experiment 4).

    l ~ U{T..T+⌊T/10⌋}; values ~U[−1, 1]; the first marker in the first 10 steps,
    the second in [10, ⌊l/2⌋); target 0.5 + (X1 + X2)/4 at step l − 1; wrong when
    |error| > 0.04. (H&S also mark the first and last steps with −1 markers' partner
    values set to 0; that detail is left out.)
    """

    def generate(key, batch_size: int, seq_len: int) -> Batch:
        k_len, k_val, k_a, k_b = jax.random.split(key, 4)
        steps = seq_len + seq_len // 10
        length = seq_len + jax.random.randint(k_len, (batch_size,), 0, seq_len // 10 + 1)
        p0 = jax.random.randint(k_a, (batch_size,), 0, 10)
        p1 = jax.random.randint(k_b, (batch_size,), 10, jnp.maximum(length // 2, 11))
        t = jnp.arange(steps)[:, None]
        values = jax.random.uniform(k_val, (steps, batch_size), jnp.float32, -1.0, 1.0)
        values = values * (t < length[None, :])
        at_a, at_b = t == p0[None, :], t == p1[None, :]
        answer = 0.5 + (jnp.sum(values * at_a, 0) + jnp.sum(values * at_b, 0)) / 4
        end = t == length[None, :] - 1
        targets = (end * answer[None, :])[..., None].astype(jnp.float32)
        inputs = jnp.stack([values, (at_a | at_b).astype(jnp.float32)], axis=-1)
        return Batch(inputs, targets, end.astype(jnp.float32))

    return Task("addition_hs97", 2, 1, "regression", 22,
                "Hochreiter & Schmidhuber's adding problem: 0.5 + (X1+X2)/4, values in [-1, 1]",
                generate, steps_fn=lambda T: T + T // 10, tolerance=0.04,
                source="Hochreiter & Schmidhuber 1997, section 5.4")


def _operand_task(name: str, op: Callable, windows: tuple[tuple[int, int], ...], scale: int,
                  description: str) -> Task:
    """XOR: binary values plus a marker channel, fixed length; marker windows from
    :func:`markers` (integer ``windows`` and ``scale``)."""

    def padded(key, batch_size: int, seq_len: jax.Array, steps: int) -> Batch:
        k_val, k_a, k_b = jax.random.split(key, 3)
        (lo_a, hi_a), (lo_b, hi_b) = _marker_spans(seq_len, windows, scale)
        t = jnp.arange(steps)[:, None]
        bits = lambda k: jax.random.bernoulli(k, 0.5, (batch_size,)).astype(jnp.float32)
        values = _per_step(k_val, steps, bits) * (t < seq_len)
        at_a = t == jax.random.randint(k_a, (batch_size,), lo_a, hi_a)[None, :]
        at_b = t == jax.random.randint(k_b, (batch_size,), lo_b, hi_b)[None, :]
        marks = (at_a | at_b).astype(jnp.float32)
        answer = op(jnp.sum(values * at_a, axis=0), jnp.sum(values * at_b, axis=0))
        targets, mask = _answer_at_last_step(steps, seq_len, answer)
        return Batch(jnp.stack([values, marks], axis=-1), targets, mask)

    return Task(name, 2, 2, "classification", 10, description, _fixed_length(padded),
                padded_fn=padded, source="Martens & Sutskever 2011 (as described; not in Pascanu's code)")


# ----------------------------------------------------------------------------- temporal order

def _temporal_task(name: str, starts: tuple[float, ...]) -> Task:
    """Temporal order as in Pascanu et al.'s ``tempOrder.py``/``tempOrder3bit.py``.

    Symbols 0/1 are the specials A/B, 2..5 the distractors (6 inputs); special i is
    at a step uniform in [⌊s_i T⌋, ⌊s_i T⌋ + ⌊T/10⌋); the class is Σ_i 2^i v_i
    (the first special is the least significant bit), scored at the last step.
    """
    n = len(starts)
    tenths = [round(10 * s) for s in starts]  # ⌊s·T⌋ = ⌊tenths·T/10⌋, in integers

    def padded(key, batch_size: int, seq_len: jax.Array, steps: int) -> Batch:
        keys = jax.random.split(key, 2 * n + 1)
        width = jnp.maximum(seq_len // 10, 1)
        t = jnp.arange(steps)[:, None]
        symbols = _per_step(keys[0], steps, lambda k: jax.random.randint(k, (batch_size,), 2, 6))
        label = jnp.zeros((batch_size,), jnp.int32)
        for i, tenth in enumerate(tenths):
            lo = tenth * seq_len // 10
            bit = jax.random.randint(keys[1 + i], (batch_size,), 0, 2)
            at = t == jax.random.randint(keys[1 + n + i], (batch_size,), lo, lo + width)[None, :]
            symbols = jnp.where(at, bit[None, :], symbols)
            label = label + (2 ** i) * bit
        inputs = jax.nn.one_hot(symbols, 6, dtype=jnp.float32) * (t < seq_len)[..., None]
        return Batch(inputs, *_answer_at_last_step(steps, seq_len, label))

    description = f"temporal order of {n} specials among distractors; {2 ** n} classes"
    return Task(name, 6, 2 ** n, "classification", 10, description, _fixed_length(padded),
                padded_fn=padded)


# ----------------------------------------------------------------------------- permutation

def _permutation_task(num_symbols: int = 100) -> Task:
    def padded(key, batch_size: int, seq_len: jax.Array, steps: int) -> Batch:
        k_first, k_rest = jax.random.split(key)
        first = jax.random.randint(k_first, (batch_size,), 0, 2)
        draw = lambda k: jax.random.randint(k, (batch_size,), 2, num_symbols)
        symbols = _per_step(k_rest, steps, draw).at[0].set(first)
        t = jnp.arange(steps)[:, None]
        inputs = jax.nn.one_hot(symbols, num_symbols, dtype=jnp.float32) * (t < seq_len)[..., None]
        return Batch(inputs, *_answer_at_last_step(steps, seq_len, first))

    return Task("permutation", num_symbols, num_symbols, "classification", 2,
                "recall the first symbol (0 or 1) after random symbols 2..99",
                _fixed_length(padded), padded_fn=padded)


# ----------------------------------------------------------------------------- recall problems

def _memorization_task(name: str, num_chars: int, char_size: int, description: str) -> Task:
    """Noiseless memorisation as in Pascanu et al.'s ``memorization.py``.

    Inputs D = char_size + 2 (the symbols, the blank, the cue); outputs O =
    char_size + 1 (the symbols, the blank). For delay T the sequence has T + 2n
    steps: the n symbols on [0, n), blanks on [n, T + n) and on the last n − 1
    steps, the cue on step T + n, the first recall step; the targets are the blank
    class except on the last n steps, which reproduce the symbols. Every step scored.
    """
    blank_in, cue, blank_out = char_size, char_size + 1, char_size
    n = num_chars

    def padded(key, batch_size: int, seq_len: jax.Array, steps: int) -> Batch:
        data = jax.random.randint(key, (n, batch_size), 0, char_size)
        t = jnp.arange(steps)[:, None]
        inside = t < seq_len + 2 * n
        recall = (t >= seq_len + n) & inside
        shown = jnp.take(data, jnp.clip(t[:, 0], 0, n - 1), axis=0)            # data[t]
        asked = jnp.take(data, jnp.clip(t[:, 0] - seq_len - n, 0, n - 1), axis=0)
        symbols = jnp.where(t < n, shown, jnp.where(t == seq_len + n, cue, blank_in))
        inputs = jax.nn.one_hot(symbols, char_size + 2, dtype=jnp.float32) * inside[..., None]
        targets = jnp.where(recall, asked, jnp.where(inside, blank_out, 0)).astype(jnp.int32)
        mask = jnp.broadcast_to(inside, (steps, batch_size)).astype(jnp.float32)
        return Batch(inputs, targets, mask)

    steps_fn = lambda T: T + 2 * n
    return Task(name, char_size + 2, char_size + 1, "classification", 1, description,
                _fixed_length(padded, steps_fn), steps_fn=steps_fn, padded_fn=padded)


def _recall_task(name: str, num_chars: int, char_size: int, description: str) -> Task:
    """Copy memory (Arjovsky et al. 2016), ``seq_len`` the total length.

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
                description, generate, source="Arjovsky, Shah & Bengio 2016")


# ----------------------------------------------------------------------------- parity

def _parity_task() -> Task:
    def generate(key, batch_size: int, seq_len: int) -> Batch:
        bits = jax.random.bernoulli(key, 0.5, (seq_len, batch_size)).astype(jnp.int32)
        parity = jnp.cumsum(bits, axis=0) % 2
        return Batch(bits[..., None].astype(jnp.float32), parity.astype(jnp.int32),
                     jnp.ones((seq_len, batch_size), jnp.float32))

    return Task("parity", 1, 2, "classification", 1,
                "running parity: at every step the parity of the bits so far", generate,
                source="a teaching problem")


# ----------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {
    "addition": _pascanu_operand_task(
        "addition", lambda a, b: (a + b) / 2,
        "mean of the two marked values ~U[0,1], answered at each sequence's last step"),
    "multiplication": _pascanu_operand_task(
        "multiplication", lambda a, b: a * b,
        "product of the two marked values ~U[0,1], answered at each sequence's last step"),
    "xor": _operand_task(
        "xor", lambda a, b: jnp.logical_xor(a > 0.5, b > 0.5), ((1, 10), (15, 25)), 50,
        "XOR of the two marked bits, answered at the last step"),
    "temporal_order": _temporal_task("temporal_order", (0.1, 0.5)),
    "temporal_order3": _temporal_task("temporal_order3", (0.1, 0.3, 0.6)),
    "permutation": _permutation_task(),
    "memorization5": _memorization_task(
        "memorization5", 5, 2, "reproduce 5 binary symbols after T blank steps"),
    "memorization20": _memorization_task(
        "memorization20", 10, 5, "reproduce 10 symbols of 5 values after T blank steps"),
    "copy": _recall_task(
        "copy", 10, 8, "copy memory: reproduce 10 symbols of 8 after a delimiter"),
    "parity": _parity_task(),
    "addition_hs97": _hs97_addition_task(),
}
TASK_NAMES = tuple(TASKS)
# The long-term-dependency problems (parity is a teaching problem, not one of them).
LONG_MEMORY_TASKS = tuple(n for n in TASK_NAMES if n != "parity")
# The eight problems of Martens & Sutskever (2011) and Pascanu et al. (2013).
PAPER_TASKS = ("addition", "multiplication", "xor", "temporal_order", "temporal_order3",
               "permutation", "memorization5", "memorization20")


def get(name: str) -> Task:
    """The task registered under ``name``; ValueError naming the accepted names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; accepted: {', '.join(TASK_NAMES)}")
    return TASKS[name]


# ----------------------------------------------------------------------------- variable lengths

def pad(batch: Batch, steps: int) -> Batch:
    """Right-pad ``batch`` [T, B, ...] with unscored all-zero steps to ``steps`` steps.

    A causal model's outputs on the real steps do not depend on later steps and the
    padding has mask 0, so loss, gradient and the success rule are those of the
    unpadded batch: batches of every length up to ``steps`` share one compiled
    program. This is how Pascanu et al. (2013)'s variable-length training (one
    length per batch, uniform in [50, 200]) runs here.
    """
    T = batch.mask.shape[0]
    if steps < T:
        raise ValueError(f"pad: cannot pad a batch of {T} steps to {steps} steps")

    def grow(x):
        return jnp.pad(x, [(0, steps - T)] + [(0, 0)] * (x.ndim - 1))

    return Batch(*(grow(x) for x in batch))


# ----------------------------------------------------------------------------- success rule

@functools.lru_cache(maxsize=None)
def _draw_many(task: Task, batch_size: int, seq_len: int) -> Callable:
    """``draw(keys [N], i) -> Batch`` with leaves [N, T, B, ...]: ``generate(fold_in(k, i))``
    for each key, in one jitted program."""
    one = lambda k, i: task.generate_fn(jax.random.fold_in(k, i), batch_size, seq_len)
    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def error_rates(
    task: Task | str,
    predict: Callable[[jax.Array], jax.Array],
    keys: jax.Array,
    seq_len: int,
    *,
    num_sequences: int = NUM_TEST_SEQUENCES,
    batch_size: int = 1000,
) -> np.ndarray:
    """[N] fraction of ``num_sequences`` fresh sequences that each of N networks gets wrong.

    Args:
      task: a Task or its name.
      predict: ``predict(inputs [N, T, B, D]) -> outputs [N, T, B, O]``, network i on
        slice i (a vmapped apply over stacked parameters; jit it yourself).
      keys: [N] PRNG keys; network i's sequences come from ``keys[i]`` exactly as
        :func:`evaluate` draws them from its key.
      seq_len: T.
      num_sequences: how many sequences per network (10,000 for the success rule).
      batch_size: sequences per call of ``predict``; the last batch may be smaller.
    """
    wrong = _tally(task, predict, keys, seq_len, num_sequences, batch_size,
                   lambda task, outputs, batch: task.wrong(outputs, batch))
    return wrong / num_sequences


def error_rates_by_class(
    task: Task | str,
    predict: Callable[[jax.Array], jax.Array],
    keys: jax.Array,
    seq_len: int,
    *,
    num_sequences: int = NUM_TEST_SEQUENCES,
    batch_size: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`error_rates` ``[N]`` and, beside it, ``[N, O]`` the fraction wrong among
    the sequences whose answer is each of the O classes (NaN for a class never drawn):
    which memories a network loses, for problems answered once at the last step
    (temporal order, XOR, permutation). Same arguments and sequences as :func:`error_rates`.
    """
    task = get(task) if isinstance(task, str) else task
    if task.kind != "classification" or not answered_once(task):
        raise ValueError(f"error_rates_by_class needs a problem answered by one class at "
                         f"one step, got {task.name!r}")

    def by_class(task, outputs, batch):  # [B, 2, O]: (wrong, drawn) one-hot on the answer
        answer = jnp.sum(batch.targets * (batch.mask > 0), axis=0)
        drawn = jax.nn.one_hot(answer, task.output_size)
        return jnp.stack([drawn * task.wrong(outputs, batch)[:, None], drawn], axis=1)

    counts = _tally(task, predict, keys, seq_len, num_sequences, batch_size, by_class)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts[:, 0].sum(-1) / num_sequences, counts[:, 0] / counts[:, 1]


def answered_once(task: Task | str) -> bool:
    """Whether each sequence of ``task`` is scored at exactly one step."""
    task = get(task) if isinstance(task, str) else task
    batch = task.generate(jax.random.key(0), 4, max(task.min_seq_len, 20))
    return bool(np.all(np.asarray(batch.mask).sum(axis=0) == 1))


def _tally(task: Task | str, predict: Callable, keys: jax.Array, seq_len: int,
           num_sequences: int, batch_size: int, score: Callable) -> np.ndarray:
    """``[N, ...]`` the sum over ``num_sequences`` fresh sequences per network of
    ``score(task, outputs [T, B, O], batch) -> [B, ...]``, ``batch_size`` at a time."""
    task = get(task) if isinstance(task, str) else task
    _check_positive_int("num_sequences", num_sequences)
    _check_positive_int("batch_size", batch_size)
    task.check_length(seq_len)
    total, done, i = 0.0, 0, 0
    while done < num_sequences:
        b = min(batch_size, num_sequences - done)
        batch = _draw_many(task, b, seq_len)(keys, i)
        scores = jax.vmap(functools.partial(score, task))(predict(batch.inputs), batch)
        total = total + np.asarray(scores, np.float64).sum(axis=1)
        done += b
        i += 1
    return total


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
    rates = error_rates(task, lambda xs: predict(xs[0])[None], jnp.asarray(key)[None], seq_len,
                        num_sequences=num_sequences, batch_size=batch_size)
    return float(rates[0])


def solved(error_rate: float) -> bool:
    """The success rule: under 1% of sequences wrong."""
    return bool(error_rate < SUCCESS_ERROR_RATE) and not math.isnan(error_rate)
