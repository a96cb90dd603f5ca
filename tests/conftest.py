"""Shared test fixtures and settings."""

import atexit
import os
import shutil
import tempfile

import jax
import pytest

from rnnjax import compile_cache

# Experiments run in the tests turn the persistent compilation cache on (their
# --compilation_cache=auto default); keep its entries out of the user's home.
if not os.environ.get(compile_cache.ENV_VAR):
    _cache_root = tempfile.mkdtemp(prefix="rnnjax_test_xla_cache_")
    os.environ[compile_cache.ENV_VAR] = _cache_root
    atexit.register(shutil.rmtree, _cache_root, ignore_errors=True)

# The tests compare float32 results with references (the Python-loop recurrence, the
# hand-written BPTT, Flax, explicit Jacobians) to float32 rounding. On NVIDIA GPUs JAX's
# default float32 matmul runs in TF32 (a 10-bit mantissa: relative errors ~1e-3), which
# fails those comparisons for reasons that are not rnnjax's: on the H200, 39 tests did.
# So every test runs its matmuls at full float32 precision; on the CPU this changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
