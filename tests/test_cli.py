"""Experiment settings: Config dataclasses, their flags and checks (experiments/cli.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import app, flags

from experiments import cli


@dataclasses.dataclass(frozen=True)
class Config(cli.TrainConfig):
    steps: int = 7                                     # a new default, the base's help and check
    temperature: float = cli.field(0.8, "Sampling temperature.", check=cli.non_negative)
    factors: tuple[int, ...] = cli.field((10, 100), "Multiples.", check=cli.positive)
    grid: tuple[str, ...] = cli.field((), "NAME=VALUES.", repeat=True)
    level: str = cli.field("char", "Tokens.", choices=("char", "word"))
    prime: str | None = cli.field(None, "Text to start from.")


def _parse(*argv):
    values = flags.FlagValues()
    cli.define_flags(Config, values)
    values(["prog", *argv])
    return cli.from_flags(Config, ["prog"], values)


def test_flags_carry_the_config_defaults_and_types():
    config = _parse()
    assert config == Config() and config.steps == 7 and config.factors == (10, 100)
    config = _parse("--steps=3", "--factors=2,4", "--grid=a=1,2", "--grid=b=3", "--level=word",
                    "--noprogress", "--prime=ROMEO", "--clip_norm=0.5")
    assert config == Config(steps=3, factors=(2, 4), grid=("a=1,2", "b=3"), level="word",
                            progress=False, prime="ROMEO", clip_norm=0.5)


@pytest.mark.parametrize("argv, message", [
    (["--steps=0"], "--steps=0 is invalid: expected a positive integer"),
    (["--learning_rate=inf"], "--learning_rate=inf is invalid: expected a finite number"),
    (["--temperature=nan"], "--temperature=nan is invalid: expected a finite number"),
    (["--temperature=-1"], "--temperature=-1.0 is invalid: expected a non-negative number"),
    (["--decay_rate=1.5"], "--decay_rate=1.5 is invalid: expected a factor in (0, 1]"),
    (["--factors=2,-1"], "--factors=(2, -1) is invalid: expected a positive number"),
    (["--factors=2,x"], "--factors='2,x' is invalid: expected a comma-separated list of int"),
    (["--clip_norm=-1"], "--clip_norm=-1.0 is invalid: expected a positive number"),
    (["--lr_schedule=warmup_cosine", "--warmup_steps=7"],
     "--warmup_steps=7 is invalid: must be smaller than --steps=7"),
])
def test_bad_flags_name_the_flag_and_what_is_accepted(argv, message):
    with pytest.raises(app.UsageError) as err:
        _parse(*argv)
    assert message in str(err.value)


def test_python_callers_get_the_same_checks():
    with pytest.raises(cli.ConfigError, match=r"^hidden=0 is invalid: expected a positive integer"):
        cli.validate(Config(hidden=0))
    with pytest.raises(cli.ConfigError, match="optimizer='lbfgs' is invalid: accepted values are"):
        cli.validate(Config(optimizer="lbfgs"))
    with pytest.raises(cli.ConfigError, match="steps=2.5 is invalid: expected an integer"):
        cli.validate(Config(steps=2.5))
    with pytest.raises(TypeError, match="immutable"):
        cli.field([1], "a list default")


def test_parse_value_converts_texts_by_the_field_type():
    assert cli.parse_value(Config, "steps", "12") == 12
    assert cli.parse_value(Config, "clip_norm", "none") is None
    assert cli.parse_value(Config, "progress", "false") is False
    assert cli.parse_value(Config, "factors", "3,5") == (3, 5)
    with pytest.raises(cli.ConfigError, match="steps='x' is invalid: expected int"):
        cli.parse_value(Config, "steps", "x")
    with pytest.raises(cli.ConfigError, match="not a setting"):
        cli.parse_value(Config, "nope", "1")


def test_workdir_session_locks_and_refuses_a_mistaken_rerun(tmp_path):
    workdir = str(tmp_path / "run")
    with cli.workdir_session(workdir, Config()):
        with pytest.raises(cli.USER_ERRORS, match="in use by another run"):
            with cli.workdir_session(workdir, Config()):
                pass
    saved = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(cli.USER_ERRORS, match=r"hidden: saved 32, given 8.*nothing was written"):
        with cli.workdir_session(workdir, Config(hidden=8)):
            pass
    assert open(os.path.join(workdir, "config.json")).read() == saved   # untouched
    with cli.workdir_session(workdir, Config(steps=20)):                 # steps may grow
        pass
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["steps"] == 20
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(cli.ConfigError, match="workdir=.*writable directory"):
        with cli.workdir_session(str(blocker / "run"), Config()):
            pass


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.handset", "--network=sum",
                           "--inputs=1,x"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--inputs='1,x' is invalid: expected comma-separated numbers" in proc.stderr


def test_multi_process_flags_are_checked_before_any_work():
    for argv, message in [(["--num_processes=2", "--process_id=2"], "--process_id=2 is invalid"),
                          (["--coordinator_address=nohostport"], "expected host:port"),
                          (["--num_processes=0"], "--num_processes=0 is invalid")]:
        with pytest.raises(app.UsageError, match=message):
            _parse(*argv)


def test_optional_numbers_take_none_on_the_command_line():
    assert _parse("--clip_norm=none").clip_norm is None
    assert _parse("--clip_norm=2").clip_norm == 2.0
    with pytest.raises(flags.IllegalFlagValueError):
        _parse("--clip_norm=abc")


def test_an_experiment_stops_before_any_work_on_a_bad_flag(tmp_path):
    workdir = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.char_lm", "--optimizer=lbfgs", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--optimizer=lbfgs" in proc.stderr and "adam" in proc.stderr   # absl's enum check
    assert not workdir.exists()  # nothing was written: it stopped before any work
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.char_lm", "--steps=0", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode != 0 and "--steps=0 is invalid: expected a positive integer" in proc.stderr
    assert not workdir.exists()


def test_helpfull_documents_the_common_flags():
    proc = subprocess.run([sys.executable, "-m", "experiments.char_lm", "--helpfull"],
                          capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    for f in dataclasses.fields(cli.TrainConfig):
        assert f"--{f.name}" in proc.stdout or f"--[no]{f.name}" in proc.stdout, f.name
    for name in ("workdir", "compilation_cache", "num_processes", "allocator"):
        assert f"--{name}" in proc.stdout, name


def test_checkpoint_every_is_ignored_without_a_workdir(tmp_path):
    # Without a workdir a run trains without writing files (checkpoint_every has nowhere to go).
    assert cli.loop_kwargs(Config(checkpoint_every=200), None)["checkpoint_every"] is None
    assert cli.loop_kwargs(Config(checkpoint_every=200), str(tmp_path))["checkpoint_every"] == 200


def test_info_logs_stay_quiet_unless_verbosity_is_given():
    # Orbax and JAX log every checkpoint and backend probe at INFO: without --verbosity the
    # experiments show warnings and worse only; --verbosity=0 shows INFO again.
    from absl import logging as absl_logging
    before = absl_logging.get_verbosity()
    try:
        for argv, level in [([], absl_logging.WARNING), (["--verbosity=0"], absl_logging.INFO)]:
            absl_logging.set_verbosity(absl_logging.INFO)
            values = flags.FlagValues()
            flags.DEFINE_integer("verbosity", -1, "as absl's", flag_values=values)
            cli.define_flags(Config, values)
            values(["prog", *argv])
            cli.from_flags(Config, ["prog"], values)
            assert absl_logging.get_verbosity() == level
    finally:
        absl_logging.set_verbosity(before)


def test_results_file_survives_a_line_cut_short(tmp_path):
    path = str(tmp_path / "r" / "rows.jsonl")
    cli.append_jsonl(path, {"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "b"')  # a run killed while writing
    cli.append_jsonl(path, {"a": 3})
    with pytest.warns(UserWarning, match=r"rows.jsonl: skipped 1 unreadable line\(s\) \(line 2\)"):
        assert cli.read_jsonl(path) == [{"a": 1}, {"a": 3}]
    assert open(path).read().splitlines() == ['{"a": 1}', '{"a": 2, "b"', '{"a": 3}']
