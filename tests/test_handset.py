"""The lecture's hand-set networks, exactly as on the slides."""

import itertools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import handset as handset_cli
from rnnjax import cells, handset, recurrence


def test_summing_network_lecture_example():
    trace = handset.run(handset.summing_network(), jnp.array([[2.0], [-0.5], [1.0], [1.0]]))
    np.testing.assert_allclose(trace.outputs[:, 0], [2.0, 1.5, 2.5, 3.5])


def test_comparison_network_lecture_example():
    trace = handset.run(handset.comparison_network(),
                        jnp.array([[2.0, -2.0], [0.0, 3.5], [1.0, 2.2]]))
    np.testing.assert_allclose(trace.hidden[:, 0], [4.0, 0.5, -0.7], atol=1e-6)
    np.testing.assert_allclose(np.round(trace.outputs[:, 0], 2), [1.00, 0.92, 0.03])


def _all_bit_strings(length):
    return np.array(list(itertools.product([0.0, 1.0], repeat=length)), np.float32)


@pytest.mark.parametrize("length", range(1, 13))
def test_parity_network_on_every_binary_sequence(length):
    bits = _all_bit_strings(length)                       # [2^T, T]
    trace = handset.run(handset.parity_network(), bits.T[:, :, None])
    np.testing.assert_array_equal(trace.outputs[..., 0], np.cumsum(bits.T, axis=0) % 2)
    # The hidden units are exactly AND and OR of (previous output, input).
    prev = np.concatenate([np.zeros((1, bits.shape[0])), np.cumsum(bits.T, axis=0)[:-1] % 2])
    np.testing.assert_array_equal(trace.hidden[..., 0], np.logical_and(prev, bits.T))
    np.testing.assert_array_equal(trace.hidden[..., 1], np.logical_or(prev, bits.T))


def test_parity_network_on_long_random_sequences():
    bits = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (10_000, 8, 1)).astype(jnp.float32)
    trace = handset.run(handset.parity_network(), bits)
    np.testing.assert_array_equal(trace.outputs[..., 0], np.cumsum(bits[..., 0], axis=0) % 2)


def test_run_rejects_wrong_input_size():
    with pytest.raises(ValueError, match=r"compare network takes inputs \[T, 2\]"):
        handset.run(handset.comparison_network(), jnp.ones((3, 1)))


def test_cli_json_output():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.handset", "--network=parity", "--inputs=0110",
         "--format=json"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert [y[0] for y in result["outputs"]] == [0.0, 1.0, 0.0, 0.0]
    assert len(result["hidden"]) == len(result["inputs"]) == 4


@pytest.mark.parametrize("network, text", [("parity", "01a"), ("sum", "1,,2"),
                                           ("compare", "1:2,3"), ("parity", "")])
def test_cli_rejects_bad_inputs(network, text):
    with pytest.raises(ValueError, match=f"not valid for --network={network}; expected"):
        handset_cli.parse_inputs(network, text)


def test_truth_tables_of_the_hand_set_network():
    tables = handset.truth_tables(handset.parity_network().params)
    assert tables == {"h1 (prev output, input)": "AND", "h2 (prev output, input)": "OR",
                      "output (h1, h2)": "b AND NOT a"}


def test_negated_units_are_mapped_back_to_the_hand_set_form():
    hand = handset.parity_network().params
    flipped = handset.negate_hidden_unit(handset.negate_hidden_unit(hand, 0), 1)
    assert handset.truth_tables(flipped)["h1 (prev output, input)"] == "NAND"
    # The flipped network computes the same parity (logistic units, large weights).
    cell = handset.output_feedback(2, 1, "logistic")
    xs = jax.random.bernoulli(jax.random.key(0), 0.5, (30, 4, 1)).astype(jnp.float32)
    run = lambda p: recurrence.unroll(
        cell, {k: 20 * jnp.asarray(v, jnp.float32) for k, v in p.items()}, xs)[1][..., 2]
    np.testing.assert_allclose(run(flipped), run(hand), atol=1e-4)
    canon = handset.canonical_parity_params(flipped)
    for k, v in hand.items():
        np.testing.assert_allclose(canon[k], v, atol=1e-6)
    # The AND unit goes first: swapping the hidden units is undone too.
    swapped = {k: (np.asarray(v)[..., ::-1] if k in ("W_xh", "W_yh", "b_h")
                   else np.asarray(v)[::-1] if k == "W_hy" else v) for k, v in hand.items()}
    assert handset.truth_tables(swapped)["h1 (prev output, input)"] == "OR"
    for k, v in handset.canonical_parity_params(swapped).items():
        np.testing.assert_allclose(v, hand[k], atol=1e-6)
    table = handset.parity_weight_table(flipped)
    assert table.count("+1.000") == 3  # every unit's cosine with the hand-set one


def test_unit_functions_of_the_hand_set_network():
    """Read from behaviour alone, the hand-set network's units are AND and OR of
    (previous parity, input), and its output unit is their XOR (the new parity)."""
    net = handset.parity_network()
    counts = handset.unit_functions(net.cell, net.params, jax.random.key(0), length=20, num=50)
    assert counts == {"AND": 1, "OR": 1, "XOR": 1}
    # A unit that ignores everything is constant, a cell of noise is "mixed".
    noise = cells.vanilla(4)
    mixed = handset.unit_functions(noise, noise.init(jax.random.key(1), 1), jax.random.key(2),
                                   length=20, num=50)
    assert sum(mixed.values()) == 4
