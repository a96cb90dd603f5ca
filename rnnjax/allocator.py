"""Choosing the process's memory allocator, by re-executing the program.

Why: XLA:CPU asks for a fresh scratch buffer at every training step (tens of MB
for an RNN step; 67 MB for an LSTM at B=32, T=100, H=256). glibc's malloc serves
blocks over its mmap threshold (32 MB at most) by mapping new pages, so every
step pays page faults and zero-filling for that scratch. An allocator that keeps
the pages (mimalloc, from the PyPI wheel ``cmeel-mimalloc``), or glibc told not
to map and not to trim (``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_``, ...),
avoids it. See docs/performance.md for measured effects.

The allocator must be chosen before the process starts (``LD_PRELOAD``, or glibc
reading ``MALLOC_*`` at start-up), so :func:`ensure` re-executes the current
command once with the new environment. Call it first thing in a script's
``main``, before heavy work::

    from rnnjax import allocator
    allocator.ensure("auto")   # mimalloc if installed, else tuned glibc

It does nothing when already applied (an environment marker says so), on
non-Linux systems, or with ``"system"``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ALLOCATORS", "mimalloc_path", "allocator_env", "ensure", "current"]

ALLOCATORS = ("auto", "mimalloc", "glibc-tuned", "system")
_MARKER = "RNNJAX_ALLOCATOR"

# glibc: never serve big blocks by mmap, never give memory back to the OS, and
# grow the heap in large steps, so that XLA's per-step scratch is reused.
GLIBC_TUNED = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "4294967295",
    "MALLOC_TOP_PAD_": "268435456",
}


def mimalloc_path() -> str | None:
    """The shared library of the ``cmeel-mimalloc`` wheel, if it is installed."""
    for entry in sys.path:
        for name in ("libmimalloc.so.3", "libmimalloc.so"):
            path = os.path.join(entry, "cmeel.prefix", "lib", name)
            if os.path.isfile(path):
                return path
    return None


def allocator_env(name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that select allocator ``name`` (a pure function).

    ``auto`` is ``mimalloc`` when its wheel is installed, else ``glibc-tuned``.
    Raises ValueError for an unknown name or for ``mimalloc`` when not installed.
    """
    environ = dict(os.environ if environ is None else environ)
    if name not in ALLOCATORS:
        raise ValueError(f"unknown allocator {name!r}; accepted: {', '.join(ALLOCATORS)}")
    if name == "auto":
        name = "mimalloc" if mimalloc_path() else "glibc-tuned"
    env = {_MARKER: name}
    if name == "mimalloc":
        path = mimalloc_path()
        if path is None:
            raise ValueError("allocator 'mimalloc' needs the PyPI wheel: pip install cmeel-mimalloc")
        preload = environ.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = path + (":" + preload if preload else "")
    elif name == "glibc-tuned":
        env.update(GLIBC_TUNED)
    return env


def current() -> str:
    """The allocator this process was started with by :func:`ensure` (else ``system``)."""
    return os.environ.get(_MARKER, "system")


def ensure(name: str = "auto") -> None:
    """Re-execute this program once under allocator ``name``; no-op if already done.

    The same interpreter and the same command line (``sys.orig_argv``) are used,
    so ``python -m pkg.module --flags`` comes back as it was started.
    """
    if name == "system" or _MARKER in os.environ or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ)
    env.update(allocator_env(name, env))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
