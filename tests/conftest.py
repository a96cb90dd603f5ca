"""Shared test fixtures and settings."""

import jax
import pytest

# The tests compare float32 results with references (the Python-loop recurrence, the
# hand-written BPTT, Flax, explicit Jacobians) to float32 rounding. On NVIDIA GPUs JAX's
# default float32 matmul runs in TF32 (a 10-bit mantissa: relative errors ~1e-3), which
# fails those comparisons for reasons that are not rnnjax's: on the H200, 39 tests did.
# So every test runs its matmuls at full float32 precision; on the CPU this changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
