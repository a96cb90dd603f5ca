"""experiments.translate end to end on a tiny pairs file: train, evaluate, plot, then
--translate from the saved workdir; without a checkpoint it says so. (Malformed pair
files are tested in test_translation_data.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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
    from rnnjax import tensorboard   # TensorBoard: the attention map and the translations
    events = tensorboard.read_events(str(workdir / tensorboard.SUBDIR))
    assert events["attention"] == [(20, "image")] and "->" in events["translations"][0][1]

    r = _run(f"--workdir={workdir}", "--translate=abc", f"--plot={tmp_path / 'a.png'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "a.png").exists()
    assert set(r.stdout.splitlines()[0]) <= set("abc<unk>")  # a string of the target alphabet

    r = _run(f"--workdir={tmp_path / 'empty'}", "--translate=abc")
    assert r.returncode != 0 and "has no checkpoint" in r.stderr


# --------------------------------------------------------------------------- from Python

def _tiny_config(tmp_path, **changes):
    import dataclasses

    from experiments import translate
    words = ["abc", "cab", "bca", "aab", "bba", "cca", "acb", "bac", "cba", "abb", "bcc", "cac"]
    data = tmp_path / "pairs.tsv"
    data.write_text("source\ttarget\n" + "".join(f"{w}\t{w[::-1]}\n" for w in words),
                    encoding="utf-8")
    return dataclasses.replace(
        translate.Config(), task="tsv", data_path=str(data), steps=30, batch_size=4, hidden=8,
        embed=4, attention_size=4, eval_every=15, log_every=5, progress=False,
        learning_rate=1e-2, **changes)


def test_translate_run_from_python_learns_and_a_mistaken_rerun_keeps_the_model(tmp_path):
    """``translate.run(config, workdir)``: trains (the loss falls), writes results.json,
    skips the TSV's header line; a rerun with another model is refused before writing,
    and --translate still works on the workdir afterwards."""
    import dataclasses

    from experiments import translate
    from rnnjax import errors
    config = _tiny_config(tmp_path)
    workdir = tmp_path / "run"
    results = translate.run(config, str(workdir))
    assert json.loads((workdir / "results.json").read_text())["valid_pairs"] == 2
    assert results["train_pairs"] == 10  # 12 pairs, the header not among them
    losses = [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                     .splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]
    saved = (workdir / "config.json").read_text()
    with pytest.raises(errors.ConfigMismatchError, match="hidden: saved 8, given 16"):
        translate.run(dataclasses.replace(config, hidden=16), str(workdir))
    assert (workdir / "config.json").read_text() == saved
    out = translate.run(dataclasses.replace(translate.Config(), translate="abc"), str(workdir))
    assert len(out["outputs"]) == 1 and (workdir / "config.json").read_text() == saved


def test_translate_bad_settings_and_files_are_one_line_errors_before_training(tmp_path):
    import dataclasses

    from experiments import cli, translate
    from rnnjax import errors
    config = _tiny_config(tmp_path)
    workdir = tmp_path / "never"
    for changes, error, match in [
        (dict(data_path=None), cli.ConfigError, "data_path=None is invalid: task=tsv needs"),
        (dict(task="num_de", data_path=None, max_number=5), cli.ConfigError,
         r"max_number=5 is invalid: expected an integer in \[10, 1,000,000\]"),
        (dict(task="num_de", data_path=None, max_number=10**12), cli.ConfigError,
         "max_number=1000000000000 is invalid"),
        (dict(model="lockstep", attention="additive"), cli.ConfigError,
         "attention='additive' is invalid: is for model=seq2seq"),
        (dict(length_penalty=float("nan")), cli.ConfigError, "length_penalty=nan is invalid"),
        (dict(attention="dot", plot=str(tmp_path / "pairs.tsv" / "a.png")), cli.ConfigError,
         "plot=.* is invalid: expected a file that can be written"),
        (dict(batch_size=64), cli.ConfigError, "batch_size=64 is invalid: is larger than the 10"),
        (dict(hidden=3_000_000), cli.ConfigError, "hidden=3000000 is invalid: the model has"),
        (dict(max_length=2), errors.RunError, r"pairs.tsv:2: a side of 3 characters, longer "
         r"than --max_length=2"),
    ]:
        with pytest.raises(error, match=match):
            translate.run(dataclasses.replace(config, **changes), str(workdir))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\n", encoding="utf-8")
    with pytest.raises(errors.RunError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        translate.run(dataclasses.replace(config, data_path=str(bad)), str(workdir))
    assert not workdir.exists()


def test_translate_main_prints_a_tsv_error_as_one_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nc\td\te\n", encoding="utf-8")
    r = _run("--task=tsv", f"--data_path={bad}", f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2: expected")
