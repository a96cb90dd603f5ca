"""experiments.gradient_flow: the table and plot of gradient flow at initialisation, written
inside the workdir; every bad setting refused before any work."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from experiments import cli, gradient_flow


def test_run_measures_every_configuration_inside_the_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written outside the workdir would land here
    (tmp_path / "plots").mkdir()
    config = gradient_flow.Config(seq_len=10, hidden=8, batch=4, out="plots/flow.png")
    results = gradient_flow.run(config, "w")
    assert sorted(os.listdir(tmp_path)) == ["plots", "w"]
    assert os.path.getsize(tmp_path / "w" / "gradient_vs_lag_init.png") > 1000
    table = (tmp_path / "w" / "gradient_vs_lag_init.md").read_text()
    assert table == results["table"] and table.count("\n") == 2 + len(gradient_flow.CONFIGS)
    saved = json.loads((tmp_path / "w" / "results.json").read_text())
    rows = {r["label"]: r for r in saved["rows"]}
    assert set(rows) == set(gradient_flow.CONFIGS)
    # A smaller spectral radius makes the gradient fade faster going back in time.
    assert rows["tanh, ρ=0.5"]["rate_per_step"] < rows["tanh, ρ=3"]["rate_per_step"]
    assert len(saved["norms"]["LSTM"]) == 10
    # --out gets the same plot and table.
    assert sorted(os.listdir(tmp_path / "plots")) == ["flow.md", "flow.png"]
    assert (tmp_path / "plots" / "flow.md").read_text() == table


@pytest.mark.parametrize("change,message", [
    (dict(task="adding"), "task='adding' is invalid"),
    (dict(task="copy", seq_len=15), "seq_len=15 is invalid: task copy needs an integer >= 21"),
    (dict(hidden=0), "hidden=0 is invalid: expected a positive integer"),
    (dict(batch=-2), "batch=-2 is invalid: expected a positive integer"),
    (dict(seed=-1), "seed=-1 is invalid"),
    (dict(out="flow.txt"), "out='flow.txt' is invalid: expected the path of a .png file"),
    (dict(out="missing/flow.png"), "out='missing/flow.png' is invalid: its directory must exist"),
])
def test_bad_settings_are_refused_before_any_work(change, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.ConfigError, match=re.escape(message)):
        gradient_flow.run(dataclasses.replace(gradient_flow.Config(), **change), "w")
    assert os.listdir(tmp_path) == []


def test_a_directory_as_out_is_refused_not_written_beside(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(cli.ConfigError, match="for a directory, use --workdir"):
        gradient_flow.run(gradient_flow.Config(out=str(tmp_path / "dir")), None)
    assert os.listdir(tmp_path) == ["dir"]
