r"""Print the lecture's hand-set RNNs unrolled over a sequence, as the slides show them.

    python -m experiments.handset                          # all three, lecture inputs
    python -m experiments.handset --network=parity --inputs=0110
    python -m experiments.handset --network=sum --inputs=2,-0.5,1,1
    python -m experiments.handset --network=compare --inputs=2:-2,0:3.5,1:2.2 --format=json

From Python: ``handset.run(handset.Config(network="parity", inputs="0110"), None)``
returns ``{"traces": [...]}``, one dict per network (inputs, hidden units, outputs).
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
from absl import app

from experiments import cli
from rnnjax import checkpoint, handset

LECTURE_INPUTS = {"sum": "2,-0.5,1,1", "compare": "2:-2,0:3.5,1:2.2", "parity": "0110101"}
INPUT_FORMATS = {
    "sum": "comma-separated numbers, e.g. 2,-0.5,1,1",
    "compare": "comma-separated x1:x2 pairs, e.g. 2:-2,0:3.5",
    "parity": "a string of bits, e.g. 0110",
}


@dataclasses.dataclass(frozen=True)
class Config:
    network: str = cli.field("all", "Which hand-set network to run.",
                             choices=("all", *handset.NETWORKS))
    inputs: str | None = cli.field(None, "The input sequence (default: the lecture's). " +
                                   "; ".join(f"{k}: {v}" for k, v in INPUT_FORMATS.items()))
    format: str = cli.field("table", "Output format.", choices=("table", "json"))

    def check(self) -> None:
        if self.inputs is not None:
            if self.network == "all":
                raise cli.ConfigError("inputs", self.inputs, "needs a single network=sum, "
                                      "compare or parity")
            try:
                parse_inputs(self.network, self.inputs)
            except ValueError:
                raise cli.ConfigError("inputs", self.inputs,
                                      f"expected {INPUT_FORMATS[self.network]}") from None


def parse_inputs(network: str, text: str) -> list[list[float]]:
    """Parse the inputs text of one network into [T, D] numbers, or raise ValueError."""
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


def run(config: Config, workdir: str | None) -> dict:
    """Unroll the chosen networks; print them; write ``results.json`` into ``workdir``."""
    cli.validate(config)
    networks = list(handset.NETWORKS) if config.network == "all" else [config.network]
    traces = [trace_dict(name, parse_inputs(name, config.inputs or LECTURE_INPUTS[name]))
              for name in networks]
    if config.format == "json":
        print(json.dumps(traces[0] if len(traces) == 1 else traces))
    else:
        print("\n\n".join(format_table(t) for t in traces))
    results = {"traces": traces, "config": cli.as_dict(config)}
    if workdir:
        checkpoint.save_json(workdir, "results", results)
    return results


def main(argv):
    cli.call(run, cli.from_flags(Config, argv))


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
