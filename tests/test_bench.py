"""The benchmark's models: the token-id input path computes the one-hot model."""

import subprocess
import sys

import numpy as np
import pytest

from bench import lm_step

TINY = dict(B=4, T=6, H=8, V=11, E=5, lr=1e-2, unroll={}, opt_level=None, torch_device="cpu")


@pytest.mark.parametrize("framework", ["rnnjax", "rnnjax_vjp"])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_token_ids_train_like_one_hot_vectors(framework, cell):
    """--input=ids looks the projection up; the losses of three Adam steps must match the
    one-hot matmul's (same initial parameters, same data)."""
    losses = {}
    for inp in ("onehot", "ids"):
        _, step = lm_step.build_jax(framework, cell, dict(TINY, input=inp))
        losses[inp] = [step() for _ in range(3)]
    np.testing.assert_allclose(losses["ids"], losses["onehot"], rtol=1e-5)
    assert losses["ids"][-1] < losses["ids"][0]  # and it trains


def test_cli_prints_a_row_per_model():
    out = subprocess.run(
        [sys.executable, "-m", "bench.lm_step", "--allocator=system", "--cells=tanh",
         "--frameworks=rnnjax_scan,rnnjax", "--input=ids", "--batch=4", "--length=5",
         "--hidden=8", "--rounds=1", "--steps=1", "--warmup=0"],
        capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| tanh |")]
    assert [r.split("|")[2].strip() for r in rows] == ["rnnjax_scan", "rnnjax"]


def test_cli_rejects_an_unknown_framework():
    proc = subprocess.run([sys.executable, "-m", "bench.lm_step", "--allocator=system",
                           "--frameworks=jax_magic"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "unknown --cells/--frameworks ['jax_magic']" in proc.stderr
