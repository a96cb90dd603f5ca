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
           "memorization20": 26, "copy": 31, "parity": 9, "addition_hs97": 40}


@pytest.fixture(scope="module")
def batches():
    return {name: synthetic.get(name).generate(jax.random.PRNGKey(i), B, LENGTHS[name])
            for i, name in enumerate(synthetic.TASK_NAMES)}


def _one_hot_logits(labels: np.ndarray, num_classes: int) -> jnp.ndarray:
    return jnp.asarray(20.0 * np.eye(num_classes)[labels], jnp.float32)


def _operands(inputs: np.ndarray):
    values, marks = inputs[..., 0], inputs[..., 1]
    assert np.all(marks.sum(0) == 2), "exactly two marked steps per sequence"
    idx = np.sort(np.argsort(marks, axis=0, kind="stable")[-2:], axis=0)  # the marked steps
    a, b = np.take_along_axis(values, idx, 0)
    return values, idx, a, b


def oracle(name: str, inputs: np.ndarray, mask: np.ndarray) -> jnp.ndarray:
    """Perfect outputs [T, B, O] computed from the inputs by the documented rule.

    For the variable-length problems the oracle also checks the length and marker
    windows against each sequence's own length l (its scored step is l - 1).
    """
    T, Bn, _ = inputs.shape
    task = synthetic.get(name)
    if name in ("addition", "multiplication", "addition_hs97"):
        values, (p0, p1), a, b = _operands(inputs)
        length = mask.argmax(0) + 1
        nominal = LENGTHS[name]
        if name == "addition_hs97":  # H&S 1997: l in [T, T + T/10], values in [-1, 1]
            assert length.min() >= nominal and length.max() <= nominal + nominal // 10
            assert values.min() >= -1 and values.max() <= 1 and values.min() < -0.5
            assert p0.max() < 10 and p1.min() >= 10 and np.all(p1 < np.maximum(length // 2, 11))
            answer = 0.5 + (a + b) / 4
        else:  # Pascanu's code: l in [T, T + T/10), p0 < l/10 <= p1 < l/10 + 4l/10
            assert length.min() >= nominal and length.max() < nominal + nominal // 10
            assert values.min() >= 0 and values.max() <= 1
            assert np.all(p0 < length // 10) and np.all(p1 >= length // 10)
            assert np.all(p1 < length // 10 + 4 * length // 10)
            answer = (a + b) / 2 if name == "addition" else a * b
        assert np.all(values[np.arange(T)[:, None] >= length[None, :]] == 0), "padding is zero"
        return jnp.asarray(np.broadcast_to(answer[None, :, None], (T, Bn, 1)), jnp.float32)
    if name == "xor":
        values, _, a, b = _operands(inputs)
        assert np.isin(values, (0.0, 1.0)).all()
        return _one_hot_logits(np.broadcast_to((a != b).astype(int), (T, Bn)), 2)
    if name == "parity":
        assert np.isin(inputs, (0.0, 1.0)).all()
        return _one_hot_logits(np.cumsum(inputs[..., 0].astype(int), 0) % 2, 2)
    symbols = inputs.argmax(-1)
    assert np.all(inputs.sum(-1) == 1), "inputs are one-hot"
    if name.startswith("temporal_order"):
        starts = (0.1, 0.5) if name == "temporal_order" else (0.1, 0.3, 0.6)
        width = T // 10
        special = symbols < 2
        assert np.all(special.sum(0) == len(starts)) and np.all(symbols < 6)
        label = np.zeros(Bn, int)
        for i, s in enumerate(starts):  # one special in each window [sT, sT + T/10)
            window = special[int(s * T):int(s * T) + width]
            assert np.all(window.sum(0) == 1)
            label += 2 ** i * np.sum(symbols[int(s * T):int(s * T) + width] * window, axis=0)
        return _one_hot_logits(np.broadcast_to(label, (T, Bn)), task.output_size)
    if name == "permutation":
        assert np.isin(symbols[0], (0, 1)).all() and (symbols[1:] >= 2).all()
        return _one_hot_logits(np.broadcast_to(symbols[0], (T, Bn)), 100)
    n = {"memorization5": 5, "memorization20": 10, "copy": 10}[name]
    char_size = task.output_size - 1
    labels = np.full((T, Bn), char_size)               # the blank output class
    labels[T - n:] = symbols[:n]
    assert (symbols[:n] < char_size).all()
    if name == "copy":  # n symbols, blanks, a cue n + 1 steps before the end, n blanks
        cue, blank = char_size, char_size + 1
        assert (symbols[T - n - 1] == cue).all()
        assert (symbols[n:T - n - 1] == blank).all() and (symbols[T - n:] == blank).all()
    else:  # Pascanu's memorisation: n symbols, T blanks, the cue on the first recall step
        blank, cue = char_size, char_size + 1
        assert T == LENGTHS[name] + 2 * n
        assert (symbols[T - n] == cue).all()
        assert (symbols[n:T - n] == blank).all() and (symbols[T - n + 1:] == blank).all()
    return _one_hot_logits(labels, task.output_size)


@pytest.mark.parametrize("name", synthetic.TASK_NAMES)
def test_structure_and_oracle_scores_perfectly(batches, name):
    task = synthetic.get(name)
    batch = batches[name]
    T = task.steps(LENGTHS[name])
    chex.assert_shape(batch.inputs, (T, B, task.input_size))
    chex.assert_shape(batch.mask, (T, B))
    if task.kind == "regression":
        chex.assert_shape(batch.targets, (T, B, 1))
    else:
        chex.assert_shape(batch.targets, (T, B))
        chex.assert_type(batch.targets, jnp.int32)
    outputs = oracle(name, np.asarray(batch.inputs), np.asarray(batch.mask))
    assert float(task.error_rate(outputs, batch)) == 0.0
    assert float(task.loss(outputs, batch)) < 1e-3


@pytest.mark.parametrize("name", synthetic.TASK_NAMES)
def test_constant_guess_fails(batches, name):
    task = synthetic.get(name)
    batch = batches[name]
    T = task.steps(LENGTHS[name])
    if task.kind == "regression":
        guess = jnp.full((T, B, 1), 0.25 if name == "multiplication" else 0.5)  # the mean answer
    else:
        guess = jnp.zeros((T, B, task.output_size)).at[..., 0].set(1.0)  # always class 0
    rate = float(task.error_rate(guess, batch))
    assert not synthetic.solved(rate)
    assert rate > 0.3


def test_scored_steps(batches):
    """One step per sequence for the answer-at-the-end problems; every step for recall and parity."""
    for name in ("addition", "multiplication", "addition_hs97"):
        mask = np.asarray(batches[name].mask)
        assert (mask.sum(0) == 1).all(), name
    for name in ("xor", "temporal_order", "temporal_order3", "permutation"):
        mask = np.asarray(batches[name].mask)
        assert mask[-1].all() and mask.sum() == B, name
    for name in ("memorization5", "memorization20", "copy", "parity"):
        assert np.asarray(batches[name].mask).all(), name


def test_marker_windows_scale_with_length():
    # Short sequences keep non-empty, ordered windows (used by XOR).
    spans = synthetic.markers(10, ((1, 10), (30, 40), (50, 60)), inclusive=True)
    assert all(lo < hi for lo, hi in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # Pascanu's addition at T = 200: l in [200, 220), p0 < l/10, p1 in [l/10, l/2).
    batch = synthetic.get("addition").generate(jax.random.PRNGKey(0), 2048, 200)
    assert batch.inputs.shape[0] == 219
    marks = np.asarray(batch.inputs[..., 1])
    first, second = marks.argmax(0), 218 - marks[::-1].argmax(0)
    length = np.asarray(batch.mask).argmax(0) + 1
    assert first.min() == 0 and first.max() >= 19 and np.all(first < length // 10)
    assert second.min() == 20 and second.max() >= 100 and np.all(second < length // 2)
    assert length.min() == 200 and length.max() == 219


def test_regression_thresholds():
    """Pascanu's rule (squared error > 0.04) and Hochreiter & Schmidhuber's (|error| > 0.04)."""
    for name, tol in (("addition", 0.2), ("addition_hs97", 0.04)):
        task = synthetic.get(name)
        batch = task.generate(jax.random.PRNGKey(3), 64, 30)
        answer = jnp.sum(batch.targets * batch.mask[..., None], 0)[None]
        shape = batch.targets.shape
        for delta, wrong in ((0.9 * tol, 0.0), (1.1 * tol, 1.0)):
            assert float(task.error_rate(jnp.broadcast_to(answer + delta, shape), batch)) == wrong


def test_evaluate_and_success_rule():
    task = synthetic.get("addition")

    def perfect(inputs):
        values, marks = inputs[..., 0], inputs[..., 1]
        total = jnp.sum(values * marks, axis=0) / 2
        return jnp.broadcast_to(total[None, :, None], inputs.shape[:2] + (1,))

    key = jax.random.PRNGKey(7)
    rate = synthetic.evaluate(task, perfect, key, 15, num_sequences=10_000, batch_size=5_000)
    assert rate == 0.0 and synthetic.solved(rate)
    noisy = synthetic.evaluate("addition", lambda x: perfect(x) + 0.25, key, 15,
                               num_sequences=500, batch_size=500)
    assert noisy == 1.0 and not synthetic.solved(noisy)


def test_error_rates_of_many_networks_match_evaluate_one_at_a_time():
    """N networks scored in one call see, per key, the sequences ``evaluate`` draws."""
    half = lambda x: jnp.full(x.shape[:-1] + (1,), 0.5)  # right only near the mean answer
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    rates = synthetic.error_rates("addition", jax.vmap(half), keys, 12, num_sequences=300,
                                  batch_size=128)
    chex.assert_shape(rates, (3,))
    alone = [synthetic.evaluate("addition", half, k, 12, num_sequences=300, batch_size=128)
             for k in keys]
    np.testing.assert_array_equal(rates, alone)
    assert 0 < rates.min() and rates.max() < 1 and len(set(rates.tolist())) > 1


@pytest.mark.parametrize("name", ["temporal_order", "temporal_order3", "xor"])
def test_error_rates_by_class_split_the_errors_by_the_answer(name):
    """A network that always answers class 1 is wrong on every other class only; the
    rates by class agree with error_rates on the same sequences."""
    task = synthetic.get(name)
    one = lambda x: jnp.zeros(x.shape[:-1] + (task.output_size,)).at[..., 1].set(1.0)
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    rates, by_class = synthetic.error_rates_by_class(task, jax.vmap(one), keys, 20,
                                                     num_sequences=400, batch_size=150)
    chex.assert_shape(by_class, (2, task.output_size))
    expected = np.ones(task.output_size)
    expected[1] = 0.0
    np.testing.assert_array_equal(by_class, np.broadcast_to(expected, by_class.shape))
    np.testing.assert_array_equal(rates, synthetic.error_rates(
        task, jax.vmap(one), keys, 20, num_sequences=400, batch_size=150))
    assert 0 < rates.min() < 1


def test_error_rates_by_class_needs_one_answer_per_sequence():
    assert synthetic.answered_once("permutation") and not synthetic.answered_once("memorization5")
    zeros = lambda x: jnp.zeros(x.shape[:-1] + (3,))
    with pytest.raises(ValueError, match="one class at one step, got 'memorization5'"):
        synthetic.error_rates_by_class("memorization5", zeros, jax.random.PRNGKey(0)[None], 20)
    with pytest.raises(ValueError, match="got 'addition'"):
        synthetic.error_rates_by_class("addition", zeros, jax.random.PRNGKey(0)[None], 20)


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


def test_padding_leaves_a_causal_models_loss_and_errors_unchanged():
    from rnnjax import cells
    from rnnjax.models import tagger
    task = synthetic.get("addition")
    model = tagger.make(cells.vanilla(8, "tanh"), task.input_size, task.output_size)
    params = model.init(jax.random.PRNGKey(0))
    batch = task.generate(jax.random.PRNGKey(1), 16, 20)
    padded = synthetic.pad(batch, task.steps(20) + 7)
    chex.assert_shape(padded.inputs, (task.steps(20) + 7, 16, 2))
    out, out_p = model.apply(params, batch.inputs), model.apply(params, padded.inputs)
    np.testing.assert_allclose(task.loss(out_p, padded), task.loss(out, batch), rtol=1e-6)
    np.testing.assert_array_equal(task.wrong(out_p, padded), task.wrong(out, batch))
    with pytest.raises(ValueError, match="cannot pad a batch of 21 steps to 20"):
        synthetic.pad(batch, 20)


@pytest.mark.parametrize("name", synthetic.PAPER_TASKS)
def test_one_program_draws_every_length_and_equals_the_padded_batch(name):
    """Pascanu's one length per batch without a compile per length: ``generate_padded``
    with a traced length is traced once and matches ``pad(generate(...))`` exactly."""
    task = synthetic.get(name)
    steps = task.steps(40)
    traces = []

    @jax.jit
    def draw(key, seq_len):
        traces.append(seq_len)  # runs only while tracing
        return task.generate_padded(key, 8, seq_len, steps)

    for i, L in enumerate((10, 23, 40)):
        key = jax.random.PRNGKey(i)
        got = draw(key, L)
        want = synthetic.pad(task.generate(key, 8, L), steps)
        chex.assert_trees_all_equal(got, want)
        chex.assert_trees_all_equal(task.generate_padded(key, 8, L, steps), want)
    assert len(traces) == 1


def test_generate_padded_errors():
    with pytest.raises(ValueError, match="steps=20 is shorter than the 21 steps of seq_len=20"):
        synthetic.get("addition").generate_padded(jax.random.PRNGKey(0), 2, 20, 20)
    with pytest.raises(ValueError, match="seq_len >= 21"):
        synthetic.get("copy").generate_padded(jax.random.PRNGKey(0), 2, 20, 30)
    with pytest.raises(TypeError, match="'copy' draws one length per program"):
        jax.jit(lambda L: synthetic.get("copy").generate_padded(
            jax.random.PRNGKey(0), 2, L, 40))(30)
    padded = synthetic.get("copy").generate_padded(jax.random.PRNGKey(0), 2, 30, 40)
    chex.assert_trees_all_equal(
        padded, synthetic.pad(synthetic.get("copy").generate(jax.random.PRNGKey(0), 2, 30), 40))
