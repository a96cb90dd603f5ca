"""The errors a run ends with when it cannot go on, each a one-line message.

Every message says what happened, what was kept and what to do, so a program's
``main`` can print ``str(error)`` without a traceback and exit non-zero::

    try:
        run(config, workdir)
    except errors.RunError as e:
        sys.exit(f"error: {e}")

``RunError`` is the base; the others also derive from the built-in exception a
caller may already catch (``FloatingPointError``, ``OSError``, ``ValueError``).
"""

from __future__ import annotations

import errno
import os

__all__ = ["RunError", "NonFiniteError", "DiskFullError", "WorkdirLockedError",
           "ConfigMismatchError", "CheckpointError", "disk_full"]


class RunError(Exception):
    """A run stopped for a reason its message names (one line, no traceback needed)."""


class NonFiniteError(RunError, FloatingPointError):
    """Too many non-finite steps in a row, or a non-finite value about to be saved."""


class DiskFullError(RunError, OSError):
    """The disk filled up while the run was writing."""


class WorkdirLockedError(RunError):
    """Another live process holds the workdir's lock."""


class ConfigMismatchError(RunError, ValueError):
    """A rerun's settings differ from those saved in the workdir."""


class CheckpointError(RunError, ValueError):
    """No checkpoint of the workdir can be restored and verified."""


_NO_SPACE_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT),
                   f"os_error_code='{errno.ENOSPC}'")


def _no_space(error: BaseException | None) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:  # the error, its causes and contexts
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # TensorStore (orbax's writer) reports it as a ValueError with the OS's words.
        if any(words in str(error) for words in _NO_SPACE_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full(error: BaseException, what: str, kept: str) -> DiskFullError | None:
    """A DiskFullError if ``error`` (or what caused it) is ENOSPC/EDQUOT, else None.

    ``what``: what was being written; ``kept``: what is safe on disk.
    """
    if not _no_space(error):
        return None
    return DiskFullError(f"the disk is full while writing {what}; {kept}. Free space "
                         "(or choose another --workdir) and run the same command again to resume")
