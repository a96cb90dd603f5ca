"""Orbax checkpoints of a train state, and small JSON side files beside them.

Layout of a workdir::

    workdir/
      checkpoints/<step>/...   one orbax checkpoint per saved step (last K kept)
      metrics.jsonl            written by rnnjax.train.run
      <name>.json              side files (a vocabulary, the run's config)

Orbax writes each checkpoint into a temporary directory and renames it when it
is complete, so a run killed while saving leaves no half-written checkpoint
that a restart could pick up: :func:`restore_latest` only sees finished ones.

Functions:
  ``manager(workdir, keep=3) -> ocp.CheckpointManager``
  ``save(manager, step, state)``; ``restore_latest(manager, template) -> state | None``
  ``restore(workdir, template, step=None) -> state`` (one-shot, e.g. for evaluation)
  ``latest_step(workdir) -> int | None``
  ``save_json(workdir, name, obj)`` / ``load_json(workdir, name)`` (atomic writes)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, *, keep: int | None = 3) -> ocp.CheckpointManager:
    """A checkpoint manager for ``workdir/checkpoints`` keeping the last ``keep``."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be a positive number of checkpoints or None, got {keep!r}")
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree) -> None:
    """Save ``state`` as checkpoint ``step`` (asynchronously; atomic on finish)."""
    mngr.save(int(step), args=ocp.args.StandardSave(state))


def _check_matches(template: PyTree, restored: PyTree, where: str) -> None:
    """Raise a clear ValueError if ``restored`` does not fit ``template``."""
    t_leaves, t_def = jax.tree.flatten(template)
    r_leaves, r_def = jax.tree.flatten(restored)
    if t_def != r_def:
        raise ValueError(f"checkpoint {where} has a different structure than the state this run "
                         f"builds; use a fresh --workdir for a different configuration.\n"
                         f"checkpoint: {r_def}\nthis run:   {t_def}")
    for i, (t, r) in enumerate(zip(t_leaves, r_leaves)):
        if np.shape(t) != np.shape(r):
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(template)[0][i][0])
            raise ValueError(f"checkpoint {where}: leaf {path} has shape {np.shape(r)} but this run "
                             f"expects {np.shape(t)}; use a fresh --workdir for a different "
                             "configuration (e.g. another --hidden).")


def restore_latest(mngr: ocp.CheckpointManager, template: PyTree) -> PyTree | None:
    """The latest finished checkpoint restored into the structure of ``template``.

    Returns None if there is none. Raises ValueError (naming the checkpoint
    directory) when the checkpoint does not fit ``template``.
    """
    step = mngr.latest_step()
    if step is None:
        return None
    where = os.path.join(str(mngr.directory), str(step))
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(template))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"could not restore checkpoint {where} into this run's state "
                         f"(a different configuration?): {e}") from e
    _check_matches(template, restored, where)
    return restored


def restore(workdir: str, template: PyTree, step: int | None = None) -> PyTree:
    """Restore checkpoint ``step`` (default: the latest) of ``workdir``."""
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
        restored = mngr.restore(step, args=ocp.args.StandardRestore(template))
        _check_matches(template, restored, f"{workdir} step {step}")
        return restored
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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_json(workdir: str, name: str) -> Any:
    """Read ``workdir/<name>.json`` written by :func:`save_json`."""
    path = os.path.join(workdir, name if name.endswith(".json") else name + ".json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no side file {path}")
    with open(path) as f:
        return json.load(f)
