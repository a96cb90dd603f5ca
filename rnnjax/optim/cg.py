"""Conjugate gradient with Martens' stopping rule, CG backtracking, damping and line search.

The inner solver and step controls of Hessian-free optimization (Martens 2010 §4;
Martens & Sutskever 2012, "Training deep and recurrent networks with
Hessian-free optimization"): :func:`conjugate_gradient` keeps the iterates at
geometrically spaced iterations, :func:`backtrack` steps back through them on
the loss while it improves, :func:`update_damping` is the Levenberg–Marquardt rule and
:func:`line_search` the final Armijo search. All work on flat vectors [n] in the
dtype of their inputs.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["CGResult", "conjugate_gradient", "save_schedule", "backtrack", "update_damping",
           "line_search"]


def save_schedule(max_iters: int, gap: float = 1.3) -> tuple[int, ...]:
    """The iterations (1-based) at which CG keeps its iterate: ceil(gap^k) ≤ max_iters."""
    if not gap > 1.0:
        raise ValueError(f"backtrack gap must be > 1, got {gap!r}")
    its, s = [], 1.0
    while math.ceil(s) <= max_iters:
        i = math.ceil(s)
        if not its or its[-1] != i:
            its.append(i)
        s *= gap
    return tuple(its)


class CGResult(NamedTuple):
    """What :func:`conjugate_gradient` returns.

    x: [n] the last iterate. iters: int [] iterations run.
    saved: [K + 1, n] iterates at ``save_schedule`` iterations, then the last one.
    saved_iters: int [K + 1] the iteration of each row (-1 where never reached).
    phi: [max_iters + 1] the quadratic objective ½xᵀAx − bᵀx after each iteration
      (index 0 is the start; entries after ``iters`` are 0).
    """

    x: Array
    iters: Array
    saved: Array
    saved_iters: Array
    phi: Array


def conjugate_gradient(
    matvec: Callable[[Array], Array],
    b: Array,
    x0: Array,
    *,
    max_iters: int,
    tol: float = 5e-4,
    min_progress_window: int = 10,
    preconditioner: Array | None = None,
    backtrack_gap: float = 1.3,
) -> CGResult:
    """(Preconditioned) CG on A x = b for symmetric positive-definite A, as a while loop.

    Stops after ``max_iters`` or by Martens' (2010) relative-progress rule: at
    iteration i, with k = max(min_progress_window, ⌊0.1 i⌋), stop when i > k,
    φ(x_i) < 0 and (φ(x_i) − φ(x_{i−k})) / φ(x_i) < k·tol, where φ(x) = ½xᵀAx − bᵀx
    (tracked for free as −½ xᵀ(b + r), r = b − Ax). Also stops if a direction has
    non-positive or non-finite curvature (A is then not positive-definite).

    Args:
      matvec: x [n] -> A x [n].
      b, x0: [n] right-hand side and starting point.
      preconditioner: optional [n] positive diagonal M (CG then works on M⁻¹A).
      backtrack_gap: iterates are kept at iterations ceil(gap^k) (for backtracking).
    """
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters (--cg_iters) must be a positive integer, got {max_iters!r}")
    schedule = save_schedule(max_iters, backtrack_gap)
    n_slots = len(schedule) + 1  # + the last iterate
    slot_of = np.full(max_iters + 1, n_slots, np.int32)  # n_slots: a scratch row
    for k, i in enumerate(schedule):
        slot_of[i] = k
    slot_of = jnp.asarray(slot_of)
    inv_m = None if preconditioner is None else 1.0 / preconditioner

    def precond(r):
        return r if inv_m is None else r * inv_m

    r0 = b - matvec(x0)
    y0 = precond(r0)
    phi = jnp.zeros((max_iters + 1,), b.dtype).at[0].set(-0.5 * jnp.vdot(x0, b + r0))
    saved = jnp.zeros((n_slots + 1, b.shape[0]), b.dtype)
    saved_iters = jnp.full((n_slots + 1,), -1, jnp.int32)
    init = (jnp.int32(0), x0, r0, y0, y0, jnp.vdot(r0, y0), phi, saved, saved_iters, jnp.bool_(False))

    def cond(c):
        i, *_, stop = c
        return (i < max_iters) & ~stop

    def body(c):
        i, x, r, y, p, ry, phi, saved, saved_iters, _ = c
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        ok = (pap > 0) & jnp.isfinite(pap)
        alpha = jnp.where(ok, ry / jnp.where(ok, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        y = precond(r)
        ry_new = jnp.vdot(r, y)
        p = y + (ry_new / jnp.where(ry == 0, 1.0, ry)) * p
        i = i + 1
        phi_i = -0.5 * jnp.vdot(x, b + r)
        phi = phi.at[i].set(phi_i)
        slot = slot_of[i]
        saved = saved.at[slot].set(x)
        saved_iters = saved_iters.at[slot].set(i)
        k = jnp.maximum(min_progress_window, (i // 10))
        phi_k = phi[jnp.maximum(i - k, 0)]
        converged = (i > k) & (phi_i < 0) & ((phi_i - phi_k) / jnp.where(phi_i < 0, phi_i, -1.0) < k * tol)
        return (i, x, r, y, p, ry_new, phi, saved, saved_iters, converged | ~ok)

    i, x, _, _, _, _, phi, saved, saved_iters, _ = jax.lax.while_loop(cond, body, init)
    saved = saved.at[n_slots - 1].set(x)[:n_slots]
    saved_iters = saved_iters.at[n_slots - 1].set(i)[:n_slots]
    return CGResult(x, i, saved, saved_iters, phi)


def backtrack(objective: Callable[[Array], Array],
              result: CGResult) -> tuple[Array, Array, Array, Array]:
    """Martens' CG backtracking: from the last iterate back through the kept ones.

    Scores the last iterate, then each earlier kept iterate in turn while the
    ``objective`` does not get worse, and stops at the first one that does (Martens
    2010 §4.6): usually one or two evaluations, where scoring every kept iterate
    costs one per row. Non-finite values count as +inf, so the search steps back
    past iterates that blow up; if all do, the first kept iterate is returned.

    Returns ``(p, objective(p), iteration of p, evaluations)``.
    """
    saved, its = result.saved, result.saved_iters
    last = saved.shape[0] - 1
    # The schedule rows reached are a prefix, at least row 0 (CG runs one iteration);
    # the last of them holds the last iterate itself when CG stopped on it: skip it.
    reached = jnp.sum(its[:last] >= 0)
    start = reached - 1 - (its[reached - 1] == its[last]).astype(reached.dtype)

    def score(p):
        v = objective(p)
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    def cond(c):
        j, _, _, _, going = c
        return (j >= 0) & going

    def body(c):
        j, best, f_best, evals, _ = c
        v = score(saved[j])
        take = v <= f_best  # inf <= inf: keep stepping back past blow-ups
        return (j - 1, jnp.where(take, j, best), jnp.where(take, v, f_best), evals + 1, take)

    init = (start, jnp.asarray(last, start.dtype), score(saved[last]), jnp.int32(1),
            jnp.bool_(True))
    _, best, f_best, evals, _ = jax.lax.while_loop(cond, body, init)
    return saved[best], f_best, its[best], evals


# ----------------------------------------------------------------------------
# Damping and line search.
# ----------------------------------------------------------------------------

def update_damping(damping: Array, rho: Array, *, boost: float = 1.5, drop: float = 2.0 / 3.0,
                   min_damping: float = 1e-8) -> Array:
    """Levenberg–Marquardt: ρ < ¼ → λ·boost, ρ > ¾ → λ·drop, else λ (NaN ρ counts as bad)."""
    rho = jnp.where(jnp.isnan(rho), -jnp.inf, rho)
    factor = jnp.where(rho < 0.25, boost, jnp.where(rho > 0.75, drop, 1.0))
    return jnp.maximum(damping * factor, min_damping)


def line_search(objective: Callable[[Array], Array], f0: Array, slope: Array, f1: Array, *,
                decay: float = 0.8, c: float = 1e-2, max_steps: int = 20) -> tuple[Array, Array, Array]:
    """Backtracking (Armijo) search for a rate in {1, decay, decay², …}.

    ``objective(rate) -> f(θ + rate·p)``; ``f0`` = f(θ), ``slope`` = gᵀp, ``f1`` =
    f(θ + p) (known from backtracking). Accepts the first rate with
    f ≤ f0 + c·rate·min(slope, 0). Returns ``(rate, f at rate, evaluations)``;
    rate 0 (and f0) when no rate passes within ``max_steps``.
    """
    slope = jnp.minimum(slope, 0.0)

    def bad(rate, f):  # "not <=" so that NaN is bad
        return ~(f <= f0 + c * rate * slope)

    def cond(c_):
        k, rate, f = c_
        return (k < max_steps) & bad(rate, f)

    def body(c_):
        k, rate, _ = c_
        rate = rate * decay
        return k + 1, rate, objective(rate)

    k, rate, f = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.ones((), jnp.result_type(f1)), f1))
    failed = bad(rate, f)
    return jnp.where(failed, 0.0, rate), jnp.where(failed, f0, f), k
