"""Figures of gradient flow: what :mod:`rnnjax.diagnostics` measures, drawn as PNG files.

* :func:`plot_gradient_vs_lag`: ‖∂L/∂h_{T-k}‖ against the lag k, one line per model or
  training step (log scale): vanishing gradients fall as straight lines;
* :func:`plot_gradient_heatmap`: the per-step norms across training;
* :func:`plot_parameter_gradient_norms`: each parameter's gradient norm across
  training, from the ``grad_norm/<name>`` records of a run's ``metrics.jsonl``
  (:func:`parameter_gradient_norms`, read with :func:`rnnjax.metrics.read_records`).

matplotlib draws with its Agg backend (files only, no display); folders are created.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rnnjax import metrics

__all__ = [
    "parameter_gradient_norms",
    "plot_gradient_vs_lag",
    "plot_gradient_heatmap",
    "plot_parameter_gradient_norms",
]


def parameter_gradient_norms(
    source: str | Iterable[Mapping[str, Any]],
    prefix: str = "grad_norm/",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-parameter gradient norms over training, from a run's metrics.

    Args:
      source: a workdir (its ``metrics.jsonl`` is read), the path of a
        ``.jsonl`` file, or the records themselves.
      prefix: the metric-name prefix of the per-parameter norms (as written by
        :func:`rnnjax.diagnostics.gradient_norm_metrics`).

    Returns:
      ``(steps [N], {parameter name: norms [N]})`` over the N records that have
      them; a record's value is the mean over the steps since the previous
      record. Non-finite values come back as NaN.
    """
    records = metrics.read_records(source)
    rows = [r for r in records if any(k.startswith(prefix) for k in r)]
    if not rows:
        where = source if isinstance(source, str) else "the records"
        raise ValueError(f"no metrics named {prefix}* in {where}; log them with "
                         "diagnostics.gradient_norm_metrics in the train step")
    names = sorted({k[len(prefix):] for r in rows for k in r if k.startswith(prefix)})
    steps = np.array([r["step"] for r in rows])
    return steps, {n: np.array([_as_float(r.get(prefix + n)) for r in rows]) for n in names}


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")                             # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_gradient_vs_lag(curves: Mapping[str, Any], path: str, *, title: str | None = None,
                         normalize: bool = True) -> str:
    """Gradient norm against time lag, log scale, one line per label.

    Args:
      curves: ``{label: norms [T]}`` in time order for a loss at the last step
        (as from :func:`hidden_gradient_norms`); lag k is step T - 1 - k.
      path: the PNG file to write (folders are created).
      normalize: divide each curve by its value at lag 0, so that cells with
        different output scales compare by their decay alone.

    Returns the path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, norms in curves.items():
        g = np.asarray(norms, np.float64)[::-1]
        if normalize and g[0] > 0:
            g = g / g[0]
        g = np.where(g > 0, g, np.nan)
        ax.semilogy(np.arange(g.size), g, label=label)
    ax.set_xlabel("time lag k (steps back from the loss)")
    ax.set_ylabel("‖∂L/∂h_{T-k}‖" + (" / ‖∂L/∂h_T‖" if normalize else ""))
    ax.axhline(1e-3, color="grey", lw=0.8, ls=":")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    if title:
        ax.set_title(title)
    return _save(fig, plt, path)


def plot_gradient_heatmap(steps: Sequence[int], norms: Any, path: str, *,
                          title: str | None = None) -> str:
    """Heat map of per-step gradient norms across training.

    Args:
      steps: [N] training steps at which the norms were measured.
      norms: [N, T] ``‖dL/dh_t‖`` at each of those steps (time order).
      path: the PNG file to write.
    """
    plt = _pyplot()
    m = np.asarray(norms, np.float64)
    if m.ndim != 2 or m.shape[0] != len(steps):
        raise ValueError(f"norms must be [len(steps), T] = [{len(steps)}, T], got {m.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logm = np.where(m > 0, np.log10(m), np.nan)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(logm, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                   extent=(-0.5, m.shape[1] - 0.5, -0.5, m.shape[0] - 0.5))
    ticks = np.linspace(0, m.shape[0] - 1, min(6, m.shape[0])).round().astype(int)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(int(steps[i])) for i in ticks])
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time step t")
    ax.set_ylabel("training step")
    fig.colorbar(im, ax=ax, label="log10 ‖∂L/∂h_t‖")
    if title:
        ax.set_title(title)
    return _save(fig, plt, path)


def plot_parameter_gradient_norms(steps: Sequence[int], norms: Mapping[str, Any], path: str, *,
                                  title: str | None = None) -> str:
    """Per-parameter gradient norms against the training step (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in norms.items():
        v = np.asarray(v, np.float64)
        ax.semilogy(np.asarray(steps), np.where(v > 0, v, np.nan), label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, plt, path)


def _save(fig, plt, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
