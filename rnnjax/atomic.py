"""Atomic writes of small files: the file appears complete or not at all.

``write_text(path, text, what=...)`` writes ``path + ".tmp"``, flushes it to disk
and renames it over ``path``. If the disk is full, the temporary file is removed,
``path`` keeps its old content, and :class:`rnnjax.errors.DiskFullError` says so
in one line.
"""

from __future__ import annotations

import os

from rnnjax import errors

__all__ = ["write_text"]


def write_text(path: str, text: str, *, what: str | None = None) -> str:
    """Replace ``path``'s content with ``text`` atomically; returns ``path``."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        full = errors.disk_full(e, what or path, f"{path} keeps its previous content")
        if full is None:
            raise
        raise full from e
    return path
