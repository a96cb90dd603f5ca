"""Safety of a run's working directory: one run at a time, and no mistaken rerun.

``lock(workdir)`` is a context manager that holds ``workdir/.lock`` for the
whole run. A second process that tries gets :class:`rnnjax.errors.WorkdirLockedError`
naming the workdir and the process holding it. The lock is an ``flock`` on that
file, which the operating system releases when its process ends, however it
ends: the lock file a killed run leaves behind is stale and simply taken over.
(``flock`` is local to one machine; on a network filesystem shared by machines
use one workdir per machine.)

``check_config(workdir, config, ignore=...)`` compares the settings saved in
``workdir/config.json`` with the new ones and raises
:class:`rnnjax.errors.ConfigMismatchError` listing every difference (saved vs
given) before anything is written; ``save_config`` writes them (atomically).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
from typing import Any, Iterable, Iterator, Mapping

from rnnjax import checkpoint
from rnnjax.errors import ConfigMismatchError, WorkdirLockedError

__all__ = ["LOCK_FILE", "CONFIG", "lock", "holder", "check_free", "config_dict",
           "config_differences", "check_config", "save_config"]

LOCK_FILE = ".lock"
CONFIG = "config"


def _lock_path(workdir: str) -> str:
    return os.path.join(workdir, LOCK_FILE)


def holder(workdir: str) -> str:
    """What the lock file says about its holder (``"pid 123 on host"``), or ``"unknown"``."""
    try:
        with open(_lock_path(workdir)) as f:
            text = f.read().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


def _holder_pid(workdir: str) -> int | None:
    parts = holder(workdir).split()
    return int(parts[1]) if len(parts) > 1 and parts[0] == "pid" and parts[1].isdigit() else None


def _locked_error(workdir: str) -> WorkdirLockedError:
    return WorkdirLockedError(
        f"workdir {workdir!r} is in use by another run ({holder(workdir)}); wait for it to "
        "finish, stop it, or choose another --workdir")


def _try_flock(fd: int, mode: int) -> bool:
    """Take an flock without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[str]:
    """Hold ``workdir``'s lock for the ``with`` block (creates ``workdir``); yields the lock path.

    Raises WorkdirLockedError (naming the workdir and the holder's PID) when a
    live process holds it.
    """
    os.makedirs(workdir, exist_ok=True)
    path = _lock_path(workdir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_flock(fd, fcntl.LOCK_EX):
            raise _locked_error(workdir)
        # Ours now (a stale file of a killed run is simply overwritten).
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        try:
            yield path
        finally:
            # The file stays: deleting it would let a third process lock a new
            # file while a second one waits on the old one.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_free(workdir: str) -> None:
    """Raise WorkdirLockedError if a process other than this one holds ``workdir``'s lock.

    A check for code that writes into a workdir without holding the lock itself
    (e.g. :func:`rnnjax.train.run`): the lock held by :func:`lock` in this
    process passes.
    """
    path = _lock_path(workdir)
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _try_flock(fd, fcntl.LOCK_SH):
            if _holder_pid(workdir) != os.getpid():
                raise _locked_error(workdir)
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def config_dict(config: Any) -> dict[str, Any]:
    """``config`` (a dataclass or a mapping) as JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")
    return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


def config_differences(saved: Mapping[str, Any], given: Any,
                       ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """``[(setting, saved value, given value)]`` for every setting that differs, by name.

    A setting present on one side only shows ``"<absent>"`` on the other.
    """
    saved, given, skip = config_dict(saved), config_dict(given), set(ignore)
    absent = "<absent>"
    return [(k, saved.get(k, absent), given.get(k, absent))
            for k in sorted(set(saved) | set(given))
            if k not in skip and saved.get(k, absent) != given.get(k, absent)]


def check_config(workdir: str, config: Any, *, ignore: Iterable[str] = ()) -> bool:
    """Compare ``config`` with ``workdir/config.json``; writes nothing.

    Returns False when there is no saved config (a fresh workdir), True when it
    matches. Raises ConfigMismatchError listing every differing setting
    (saved vs given) otherwise, and ValueError when the saved file is unreadable.
    """
    path = os.path.join(workdir, CONFIG + ".json")
    if not os.path.exists(path):
        return False
    try:
        saved = checkpoint.load_json(workdir, CONFIG)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); repair or remove it") from None
    diffs = config_differences(saved, config, ignore)
    if diffs:
        listed = "; ".join(f"{k}: saved {s!r}, given {g!r}" for k, s, g in diffs)
        raise ConfigMismatchError(
            f"workdir {workdir!r} holds a run with other settings ({listed}); nothing was "
            "written. Rerun with the saved settings to resume it, or choose another --workdir")
    return True


def save_config(workdir: str, config: Any) -> str:
    """Write ``config`` as ``workdir/config.json`` (atomically); returns the path."""
    return checkpoint.save_json(workdir, CONFIG, config_dict(config))
