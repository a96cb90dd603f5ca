r"""Print the lecture's hand-set RNNs unrolled over a sequence, as the slides show them.

    python -m experiments.handset                          # all three, lecture inputs
    python -m experiments.handset --network=parity --inputs=0110
    python -m experiments.handset --network=sum --inputs=2,-0.5,1,1
    python -m experiments.handset --network=compare --inputs=2:-2,0:3.5,1:2.2 --format=json
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
import jax.numpy as jnp

from rnnjax import handset

LECTURE_INPUTS = {"sum": "2,-0.5,1,1", "compare": "2:-2,0:3.5,1:2.2", "parity": "0110101"}
INPUT_FORMATS = {
    "sum": "comma-separated numbers, e.g. 2,-0.5,1,1",
    "compare": "comma-separated x1:x2 pairs, e.g. 2:-2,0:3.5",
    "parity": "a string of bits, e.g. 0110",
}

_NETWORK = flags.DEFINE_enum("network", "all", ["all", *handset.NETWORKS],
                             "Which hand-set network to run.")
_INPUTS = flags.DEFINE_string(
    "inputs", None, "The input sequence (default: the lecture's). " +
    "; ".join(f"{k}: {v}" for k, v in INPUT_FORMATS.items()))
_FORMAT = flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.")


def parse_inputs(network: str, text: str) -> list[list[float]]:
    """Parse the --inputs text of one network into [T, D] numbers, or raise ValueError."""
    text = text.strip()
    try:
        if network == "parity":
            if not text or set(text) - {"0", "1"}:
                raise ValueError
            return [[float(bit)] for bit in text]
        items = [item.strip() for item in text.split(",")]
        if network == "sum":
            return [[float(item)] for item in items]
        pairs = [item.split(":") for item in items]
        if any(len(p) != 2 for p in pairs):
            raise ValueError
        return [[float(a), float(b)] for a, b in pairs]
    except ValueError:
        raise ValueError(f"--inputs={text!r} is not valid for --network={network}; "
                         f"expected {INPUT_FORMATS[network]}") from None


def trace_dict(network: str, values: list[list[float]]) -> dict:
    trace = handset.run(handset.NETWORKS[network](), jnp.asarray(values))
    return {
        "network": network,
        "inputs": values,
        "hidden": [[round(float(v), 6) for v in row] for row in trace.hidden],
        "outputs": [[round(float(v), 6) for v in row] for row in trace.outputs],
    }


def format_table(result: dict) -> str:
    """One row per time step: t, inputs, hidden units, output."""
    def cells(row):
        return " ".join(f"{v:7.2f}" for v in row)

    n_in, n_hid = len(result["inputs"][0]), len(result["hidden"][0])
    header = (f"{'t':>3} | {'inputs':^{8 * n_in - 1}} | {'hidden':^{8 * n_hid - 1}} | output")
    lines = [f"{result['network']} network", header, "-" * len(header)]
    for t, (x, h, y) in enumerate(zip(result["inputs"], result["hidden"], result["outputs"]), 1):
        lines.append(f"{t:>3} | {cells(x)} | {cells(h)} | {cells(y)}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    networks = list(handset.NETWORKS) if _NETWORK.value == "all" else [_NETWORK.value]
    if _INPUTS.value is not None and len(networks) > 1:
        raise app.UsageError("--inputs needs a single --network (sum, compare or parity)")
    results = []
    for name in networks:
        try:
            values = parse_inputs(name, _INPUTS.value or LECTURE_INPUTS[name])
        except ValueError as e:
            raise app.UsageError(str(e))
        results.append(trace_dict(name, values))
    if _FORMAT.value == "json":
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print("\n\n".join(format_table(r) for r in results))


if __name__ == "__main__":
    app.run(main)
