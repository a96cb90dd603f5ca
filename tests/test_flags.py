"""Tests of the common experiment flags and their validation (experiments/flags.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from absl import app, flags
from absl.testing import flagsaver

from experiments import flags as common

FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()
    with flagsaver.flagsaver():  # every test starts from, and restores, the defaults
        yield


def test_defaults_validate_and_build_an_optimizer(tmp_path):
    FLAGS.workdir = str(tmp_path / "run")
    cfg = common.validate()
    assert set(common.COMMON_FLAGS) <= set(cfg)
    assert cfg["workdir"] == str(tmp_path / "run") and os.path.isdir(cfg["workdir"])
    assert hasattr(common.make_optimizer(), "update")
    assert common.loop_kwargs()["steps"] == FLAGS.steps


@pytest.mark.parametrize("flag,value,accepted", [
    ("steps", -5, "positive integer"),
    ("batch_size", 0, "positive integer"),
    ("hidden", -1, "positive integer"),
    ("log_every", 0, "positive integer"),
    ("keep_checkpoints", 0, "positive integer"),
    ("checkpoint_every", -1, "non-negative integer"),
    ("optimizer", "lbfgs", "sgd, momentum, nesterov, rmsprop, adam, adamw"),
    ("cell", "transformer", "tanh, relu"),
    ("lr_schedule", "linear", "constant, cosine"),
    ("learning_rate", 0.0, "positive number"),
    ("clip_norm", -1.0, "positive number"),
    ("decay_rate", 1.5, "factor in (0, 1]"),
    ("decay_steps", -1, "non-negative integer"),
    ("decay_begin", -3, "non-negative integer"),
])
def test_invalid_values_name_the_flag_and_what_is_accepted(flag, value, accepted):
    setattr(FLAGS, flag, value)
    with pytest.raises(app.UsageError) as err:
        common.validate()
    assert f"--{flag}=" in str(err.value) and accepted in str(err.value)


def test_unwritable_workdir_is_rejected(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    FLAGS.workdir = str(blocker / "run")  # cannot be created, even by root
    with pytest.raises(app.UsageError, match="--workdir=.*writable directory"):
        common.validate()


def test_warmup_must_be_shorter_than_the_run():
    FLAGS.lr_schedule, FLAGS.steps, FLAGS.warmup_steps = "warmup_cosine", 10, 10
    with pytest.raises(app.UsageError, match="--warmup_steps=10.*smaller than --steps=10"):
        common.validate()


def test_experiment_stops_before_any_work_on_a_bad_flag(tmp_path):
    workdir = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.parity", "--optimizer=lbfgs", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=120, cwd=os.getcwd(),
        env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode != 0
    assert "--optimizer='lbfgs' is invalid" in proc.stderr and "adam" in proc.stderr
    assert not workdir.exists()  # nothing was written: it stopped before any work


def test_helpfull_documents_the_common_flags():
    proc = subprocess.run([sys.executable, "-m", "experiments.parity", "--helpfull"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "experiments.flags" in proc.stdout, proc.stderr  # (absl exits 1 after --helpfull)
    for name in common.COMMON_FLAGS:
        assert f"--{name}" in proc.stdout or f"--[no]{name}" in proc.stdout, name


@pytest.fixture
def lm_train():
    """experiments.lm_train with its flags defined inside this test's flagsaver: an earlier
    test's flagsaver drops the flags defined within it while the module stays imported, so
    re-run its definitions then. (Importing it at module level instead would define
    --max_minutes with lm_train's default for every later test of the worker, e.g. the
    long_memory ones, which define their own.)"""
    import importlib

    from experiments import hf_flags, lm_train as module
    if "cg_iters" not in FLAGS:  # lm_train imports these; a reload of it alone would not
        importlib.reload(hf_flags)
    if "plateau_factor" not in FLAGS:
        importlib.reload(module)
    return module


def test_language_models_accept_hessian_free_but_not_with_dropout(lm_train):
    FLAGS.optimizer = "hf"
    cfg = lm_train.validate()
    assert cfg["optimizer"] == "hf" and cfg["cg_iters"] == FLAGS.cg_iters
    FLAGS.dropout = 0.2
    with pytest.raises(app.UsageError, match="--dropout=0.2 is invalid with --optimizer=hf"):
        lm_train.validate()
    FLAGS.dropout, FLAGS.curvature_batch_size = 0.0, FLAGS.batch_size + 1
    with pytest.raises(app.UsageError, match="--curvature_batch_size="):
        lm_train.validate()


def test_language_models_data_parallel_is_for_optax_optimizers(lm_train):
    FLAGS.data_parallel = True
    assert lm_train.validate()["data_parallel"] is True  # one CPU device: any batch splits
    FLAGS.optimizer = "hf"
    with pytest.raises(app.UsageError, match="--data_parallel is for the optax optimizers"):
        lm_train.validate()


def test_language_models_check_the_plateau_factor(lm_train):
    FLAGS.plateau_factor = 0.25
    assert lm_train.validate()["plateau_factor"] == 0.25
    FLAGS.plateau_factor = 1.5
    with pytest.raises(app.UsageError, match=r"--plateau_factor=1.5 is invalid: expected a factor"):
        lm_train.validate()
    FLAGS.plateau_factor, FLAGS.eval_every = 0.5, 0
    with pytest.raises(app.UsageError, match="--plateau_factor=0.5 needs periodic evaluations"):
        lm_train.validate()
    FLAGS.eval_every, FLAGS.plateau_threshold = 100, -0.1
    with pytest.raises(app.UsageError, match="--plateau_threshold=-0.1 is invalid"):
        lm_train.validate()


def test_checkpoint_every_is_ignored_without_a_workdir(tmp_path):
    # `python -m experiments.char_lm` without --workdir trains without writing files
    # (its default --checkpoint_every=200 used to stop it with a ValueError).
    FLAGS.checkpoint_every = 200
    assert common.loop_kwargs()["checkpoint_every"] is None
    FLAGS.workdir = str(tmp_path)
    assert common.loop_kwargs()["checkpoint_every"] == 200


def test_info_logs_stay_quiet_unless_verbosity_is_given():
    # Under app.run, absl's verbosity also sets the root logger's level, which is what
    # silences orbax's and JAX's INFO lines (36 of them in `translate --translate`).
    from absl import logging as absl_logging
    before = absl_logging.get_verbosity()
    try:
        absl_logging.set_verbosity(absl_logging.INFO)
        common.validate()   # no --verbosity given: warnings and worse only
        assert absl_logging.get_verbosity() == absl_logging.WARNING
        absl_logging.set_verbosity(absl_logging.INFO)   # as if --verbosity=0 were given
        FLAGS["verbosity"].present = 1
        common.validate()
        assert absl_logging.get_verbosity() == absl_logging.INFO
    finally:
        absl_logging.set_verbosity(before)
