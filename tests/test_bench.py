"""The benchmark's models: the token-id input path computes the one-hot model.

bench.lm_step defines absl flags at import (it is a script), so it runs in its own
Python process here, away from the experiments' flags of the test process.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

BUILD_BOTH_INPUTS = """
import json
from bench import lm_step
tiny = dict(B=4, T=6, H=8, V=11, E=5, lr=1e-2, unroll={}, opt_level=None, torch_device="cpu")
losses = {}
for inp in ("onehot", "ids"):
    _, step = lm_step.build_jax("rnnjax", "lstm", dict(tiny, input=inp))
    losses[inp] = [step() for _ in range(3)]
print(json.dumps(losses))
"""


def test_token_ids_train_like_one_hot_vectors():
    """--input=ids looks the projection up; the losses of three Adam steps of the LSTM
    model must match the one-hot matmul's (same initial parameters, same data). The
    lookup is the same for every cell; test_lm checks its gradients for each cell."""
    out = subprocess.run([sys.executable, "-c", BUILD_BOTH_INPUTS], capture_output=True,
                         text=True, check=True).stdout
    losses = json.loads(out.strip().splitlines()[-1])
    np.testing.assert_allclose(losses["ids"], losses["onehot"], rtol=1e-5)
    assert losses["ids"][-1] < losses["ids"][0], "did not train"


ONEDNN_LIKE_XLA = """
import json, warnings
from bench import lm_step
from rnnjax.kernels import onednn
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if not onednn.available():
        print(json.dumps(None))
        raise SystemExit
tiny = dict(B=4, T=6, H=8, V=11, E=5, lr=1e-2, unroll={}, opt_level=None, torch_device="cpu",
            input="ids")
losses = {}
for fw in ("rnnjax", "rnnjax_onednn"):
    _, step = lm_step.build_jax(fw, "gru", tiny)
    losses[fw] = [step() for _ in range(3)]
print(json.dumps(losses))
"""


def test_onednn_column_trains_like_the_xla_column():
    """rnnjax_onednn (oneDNN's GRU primitive, fed one-hot vectors even with --input=ids)
    computes the same model as the rnnjax column: three Adam steps, same losses."""
    out = subprocess.run([sys.executable, "-c", ONEDNN_LIKE_XLA], capture_output=True,
                         text=True, check=True).stdout
    losses = json.loads(out.strip().splitlines()[-1])
    if losses is None:
        pytest.skip("oneDNN kernel unavailable")
    np.testing.assert_allclose(losses["rnnjax_onednn"], losses["rnnjax"], rtol=1e-4)
    assert losses["rnnjax_onednn"][-1] < losses["rnnjax_onednn"][0], "did not train"


def test_cli_prints_a_row_per_model():
    out = subprocess.run(
        [sys.executable, "-m", "bench.lm_step", "--allocator=system", "--cells=tanh",
         "--frameworks=rnnjax", "--input=ids", "--unroll=tanh:2", "--batch=4",
         "--length=5", "--hidden=8", "--rounds=1", "--steps=1", "--warmup=0"],
        capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| tanh |")]
    assert [r.split("|")[2].strip() for r in rows] == ["rnnjax"]


def test_cli_rejects_an_unknown_framework():
    proc = subprocess.run([sys.executable, "-m", "bench.lm_step", "--allocator=system",
                           "--frameworks=jax_magic"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "unknown --cells/--frameworks ['jax_magic']" in proc.stderr
