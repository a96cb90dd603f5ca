"""experiments.translate end to end on a tiny pairs file: train, evaluate, plot, then
--translate from the saved workdir; without a checkpoint it says so. (Malformed pair
files are tested in test_translation_data.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.translate", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def test_translate_experiment_trains_then_translates_from_workdir(tmp_path):
    words = ["abc", "cab", "bca", "aab", "bba", "cca", "acb", "bac", "cba", "abb", "bcc", "cac"]
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    workdir = tmp_path / "run"
    r = _run("--task=tsv", f"--data_path={data}", "--steps=20", "--batch_size=4", "--hidden=8",
             "--embed=4", "--attention_size=4", "--attention=additive", "--beam_width=2",
             "--eval_every=10", "--log_every=10", "--progress=false", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "greedy: exact match" in r.stdout and "beam2: exact match" in r.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["valid_pairs"] == 2 and results["valid_nats"] > 0
    assert 0 <= results["greedy"]["chrf"] <= 100
    assert (workdir / "attention.png").stat().st_size > 1000

    r = _run(f"--workdir={workdir}", "--translate=abc", f"--plot={tmp_path / 'a.png'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "a.png").exists()
    assert set(r.stdout.splitlines()[0]) <= set("abc<unk>")  # a string of the target alphabet

    r = _run(f"--workdir={tmp_path / 'empty'}", "--translate=abc")
    assert r.returncode != 0 and "has no checkpoint" in r.stderr
