"""``metrics.jsonl``: one JSON record per line, the project's one reader and writer.

``read(workdir) -> list[dict]`` returns every valid record; a line that is not
a JSON object (a line cut short by a kill, a byte flipped on disk) is skipped
and reported with a warning naming the file and line, and the records after it
are kept. ``append(workdir, record)`` adds one record; ``truncate(workdir,
last_step)`` keeps the records up to ``last_step`` (a resumed run drops what a
killed run logged after its last checkpoint) and rewrites the file atomically.
``read_records(source)`` accepts a workdir, a ``.jsonl`` path or the records
themselves (for plots).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Iterable, Mapping

import numpy as np

from rnnjax import atomic

__all__ = ["FILE", "path_of", "read", "read_records", "read_jsonl", "append", "write", "truncate",
           "to_json"]

FILE = "metrics.jsonl"

Record = dict[str, Any]


def path_of(workdir: str) -> str:
    """``workdir/metrics.jsonl``."""
    return os.path.join(workdir, FILE)


def to_json(x: Any) -> Any:
    """A metric value as JSON: a float or int, a list for arrays; NaN and Inf as the
    strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers)."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        v = arr.item()
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)
    return [to_json(a) for a in arr]


def read_jsonl(path: str, *, needs_step: bool = False) -> list[Record]:
    """The JSON objects of a ``.jsonl`` file, one per line, in file order (with
    ``needs_step``: only those with an integer ``step``). Any other line (cut short by a
    kill, a flipped byte) is skipped, and one warning names the file and those lines."""
    records: list[Record] = []
    bad: list[int] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if isinstance(record, dict) and (not needs_step or isinstance(record.get("step"), int)):
                records.append(record)
            else:
                bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {shown}); "
                      f"kept the {len(records)} valid records", stacklevel=3)
    return records


def read(workdir: str) -> list[Record]:
    """The valid records of ``workdir/metrics.jsonl`` in file order ([] if none)."""
    path = path_of(workdir)
    return read_jsonl(path, needs_step=True) if os.path.exists(path) else []


def read_records(source: str | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records from a workdir, a ``.jsonl`` file, or an iterable of records."""
    if not isinstance(source, str):
        return list(source)
    path = path_of(source) if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise ValueError(f"no metrics file at {path!r}: pass a workdir holding {FILE}, "
                         "a .jsonl path, or the records")
    return read_jsonl(path, needs_step=True)


def append(workdir: str, record: Mapping[str, Any]) -> None:
    """Add ``record`` as one line of ``workdir/metrics.jsonl`` (flushed)."""
    with open(path_of(workdir), "a") as f:
        f.write(json.dumps(record) + "\n")


def write(workdir: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``workdir/metrics.jsonl`` with ``records``, atomically."""
    atomic.write_text(path_of(workdir), "".join(json.dumps(r) + "\n" for r in records))


def truncate(workdir: str, last_step: int) -> list[Record]:
    """Keep the records with ``step <= last_step``; return them.

    The file is rewritten (atomically) only when something is dropped or a bad
    line is skipped, so a file that is already right is never touched.
    """
    path = path_of(workdir)
    if not os.path.exists(path):
        return []
    records = read(workdir)
    kept = [r for r in records if r["step"] <= last_step]
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    if len(kept) != lines:
        write(workdir, kept)
    return kept
