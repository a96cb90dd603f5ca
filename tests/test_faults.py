"""Fault injection: a run never loses work and never ends in a traceback.

NaN at one step with the progress bar on, an infinite learning rate, corrupt
checkpoints of every kind (resume falls back to the newest one that verifies),
a bad metrics line, two processes on one workdir, a stale lock, a mistaken rerun,
a full disk. (Runs killed at random moments, also during a save, are in
tests/test_train.py.)
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from rnnjax import checkpoint, errors, metrics, optim, train, workdir

TRUE_W = jnp.array([1.0, -2.0, 0.5])


def loss_fn(params, batch, key):
    x, y, poison = batch
    noise = 0.01 * jax.random.normal(key, y.shape)
    loss = jnp.mean((x @ params["w"] + params["b"] - y - noise) ** 2)
    return loss * jnp.where(poison, jnp.nan, 1.0)


def batch_fn(step: int, poison_at: tuple[int, ...] = ()):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(7), step), (16, 3))
    return x, x @ TRUE_W + 0.3, jnp.asarray(step in poison_at)


def fresh_state(opt):
    return train.init_state({"w": jnp.zeros(3), "b": jnp.zeros(())}, opt, seed=0)


OPT = optim.make("adam", 0.05)
STEP = jax.jit(train.make_train_step(loss_fn, OPT))


def run_to(wd, steps, **kw):
    kw = dict(dict(log_every=5, checkpoint_every=10, keep=3, progress=False, jit=False), **kw)
    return train.run(wd, fresh_state(OPT), STEP, batch_fn, steps=steps, **kw)


def losses(history):
    return [(r["step"], r["loss"]) for r in history]


# ----------------------------------------------------------------------------- the guard

def test_a_nan_step_with_the_progress_bar_on_is_skipped_not_a_type_error(capsys):
    poisoned = lambda s: batch_fn(s, poison_at=(3,))
    state, history = train.run(None, fresh_state(OPT), STEP, poisoned, steps=6, log_every=1,
                               progress=True, jit=False)
    assert history[3]["loss"] == "nan" and history[3]["finite"] == 0.0
    assert int(state.total_bad_steps) == 1 and int(state.bad_steps) == 0
    with pytest.raises(errors.NonFiniteError, match="2 non-finite steps in a row"):
        train.run(None, fresh_state(OPT), STEP, lambda s: batch_fn(s, poison_at=(2, 3)),
                  steps=6, log_every=1, progress=True, jit=False, max_bad_steps=2)


def test_an_infinite_learning_rate_never_reaches_a_checkpoint(tmp_path):
    """The loss and gradient are finite; the updated params are not: the guard sees them."""
    opt = optax.sgd(jnp.inf)  # rnnjax.optim refuses this rate; a custom optimizer may not
    step = train.make_train_step(loss_fn, opt)
    wd = str(tmp_path)
    with pytest.raises(errors.NonFiniteError, match="3 non-finite steps in a row") as info:
        train.run(wd, fresh_state(opt), step, batch_fn, steps=20, log_every=1,
                  checkpoint_every=1, max_bad_steps=3, progress=False)
    assert "\n" not in str(info.value) and "no checkpoint yet" in str(info.value)
    assert checkpoint.all_steps(wd) == []
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
        optim.make("sgd", float("inf"))


def test_save_refuses_a_non_finite_state(tmp_path):
    state = fresh_state(OPT)
    mngr = checkpoint.manager(str(tmp_path))
    try:
        with pytest.raises(errors.NonFiniteError, match=r"refusing to save checkpoint 1.*\['w'\]"):
            checkpoint.save(mngr, 1, state._replace(params={"w": jnp.full(3, jnp.nan),
                                                            "b": jnp.zeros(())}))
    finally:
        mngr.close()
    assert checkpoint.all_steps(str(tmp_path)) == []


def test_a_non_finite_initial_state_is_refused_before_any_work(tmp_path):
    state = fresh_state(OPT)._replace(params={"w": jnp.array([1.0, jnp.inf, 0.0]),
                                              "b": jnp.zeros(())})
    with pytest.raises(errors.NonFiniteError, match=r"initial state .*\['w'\]"):
        train.run(str(tmp_path / "w"), state, STEP, batch_fn, steps=5, progress=False)
    assert not os.path.exists(tmp_path / "w" / metrics.FILE)


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run to step 40, and a workdir with checkpoints 10, 20, 30."""
    root = tmp_path_factory.mktemp("faults")
    _, history = run_to(str(root / "straight"), 40)
    run_to(str(root / "at30"), 30)
    return history, str(root / "at30")


def _files(wd, step, pattern):
    base = os.path.join(wd, checkpoint.CHECKPOINT_DIR, str(step))
    out = []
    for dirpath, _, names in os.walk(base):
        out += [os.path.join(dirpath, n) for n in names if pattern(dirpath, n)]
    assert out, f"no file matched in {base}"
    return out


def _flip(path):
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _data_file(dirpath, name):
    return os.path.basename(dirpath) == "d"


CORRUPTIONS = {
    "flipped data": lambda wd: [_flip(p) for p in _files(wd, 30, _data_file)],
    "truncated data": lambda wd: [open(p, "r+b").truncate(os.path.getsize(p) // 3)
                                  for p in _files(wd, 30, _data_file)],
    "missing _METADATA": lambda wd: [os.remove(p) for p in _files(wd, 30, lambda d, n: n == "_METADATA")],
    "zeroed manifest": lambda wd: [open(p, "r+b").write(b"\0" * os.path.getsize(p))
                                   for p in _files(wd, 30, lambda d, n: n == "manifest.ocdbt")],
    "zeroed checkpoint metadata": lambda wd: [
        open(p, "r+b").write(b"\0" * os.path.getsize(p))
        for p in _files(wd, 30, lambda d, n: n == "_CHECKPOINT_METADATA")],
    "changed values, same format": None,   # see _rewrite_values
    "stray directory": lambda wd: os.makedirs(os.path.join(wd, checkpoint.CHECKPOINT_DIR, "999")),
}


def _rewrite_values(wd):
    """Checkpoint 30's data replaced by other finite values, metadata untouched: only the
    checksum can tell (the case of a flipped byte that still decodes)."""
    mngr = checkpoint.manager(wd, keep=None)
    good = checkpoint.restore(wd, fresh_state(OPT), step=30)
    meta = mngr.metadata(30).custom_metadata
    shutil.rmtree(os.path.join(wd, checkpoint.CHECKPOINT_DIR, "30"))
    mngr.reload()
    changed = good._replace(params=jax.tree.map(lambda p: p + 1.0, good.params))
    mngr.save(30, args=checkpoint.ocp.args.StandardSave(changed), custom_metadata=meta)
    mngr.wait_until_finished()
    mngr.close()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_falls_back_to_the_newest_that_verifies(tmp_path, straight, kind):
    history, at30 = straight
    wd = str(tmp_path / "w")
    shutil.copytree(at30, wd)
    (CORRUPTIONS[kind] or _rewrite_values)(wd)
    bad = "999" if kind == "stray directory" else "30"
    with pytest.warns(UserWarning, match=rf"checkpoint .*{os.sep}{bad} is unusable") as seen:
        _, resumed = run_to(wd, 40)
    assert not [w for w in seen if "\n" in str(w.message)]  # one line each
    assert losses(resumed) == losses(history)  # resumed from the older one, bit for bit
    assert checkpoint.latest_step(wd) == 40     # nothing blocks the later saves
    assert os.path.isdir(os.path.join(wd, checkpoint.UNUSABLE_DIR, bad))  # kept aside, not deleted


def test_when_no_checkpoint_verifies_the_error_is_one_line_and_nothing_moves(tmp_path, straight):
    _, at30 = straight
    wd = str(tmp_path / "w")
    shutil.copytree(at30, wd)
    for step in (10, 20, 30):
        for p in _files(wd, step, lambda d, n: n == "manifest.ocdbt"):
            open(p, "r+b").write(b"\0" * os.path.getsize(p))
    before = sorted(os.listdir(os.path.join(wd, checkpoint.CHECKPOINT_DIR)))
    with pytest.raises(errors.CheckpointError) as info:
        run_to(wd, 40)
    assert "\n" not in str(info.value) and "step 30" in str(info.value)
    assert "Traceback" not in str(info.value)
    assert sorted(os.listdir(os.path.join(wd, checkpoint.CHECKPOINT_DIR))) == before
    assert not os.path.exists(os.path.join(wd, checkpoint.UNUSABLE_DIR))


# ----------------------------------------------------------------------------- metrics

def test_a_bad_metrics_line_is_skipped_and_no_valid_row_is_lost(tmp_path, straight):
    history, at30 = straight
    wd = str(tmp_path / "w")
    shutil.copytree(at30, wd)
    path = metrics.path_of(wd)
    lines = open(path).read().splitlines()
    lines[1] = lines[1][:17] + "\x00garbage"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"metrics.jsonl: skipped 1 unreadable line\(s\) \(line 2\)"):
        rows = metrics.read(wd)
    assert [r["step"] for r in rows] == [5, 15, 20, 25, 30]  # every valid row after it kept
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        _, resumed = run_to(wd, 40)
    assert losses(resumed) == [x for x in losses(history) if x[0] != 10]


# ----------------------------------------------------------------------------- the workdir

HOLD_SCRIPT = """
import os, signal, sys, time
from rnnjax import workdir
with workdir.lock(sys.argv[1]):
    print("locked", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""


def _hold(wd, mode):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, wd, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_a_second_run_on_a_locked_workdir_gets_a_clean_error(tmp_path):
    wd = str(tmp_path / "w")
    holder = _hold(wd, "hold")
    try:
        with pytest.raises(errors.WorkdirLockedError, match=rf"{wd}.*pid {holder.pid}\b"):
            with workdir.lock(wd):
                pass
        with pytest.raises(errors.WorkdirLockedError, match=f"pid {holder.pid}"):
            run_to(wd, 5)  # the loop checks too, before it writes anything
        assert not os.path.exists(os.path.join(wd, metrics.FILE))
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    wd = str(tmp_path / "w")
    dead = _hold(wd, "die")
    dead.wait(timeout=60)
    assert dead.returncode == -signal.SIGKILL
    assert f"pid {dead.pid}" in workdir.holder(wd)  # the file is still there
    with workdir.lock(wd):
        assert f"pid {os.getpid()}" in workdir.holder(wd)
        _, history = run_to(wd, 5)  # this process's own lock does not stop its run
    assert history[-1]["step"] == 5


def test_a_mistaken_rerun_is_stopped_before_anything_is_written(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        hidden: int = 32
        learning_rate: float = 0.01
        cells: tuple = ("lstm",)
        steps: int = 100

    wd = str(tmp_path)
    assert workdir.check_config(wd, Config()) is False  # a fresh workdir
    workdir.save_config(wd, Config())
    before = open(os.path.join(wd, "config.json")).read()
    assert workdir.check_config(wd, Config()) is True   # tuples compare as saved lists
    assert workdir.check_config(wd, Config(steps=200), ignore=["steps"]) is True
    with pytest.raises(errors.ConfigMismatchError) as info:
        workdir.check_config(wd, Config(hidden=64, learning_rate=0.1))
    message = str(info.value)
    assert "hidden: saved 32, given 64" in message and "learning_rate: saved 0.01, given 0.1" in message
    assert "\n" not in message and "steps" not in message
    assert open(os.path.join(wd, "config.json")).read() == before


# ----------------------------------------------------------------------------- a full disk

def test_a_full_disk_at_a_checkpoint_is_a_one_line_error_and_the_run_resumes(tmp_path, straight,
                                                                           monkeypatch):
    history, _ = straight
    wd = str(tmp_path / "w")
    real_save = checkpoint.save

    def save(mngr, step, state):
        if step == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(mngr, step, state)

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(errors.DiskFullError) as info:
        run_to(wd, 40)
    message = str(info.value)
    assert "\n" not in message and "disk is full while writing checkpoint 20" in message
    assert "keeps checkpoint 10" in message and "run the same command again" in message
    monkeypatch.setattr(checkpoint, "save", real_save)
    _, resumed = run_to(wd, 40)
    assert losses(resumed) == losses(history)


def test_a_full_disk_at_a_metrics_write_is_a_one_line_error(tmp_path, straight, monkeypatch):
    history, _ = straight
    wd = str(tmp_path / "w")

    class FullFile:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, text):
            self.n += 1
            if self.n == 4:  # the record of step 20
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(train, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    with pytest.raises(errors.DiskFullError, match="the metrics of step 20 .* keeps checkpoint 10"):
        run_to(wd, 40)
    monkeypatch.undo()
    _, resumed = run_to(wd, 40)
    assert losses(resumed) == losses(history)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MB tmpfs (needs root), unmounted afterwards; skipped where it cannot be."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); ENOSPC is injected above instead")
    try:
        yield small
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def _wide_run(wd, steps=30):
    """A state of ~160 KB, a checkpoint every step: a 1 MB disk fills after a few."""
    def loss(p, batch, key):
        return jnp.mean((batch @ p["w"] - 1.0) ** 2)

    opt = optax.sgd(0.01)
    state = train.init_state({"w": jnp.zeros((200, 200))}, opt, seed=0)
    batches = lambda s: jax.random.normal(jax.random.fold_in(jax.random.key(1), s), (4, 200))
    return train.run(wd, state, train.make_train_step(loss, opt), batches, steps=steps,
                     log_every=1, checkpoint_every=1, keep=None, progress=False)


def test_a_really_full_disk_stops_cleanly_and_the_run_resumes_after_space_is_freed(
        tmp_path, tiny_disk):
    wd = str(tiny_disk / "w")
    with pytest.raises(errors.DiskFullError) as info:
        _wide_run(wd)
    assert "\n" not in str(info.value) and "disk is full" in str(info.value)
    kept = checkpoint.latest_step(wd)
    assert kept is not None and f"checkpoint {kept}" in str(info.value)
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    _, resumed = _wide_run(wd)
    _, straight = _wide_run(str(tmp_path / "straight"))
    assert losses(resumed) == losses(straight)


def test_a_full_disk_never_damages_a_side_file(tmp_path, monkeypatch):
    from rnnjax import atomic

    checkpoint.save_json(str(tmp_path), "config", {"hidden": 32})

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)
    with pytest.raises(errors.DiskFullError, match="config.json keeps its previous content"):
        checkpoint.save_json(str(tmp_path), "config", {"hidden": 64})
    monkeypatch.undo()
    assert checkpoint.load_json(str(tmp_path), "config") == {"hidden": 32}
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind


FULL_DISK_SCRIPT = """
import sys
import jax, jax.numpy as jnp, optax
from experiments import cli
from rnnjax import train

def run(config, workdir):
    opt = optax.sgd(0.01)
    state = train.init_state({"w": jnp.zeros((200, 200))}, opt, seed=0)
    loss = lambda p, batch, key: jnp.mean((batch @ p["w"] - 1.0) ** 2)
    batches = lambda s: jax.random.normal(jax.random.fold_in(jax.random.key(1), s), (4, 200))
    return train.run(workdir, state, train.make_train_step(loss, opt), batches, steps=30,
                     log_every=1, checkpoint_every=1, keep=None, progress=False)

cli.call(run, cli.TrainConfig(), sys.argv[1])
"""


def test_a_command_on_a_full_disk_prints_one_line_and_no_traceback(tiny_disk):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tiny_disk / "w")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error: the disk is full while writing")
    assert len(proc.stderr.strip().splitlines()) == 1
