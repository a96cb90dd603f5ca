"""TensorBoard event files written and read back (rnnjax.tensorboard)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from rnnjax import tensorboard  # noqa: E402


def test_scalars_images_and_text_round_trip(tmp_path):
    with tensorboard.EventLog(str(tmp_path)) as log:
        for step in (10, 20, 30):
            log.scalars(step, {"step": step, "loss": 1.0 / step, "finite": True,
                               "eval_bits": float("nan"), "note": "text is not a scalar"})
        log.image("diagnostics/heatmap", np.linspace(0, 1, 4 * 5 * 3).reshape(4, 5, 3), 30)
        log.text("sample", "ROMEO: what light", 30)
    events = tensorboard.read_events(str(tmp_path / tensorboard.SUBDIR))
    scalars = tensorboard.read_scalars(str(tmp_path / tensorboard.SUBDIR))
    assert set(scalars) == {"loss"}          # step, booleans, NaN and strings are not scalars
    assert [s for s, _ in scalars["loss"]] == [10, 20, 30]
    np.testing.assert_allclose([v for _, v in scalars["loss"]], [0.1, 0.05, 1 / 30], rtol=1e-6)
    assert events["diagnostics/heatmap"] == [(30, "image")]
    assert events["sample"] == [(30, "ROMEO: what light")]


def test_disabled_and_non_primary_logs_write_nothing(tmp_path):
    for log in (tensorboard.EventLog(str(tmp_path), enabled=False),
                tensorboard.EventLog(str(tmp_path), process_index=1), tensorboard.EventLog(None)):
        log.scalars(1, {"loss": 1.0})
        log.close()
        assert not log.active
    assert not (tmp_path / tensorboard.SUBDIR).exists()
