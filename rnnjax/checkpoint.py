"""Orbax checkpoints of a train state, and small JSON side files beside them.

Layout of a workdir::

    workdir/
      checkpoints/<step>/...   one orbax checkpoint per saved step (last K kept)
      metrics.jsonl            written by rnnjax.train.run
      <name>.json              side files (a vocabulary, the run's config)

Orbax writes each checkpoint into a temporary directory and renames it when it
is complete, so a run killed while saving leaves no half-written checkpoint
that a restart could pick up: :func:`restore_latest` only sees finished ones.

Integrity: :func:`save` refuses a state with a NaN or Inf (``NonFiniteError``)
and writes a SHA-256 fingerprint of the state's values into the checkpoint's
metadata. A restore verifies that the values come back finite and with the same
fingerprint; :func:`restore_latest` falls back to the newest checkpoint that
verifies, with one warning line per checkpoint it skipped (a truncated or
flipped data file, a missing or zeroed metadata file, a directory that only
looks like a checkpoint). When training (``quarantine=True``) the skipped ones
are moved to ``workdir/checkpoints.unusable/`` (kept, not deleted) so that they
cannot block later saves. If none verifies, ``CheckpointError`` says so in one
line; nothing is moved.

Functions:
  ``manager(workdir, keep=3) -> ocp.CheckpointManager``
  ``save(manager, step, state)``; ``restore_latest(manager, template) -> state | None``
  ``restore(workdir, template, step=None) -> state`` (one-shot, e.g. for evaluation)
  ``latest_step(workdir) -> int | None``; ``fingerprint(state) -> str``
  ``save_json(workdir, name, obj)`` / ``load_json(workdir, name)`` (atomic writes)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rnnjax import atomic
from rnnjax.errors import CheckpointError, NonFiniteError

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
UNUSABLE_DIR = "checkpoints.unusable"
FINGERPRINT_KEY = "rnnjax_sha256"


def manager(workdir: str, *, keep: int | None = 3) -> ocp.CheckpointManager:
    """A checkpoint manager for ``workdir/checkpoints`` keeping the last ``keep``."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be a positive number of checkpoints or None, got {keep!r}")
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def _host_value(leaf: Any) -> np.ndarray:
    """A leaf's whole value on this host; a leaf split over several processes' devices
    (a multi-process run's per-sequence carry) is gathered, a collective that every
    process reaches since every process saves and restores."""
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or
                                            leaf.is_fully_replicated):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))


def _host_leaves(state: PyTree) -> list[tuple[str, np.ndarray]]:
    """``[(path, numpy value)]`` of ``state``'s leaves; PRNG keys as their key data."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), _host_value(leaf)))
    return out


def _fingerprint(leaves: list[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for _, a in leaves:
        # Canonical dtypes: the same values give the same digest however they
        # are stored (float32 on save, float32 or float64 on restore).
        if np.issubdtype(a.dtype, np.complexfloating):
            a = a.astype(np.complex128)
        elif np.issubdtype(a.dtype, np.floating) or a.dtype.kind == "V":
            a = a.astype(np.float64)
        elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            a = a.astype(np.int64)
        digest.update(repr(a.shape).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def fingerprint(state: PyTree) -> str:
    """SHA-256 (hex) of the values of ``state``'s leaves, in flattening order."""
    return _fingerprint(_host_leaves(state))


def _non_finite(leaves: list[tuple[str, np.ndarray]]) -> list[str]:
    return [path for path, a in leaves
            if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a))]


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    """Save ``state`` as checkpoint ``step`` (asynchronously; atomic on finish).

    Raises NonFiniteError (nothing written) if any value of ``state`` is NaN or Inf.
    """
    leaves = _host_leaves(state)
    bad = _non_finite(leaves)
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise NonFiniteError(f"refusing to save checkpoint {step} in {mngr.directory}: "
                             f"non-finite values in {shown}; the earlier checkpoints are kept")
    mngr.save(int(step), args=ocp.args.StandardSave(state),
              custom_metadata={FINGERPRINT_KEY: _fingerprint(leaves)})


class _Unusable(Exception):
    """A checkpoint that cannot be read or does not verify (the message says why)."""


class _Mismatch(ValueError):
    """A checkpoint that reads fine but does not fit this run's state."""


def _check_matches(template: PyTree, restored: PyTree, where: str) -> None:
    """Raise a clear ValueError if ``restored`` does not fit ``template``."""
    t_leaves, t_def = jax.tree.flatten(template)
    r_leaves, r_def = jax.tree.flatten(restored)
    if t_def != r_def:
        raise _Mismatch(f"checkpoint {where} has a different structure than the state this run "
                        f"builds ({len(r_leaves)} leaves, this run {len(t_leaves)}); use a fresh "
                        "--workdir for a different configuration")
    for i, (t, r) in enumerate(zip(t_leaves, r_leaves)):
        if np.shape(t) != np.shape(r):
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(template)[0][i][0])
            raise _Mismatch(f"checkpoint {where}: leaf {path} has shape {np.shape(r)} but this "
                            f"run expects {np.shape(t)}; use a fresh --workdir for a different "
                            "configuration (e.g. another --hidden).")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _saved_fingerprint(mngr: ocp.CheckpointManager, step: int) -> str | None:
    """The fingerprint written with checkpoint ``step``; None for a checkpoint older than
    fingerprints. Read from orbax's step metadata file directly: orbax turns an
    unreadable file into empty metadata, which would pass for an old checkpoint."""
    path = os.path.join(str(mngr.directory), str(step), "_CHECKPOINT_METADATA")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise _Unusable(f"its metadata file is unreadable ({_first_line(e)})") from None
    custom = meta.get("custom_metadata") if isinstance(meta, dict) else None
    return custom.get(FINGERPRINT_KEY) if isinstance(custom, dict) else None


def _restore_verified(mngr: ocp.CheckpointManager, step: int, template: PyTree) -> PyTree:
    """Checkpoint ``step`` restored and verified; _Unusable or _Mismatch if not."""
    where = os.path.join(str(mngr.directory), str(step))
    expected = _saved_fingerprint(mngr, step)  # first: orbax logs errors for a bad file
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as e:  # noqa: BLE001 - a damaged file, or another configuration
        raise _Unusable(f"does not restore into this run's state: {_first_line(e)}") from None
    _check_matches(template, restored, where)
    leaves = _host_leaves(restored)
    bad = _non_finite(leaves)
    if bad:
        raise _Unusable(f"non-finite values in {', '.join(bad[:3])}")
    if expected is not None and expected != _fingerprint(leaves):
        raise _Unusable("checksum mismatch: its data changed after it was written")
    return restored


def _quarantine(mngr: ocp.CheckpointManager, step: int) -> str:
    """Move checkpoint ``step`` out of the manager's sight; return where it went."""
    root = os.path.dirname(str(mngr.directory))
    dest_dir = os.path.join(root, UNUSABLE_DIR)
    os.makedirs(dest_dir, exist_ok=True)
    dest, n = os.path.join(dest_dir, str(step)), 1
    while os.path.exists(dest):
        dest, n = os.path.join(dest_dir, f"{step}.{n}"), n + 1
    shutil.move(os.path.join(str(mngr.directory), str(step)), dest)
    mngr.reload()
    return dest


def restore_latest(mngr: ocp.CheckpointManager, template: PyTree, *,
                   quarantine: bool = False) -> PyTree | None:
    """The newest checkpoint that restores into ``template``'s structure and verifies.

    Returns None if there is no checkpoint. Skipped checkpoints are named in a
    warning (and moved to ``checkpoints.unusable/`` with ``quarantine``).
    Raises ValueError when the newest readable checkpoint does not fit
    ``template`` (another configuration), CheckpointError when none restores
    and verifies.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return None
    failures: list[tuple[int, Exception]] = []
    for step in steps:
        try:
            restored = _restore_verified(mngr, step, template)
        except _Mismatch as e:  # reads fine, other shapes: another configuration
            raise ValueError(str(e)) from None
        except _Unusable as e:
            failures.append((step, e))
            continue
        for bad_step, reason in failures:
            where = os.path.join(str(mngr.directory), str(bad_step))
            moved = f"; moved to {_quarantine(mngr, bad_step)}" if quarantine else ""
            warnings.warn(f"checkpoint {where} is unusable ({reason}): using step {step} "
                          f"instead{moved}", stacklevel=2)
        return restored
    listed = "; ".join(f"step {s}: {e}" for s, e in failures)
    raise CheckpointError(f"no checkpoint in {mngr.directory} can be restored ({listed}); nothing "
                          "was changed. If this run's settings differ from those that wrote them "
                          "(a different configuration), use a fresh --workdir; otherwise move "
                          "that directory away to start afresh")


def restore(workdir: str, template: PyTree, step: int | None = None) -> PyTree:
    """Restore checkpoint ``step`` (default: the newest that verifies) of ``workdir``."""
    mngr = manager(workdir, keep=None)
    try:
        if step is None:
            restored = restore_latest(mngr, template)
            if restored is None:
                raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}")
            return restored
        if step not in mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in "
                                    f"{os.path.join(workdir, CHECKPOINT_DIR)}; "
                                    f"steps there: {sorted(mngr.all_steps())}")
        try:
            return _restore_verified(mngr, step, template)
        except _Mismatch as e:
            raise ValueError(str(e)) from None
        except _Unusable as e:
            raise CheckpointError(f"checkpoint {step} of {workdir} is unusable ({e})") from None
    finally:
        mngr.close()


def all_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints in ``workdir``, ascending."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        return []
    mngr = manager(workdir, keep=None)
    try:
        return sorted(mngr.all_steps())
    finally:
        mngr.close()


def latest_step(workdir: str) -> int | None:
    """The step of the latest finished checkpoint in ``workdir``, or None."""
    steps = all_steps(workdir)
    return steps[-1] if steps else None


def save_json(workdir: str, name: str, obj: Any) -> str:
    """Write ``obj`` as ``workdir/<name>.json`` atomically; returns the path.

    For small side files that belong with the checkpoints: a vocabulary, the
    flags of the run. The file appears complete or not at all.
    """
    if not name or os.sep in name:
        raise ValueError(f"side-file name must be a plain file name, got {name!r}")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name if name.endswith(".json") else name + ".json")
    return atomic.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def load_json(workdir: str, name: str) -> Any:
    """Read ``workdir/<name>.json`` written by :func:`save_json`."""
    path = os.path.join(workdir, name if name.endswith(".json") else name + ".json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no side file {path}")
    with open(path) as f:
        return json.load(f)
