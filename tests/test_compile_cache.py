"""Tests of rnnjax.compile_cache (the persistent XLA compilation cache) and the
experiments' --compilation_cache flag."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from absl import app

from experiments import cli
from rnnjax import compile_cache



@pytest.fixture(autouse=True)
def restore_cache_setting():
    """Each test leaves the process's cache directory as it found it."""
    before = compile_cache.directory()
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    yield
    if before is None:
        compile_cache.disable()
    else:
        compile_cache.enable(before.parent)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)


def _entries(path):
    """The cache's entries for the test's programs (jnp.ones etc. are cached too)."""
    return sorted(p.name for p in path.iterdir() if p.name.startswith("jit__lambda"))


def _program(scale: float):
    # A fresh jit object each call: only the persistent cache can spare a recompile.
    return jax.jit(lambda x: jnp.tanh(x @ x.T * scale).sum())


def test_machine_id_is_a_safe_name_that_follows_the_cpu(monkeypatch):
    name = compile_cache.machine_id()
    assert re.fullmatch(r"[A-Za-z0-9_.-]+-[0-9a-f]{10}", name) and name == compile_cache.machine_id()
    monkeypatch.setattr(compile_cache, "_cpu_description", lambda: "model A\nflags avx2")
    first = compile_cache.machine_id()
    monkeypatch.setattr(compile_cache, "_cpu_description", lambda: "model A\nflags avx2 avx512f")
    assert compile_cache.machine_id() != first  # same host, other instruction set


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.default_root() == tmp_path / "mine"
    monkeypatch.delenv(compile_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_root() == tmp_path / "xdg" / "rnnjax" / "xla"


def test_a_program_is_written_once_and_then_loaded(tmp_path):
    path = compile_cache.enable(tmp_path, min_compile_seconds=0.0)
    assert path == tmp_path / compile_cache.machine_id() and compile_cache.directory() == path
    x = jnp.ones((8, 8))
    _program(0.5)(x).block_until_ready()
    written = _entries(path)
    assert len(written) == 1
    _program(0.5)(x).block_until_ready()   # the same program again: read, not written
    assert _entries(path) == written
    _program(0.25)(x).block_until_ready()  # another program: one more entry
    assert len(_entries(path)) == 2

    compile_cache.disable()
    assert compile_cache.directory() is None
    _program(0.125)(x).block_until_ready()
    assert len(_entries(path)) == 2


def test_an_unusable_directory_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=re.escape(str(blocker)) + ".*not a writable directory"):
        compile_cache.enable(blocker)


def test_the_flag_turns_the_cache_on_and_off(tmp_path):
    cli.apply_compilation_cache(str(tmp_path))
    assert compile_cache.directory() == tmp_path / compile_cache.machine_id()
    cli.apply_compilation_cache("none")
    assert compile_cache.directory() is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(app.UsageError, match="--compilation_cache=.*not a writable directory"):
        cli.apply_compilation_cache(str(tmp_path / "file"))


RACE_SCRIPT = """
import sys, time
from rnnjax import compile_cache
root, start_at = sys.argv[1], float(sys.argv[2])
while time.time() < start_at:
    pass
n, end = 0, time.time() + 0.5
while time.time() < end:  # prove the directory writable again and again, as a sweep's workers do
    compile_cache.enable(root)
    n += 1
print(n)
"""


def test_two_processes_enabling_the_cache_at_once_do_not_race(tmp_path):
    """Each process probes writability with its own file name: with one shared name,
    one process deletes the other's probe (FileNotFoundError, an 'invalid' cache)."""
    import subprocess
    import sys
    import time

    start_at = str(time.time() + 4.0)  # both import jax first, then start together
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(tmp_path), start_at],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert int(out.split()[-1]) > 0
    assert not [p.name for p in (tmp_path / compile_cache.machine_id()).glob(".write_probe*")]
