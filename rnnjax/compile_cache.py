"""A persistent XLA compilation cache, one directory per machine.

Why: compiling a training step takes 1.4–2 s on a 2-core CPU (an LSTM or GRU
language model at B=32, T=100, H=256), longer for bigger models or ``unroll=8``,
and every run of an experiment (a restart from a checkpoint, ``--sample_only``, one
point of a sweep with the same shapes) compiles the same programs again. JAX can
keep compiled programs on disk (``jax_compilation_cache_dir``); the second run
then loads them: 0.03–0.06 s instead of 1.4–2.0 s for the three cells' train
steps on this project's CPU (docs/performance.md).

Why one directory per machine: on the CPU a cache entry is native code for the
machine that compiled it. A home directory shared by machines with different CPUs
(a cluster's login and compute nodes) would hand one machine another's code, so
:func:`enable` keeps each machine's entries apart, under ``root/<machine id>``.

Usage, before the first compilation::

    from rnnjax import compile_cache
    compile_cache.enable()            # ~/.cache/rnnjax/xla/<machine id>
    compile_cache.enable("/scratch/me/xla")

The experiments do this through their ``--compilation_cache`` flag. The cache is
trusted code: do not point it at a directory others can write to.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import uuid
from pathlib import Path

import jax

__all__ = ["ENV_VAR", "default_root", "machine_id", "enable", "disable", "directory"]

ENV_VAR = "RNNJAX_COMPILATION_CACHE"
"""Environment variable that overrides :func:`default_root` (e.g. a scratch disk)."""

MIN_COMPILE_SECONDS = 0.3
"""Programs that compile faster than this are not written (JAX's default is 1 s)."""


def default_root() -> Path:
    """``$RNNJAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/rnnjax/xla``, else
    ``~/.cache/rnnjax/xla``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "rnnjax" / "xla"


def _cpu_description() -> str:
    """The CPU model and instruction-set flags (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        fields = [line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith(("model name", "flags", "Features", "CPU part"))]
        if fields:
            return "\n".join(dict.fromkeys(fields))  # one copy per distinct line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def machine_id() -> str:
    """A filesystem-safe name for this machine and its CPU, e.g. ``myhost-3fa2c1d09b``.

    The host name keeps machines apart; the hash of the CPU's model and feature
    flags keeps apart hosts that share a name but not an instruction set.
    """
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", platform.node() or "host")[:64]
    digest = hashlib.sha256(_cpu_description().encode()).hexdigest()[:10]
    return f"{host}-{digest}"


def directory() -> Path | None:
    """The cache directory in use, or None when the cache is off."""
    path = jax.config.jax_compilation_cache_dir
    return Path(path) if path else None


def _reset_cache() -> None:
    # JAX opens the cache at the first compilation and keeps it; a new directory
    # (or none) takes effect only after a reset, which is harmless before that.
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()


def enable(root: str | os.PathLike | None = None, *,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Path:
    """Keep compiled programs in ``root/<machine_id()>``; return that directory.

    Args:
      root: parent of the per-machine directories (default: :func:`default_root`).
      min_compile_seconds: programs that compile faster are not written.

    Raises:
      ValueError: ``root`` cannot be used as a directory (names it and why).
    """
    path = Path(root if root is not None else default_root()).expanduser() / machine_id()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe name unique to this process: two processes enabling the
        # cache at once (a sweep's workers) must not delete each other's probe.
        probe = path / f".write_probe.{os.getpid()}.{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"compilation cache directory {str(path)!r} is not a writable "
                         f"directory ({e.strerror or e}); give a writable directory, or "
                         f"turn the cache off") from e
    if directory() != path:
        _reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path


def disable() -> None:
    """Stop reading and writing the cache (compiled programs stay on disk)."""
    if directory() is not None:
        _reset_cache()
        jax.config.update("jax_compilation_cache_dir", None)
