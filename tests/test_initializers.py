"""initializers.sparse: k incoming weights per unit, spectral-radius scaling, by name."""

import jax
import numpy as np
import pytest

from rnnjax import cells, initializers


@pytest.mark.parametrize("k,shape", [(15, (100, 100)), (3, (8, 32)), (15, (6, 10))])
def test_sparse_connection_count(k, shape):
    w = np.asarray(initializers.sparse(k)(jax.random.PRNGKey(0), shape))
    assert np.all((w != 0).sum(axis=0) == min(k, shape[0]))   # per unit (column)
    assert w[w != 0].std() > 0.5                              # N(0, 1) weights


def test_sparse_spectral_radius_and_every_cell():
    w = initializers.sparse(15, radius=0.95)(jax.random.PRNGKey(1), (50, 50))
    np.testing.assert_allclose(float(initializers.spectral_radius(w)), 0.95, rtol=1e-5)
    assert np.all((np.asarray(w) != 0).sum(axis=0) == 15)
    for name in ("tanh", "lstm", "gru"):
        cell = cells.by_name(name, 20, recurrent_init="sparse", spectral_radius=1.1)
        w_hh = np.asarray(cell.init(jax.random.PRNGKey(2), 3)["W_hh"])
        assert np.all((w_hh != 0).sum(axis=0) == 15), name
        np.testing.assert_allclose(float(initializers.spectral_radius(w_hh[:, :20])), 1.1,
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="k \\(connections per unit\\)"):
        initializers.sparse(0)
