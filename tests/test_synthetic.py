"""The synthetic problems: documented structure, losses and the success rule.

Each oracle below recomputes the answer from the *inputs* alone, following the
documented definition, so that it checks the generator rather than copying its
targets.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.data import synthetic

B = 256
LENGTHS = {"addition": 37, "multiplication": 23, "xor": 30, "temporal_order": 41,
           "temporal_order3": 29, "permutation": 12, "memorization5": 19,
           "memorization20": 26, "copy": 31, "parity": 9}


@pytest.fixture(scope="module")
def batches():
    return {name: synthetic.get(name).generate(jax.random.PRNGKey(i), B, LENGTHS[name])
            for i, name in enumerate(synthetic.TASK_NAMES)}


def _one_hot_logits(labels: np.ndarray, num_classes: int) -> jnp.ndarray:
    return jnp.asarray(20.0 * np.eye(num_classes)[labels], jnp.float32)


def oracle(name: str, inputs: np.ndarray) -> jnp.ndarray:
    """Perfect outputs [T, B, O] computed from the inputs by the documented rule."""
    T, Bn, _ = inputs.shape
    task = synthetic.get(name)
    if name in ("addition", "multiplication", "xor"):
        values, marks = inputs[..., 0], inputs[..., 1]
        assert np.all(marks.sum(0) == 2), "exactly two marked steps per sequence"
        picked = np.where(marks > 0, values, np.nan)
        idx = np.argsort(marks, axis=0)[-2:]          # the two marked steps
        a, b = np.take_along_axis(values, idx, 0)
        if name == "xor":
            assert np.isin(values, (0.0, 1.0)).all()
            labels = np.broadcast_to((a != b).astype(int), (T, Bn))
            return _one_hot_logits(labels, 2)
        assert np.nanmin(picked) >= 0 and np.nanmax(picked) <= 1
        answer = a + b if name == "addition" else a * b
        return jnp.asarray(np.broadcast_to(answer[None, :, None], (T, Bn, 1)), jnp.float32)
    if name == "parity":
        assert np.isin(inputs, (0.0, 1.0)).all()
        return _one_hot_logits(np.cumsum(inputs[..., 0].astype(int), 0) % 2, 2)
    symbols = inputs.argmax(-1)
    assert np.all(inputs.sum(-1) == 1), "inputs are one-hot"
    if name.startswith("temporal_order"):
        assert np.all(symbols[0] == 7) and np.all(symbols[-1] == 6)
        label = np.zeros(Bn, int)
        n_special = 0
        for t in range(T):
            special = np.isin(symbols[t], (4, 5))
            label = np.where(special, 2 * label + (symbols[t] == 5), label)
            n_special = n_special + special
        assert np.all(n_special == (2 if name == "temporal_order" else 3))
        return _one_hot_logits(np.broadcast_to(label, (T, Bn)), task.output_size)
    if name == "permutation":
        assert np.isin(symbols[0], (0, 1)).all() and (symbols[1:] >= 2).all()
        return _one_hot_logits(np.broadcast_to(symbols[0], (T, Bn)), 100)
    # recall problems: n symbols, blanks, a cue n + 1 steps before the end, n blanks
    n = {"memorization5": 5, "memorization20": 10, "copy": 10}[name]
    char_size = task.output_size - 1
    cue, blank = char_size, char_size + 1
    assert (symbols[:n] < char_size).all()
    assert (symbols[T - n - 1] == cue).all()
    assert (symbols[n:T - n - 1] == blank).all() and (symbols[T - n:] == blank).all()
    labels = np.full((T, Bn), char_size)               # the blank output class
    labels[T - n:] = symbols[:n]
    return _one_hot_logits(labels, task.output_size)


@pytest.mark.parametrize("name", synthetic.TASK_NAMES)
def test_structure_and_oracle_scores_perfectly(batches, name):
    task = synthetic.get(name)
    batch = batches[name]
    T = LENGTHS[name]
    chex.assert_shape(batch.inputs, (T, B, task.input_size))
    chex.assert_shape(batch.mask, (T, B))
    if task.kind == "regression":
        chex.assert_shape(batch.targets, (T, B, 1))
    else:
        chex.assert_shape(batch.targets, (T, B))
        chex.assert_type(batch.targets, jnp.int32)
    outputs = oracle(name, np.asarray(batch.inputs))
    assert float(task.error_rate(outputs, batch)) == 0.0
    assert float(task.loss(outputs, batch)) < 1e-3


@pytest.mark.parametrize("name", synthetic.TASK_NAMES)
def test_constant_guess_fails(batches, name):
    task = synthetic.get(name)
    batch = batches[name]
    T = LENGTHS[name]
    if task.kind == "regression":
        guess = jnp.full((T, B, 1), 1.0 if name == "addition" else 0.25)  # the mean answer
    else:
        guess = jnp.zeros((T, B, task.output_size)).at[..., 0].set(1.0)  # always class 0
    rate = float(task.error_rate(guess, batch))
    assert not synthetic.solved(rate)
    assert rate > 0.3


def test_scored_steps(batches):
    """Last step only for the answer-at-the-end problems; every step for recall and parity."""
    for name in ("addition", "multiplication", "xor", "temporal_order", "temporal_order3",
                 "permutation"):
        mask = np.asarray(batches[name].mask)
        assert mask[-1].all() and mask.sum() == B, name
    for name in ("memorization5", "memorization20", "copy", "parity"):
        assert np.asarray(batches[name].mask).all(), name


def test_marker_windows_scale_with_length():
    # f = T / 100: at T = 200 addition's markers are in [2, 20) and [20, 100).
    assert synthetic.markers(200, ((1, 10), (10, 50))) == [(2, 20), (20, 100)]
    # Windows stay non-empty and ordered for short T.
    spans = synthetic.markers(10, ((1, 10), (30, 40), (50, 60)), inclusive=True)
    assert all(lo < hi for lo, hi in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    batch = synthetic.get("addition").generate(jax.random.PRNGKey(0), 512, 200)
    marks = np.asarray(batch.inputs[..., 1])
    first = marks.argmax(0)
    second = 199 - marks[::-1].argmax(0)
    assert first.min() >= 2 and first.max() < 20
    assert second.min() >= 20 and second.max() < 100


def test_evaluate_and_success_rule():
    task = synthetic.get("addition")

    def perfect(inputs):
        values, marks = inputs[..., 0], inputs[..., 1]
        total = jnp.sum(values * marks, axis=0)
        return jnp.broadcast_to(total[None, :, None], inputs.shape[:2] + (1,))

    key = jax.random.PRNGKey(7)
    rate = synthetic.evaluate(task, perfect, key, 15, num_sequences=10_000, batch_size=5_000)
    assert rate == 0.0 and synthetic.solved(rate)
    noisy = synthetic.evaluate("addition", lambda x: perfect(x) + 0.05, key, 15,
                               num_sequences=500, batch_size=500)
    assert noisy == 1.0 and not synthetic.solved(noisy)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown task 'adding'.*addition"):
        synthetic.get("adding")
    with pytest.raises(ValueError, match="seq_len >= 21"):
        synthetic.get("copy").generate(jax.random.PRNGKey(0), 2, 20)
    with pytest.raises(ValueError, match="batch_size"):
        synthetic.get("parity").generate(jax.random.PRNGKey(0), 0, 5)
    batch = synthetic.get("xor").generate(jax.random.PRNGKey(0), 2, 10)
    with pytest.raises(ValueError, match=r"\[T, B, O\]"):
        synthetic.get("xor").loss(jnp.zeros((10, 2, 1)), batch)
