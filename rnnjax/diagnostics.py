"""Diagnosing exploding and vanishing gradients in any rnnjax cell.

Backprop through time multiplies the error signal by one Jacobian per step,
``dL/dh_{t-k} = dL/dh_t · J_t J_{t-1} ... J_{t-k+1}`` with ``J_t = dh_t/dh_{t-1}``.
If the products shrink geometrically the gradient vanishes: nothing at the
start of a sequence is learned from a loss at its end. If they grow, it
explodes. These pure functions measure where a model sits:

* :func:`hidden_state_gradients` / :func:`hidden_gradient_norms`: ``dL/dh_t`` for
  every step t, by adding a zero perturbation ``eps_t`` to the hidden state after
  each step and differentiating with respect to it (for any loss on the
  hidden states: at the last step, or at every step);
* :func:`state_jacobians`, :func:`jacobian_products`: the Jacobians along one
  trajectory and the norms / singular values of their products as the lag grows;
* :func:`recurrent_spectral_radius`, :func:`lyapunov_exponents`: the recurrent
  matrix's spectral radius, and the largest Lyapunov exponents (QR method);
* :func:`verdict`: vanishing, exploding or healthy, the rate of decay or growth
  per step and the effective horizon;
* :func:`gradient_norm_metrics`: per-parameter gradient norms for a train step's
  metrics (``grad_norm/<name>``).

The figures of these measurements are in :mod:`rnnjax.plots`.

Example (a tanh RNN, a loss on the last hidden state)::

    cell = cells.vanilla(64)
    params = cell.init(key, 2)
    xs = jax.random.normal(key, (100, 16, 2))                  # [T, B, D]
    w = jax.random.normal(key, (64,))
    norms = diagnostics.hidden_gradient_norms(
        cell, params, xs, lambda hs: jnp.mean((hs[-1] @ w) ** 2))  # [T]
    print(diagnostics.verdict(norms))

What "the hidden state" is: for cells whose carry is one array (vanilla, GRU,
MRNN) it is that array. For the LSTM (carry ``LSTMCarry(c, h)``) the perturbation
is added to ``h`` only, the output, so ``dL/dh_t`` is the gradient that
reaches the output at step t (including the paths through c_{t+1}, ... that
start at h_t); the memory cell c carries a further path that does not go
through h_t. For a stack (tuple carry) the top layer's state is perturbed.
Other carries: pass ``perturb(carry, eps) -> carry``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnjax import initializers
from rnnjax.cell_base import Cell, LSTMCarry, Params

__all__ = [
    "perturb_output",
    "hidden_state_gradients",
    "hidden_gradient_norms",
    "state_jacobians",
    "JacobianProducts",
    "jacobian_products",
    "spectral_radius",
    "recurrent_spectral_radius",
    "lyapunov_exponents",
    "Verdict",
    "verdict",
    "gradient_norm_metrics",
]

Perturb = Callable[[Any, jax.Array], Any]


# ----------------------------------------------------------------------------- dL/dh_t

def perturb_output(carry: Any, eps: jax.Array) -> Any:
    """Add ``eps`` [B, H] to the hidden output held in ``carry``.

    An array carry (vanilla, GRU, MRNN) gets ``carry + eps``; an ``LSTMCarry``
    gets ``h + eps`` (c is left alone); a tuple (a stack) has its last entry
    perturbed. Anything else raises ValueError: pass your own ``perturb``.
    """
    if isinstance(carry, LSTMCarry):
        return carry._replace(h=carry.h + eps)
    if isinstance(carry, jax.Array) or isinstance(carry, np.ndarray):
        return carry + eps
    if isinstance(carry, tuple) and carry:
        return carry[:-1] + (perturb_output(carry[-1], eps),)
    raise ValueError(f"perturb_output does not know where the hidden state is in a carry of "
                     f"type {type(carry).__name__}; pass perturb=(carry, eps) -> carry")


def _perturbed_unroll(cell: Cell, params: Params, xs: jax.Array, eps: jax.Array, carry: Any,
                      perturb: Perturb) -> jax.Array:
    """hs [T, B, H] of the cell run with ``eps[t]`` added to its state after step t."""
    # One scan for any cell, stacks included (their recurrent_step steps every layer).
    xp = cell.project(params, xs)

    def body(c, inp):
        xp_t, eps_t = inp
        c, _ = cell.recurrent_step(params, c, xp_t)
        c = perturb(c, eps_t)
        return c, cell.output(c)

    _, hs = jax.lax.scan(body, carry, (xp, eps))
    return hs


def hidden_state_gradients(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    loss_fn: Callable[[jax.Array], jax.Array],
    *,
    carry: Any = None,
    perturb: Perturb = perturb_output,
) -> jax.Array:
    """``dL/dh_t`` for every step: [T, B, H].

    Runs the cell with a zero perturbation ``eps_t`` added to its hidden state
    after each step t and returns ``dL/deps``, which equals the total derivative
    ``dL/dh_t`` (through the loss terms at t and at every later step).

    Args:
      cell: any rnnjax Cell (uses ``project`` and ``recurrent_step``).
      params: its params.
      xs: inputs [T, B, D].
      loss_fn: ``loss_fn(hs [T, B, H]) -> scalar``; e.g. a readout and loss on
        ``hs[-1]`` (loss at the last step) or on all of ``hs`` (every step).
      carry: initial carry; default ``cell.initial_carry(params, B)``.
      perturb: ``perturb(carry, eps [B, H]) -> carry``; see :func:`perturb_output`.
    """
    if xs.ndim != 3:
        raise ValueError(f"xs must be [T, B, D], got shape {tuple(xs.shape)}")
    T, B = xs.shape[:2]
    if carry is None:
        carry = cell.initial_carry(params, B)
    # In the state's dtype: float64 params (under jax_enable_x64) measure in float64.
    eps = jnp.zeros((T, B, cell.hidden_size), cell.output(carry).dtype)
    return jax.grad(lambda e: loss_fn(_perturbed_unroll(cell, params, xs, e, carry, perturb)))(eps)


def hidden_gradient_norms(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    loss_fn: Callable[[jax.Array], jax.Array],
    *,
    carry: Any = None,
    perturb: Perturb = perturb_output,
) -> jax.Array:
    """‖dL/dh_t‖ for t = 0..T-1: [T], the Frobenius norm over the batch and units.

    Same arguments as :func:`hidden_state_gradients`.
    """
    g = hidden_state_gradients(cell, params, xs, loss_fn, carry=carry, perturb=perturb)
    return jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2)))


# ----------------------------------------------------------------------------- Jacobians

def state_jacobians(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    *,
    index: int = 0,
    carry: Any = None,
) -> jax.Array:
    """Jacobians ``J_t = ds_t/ds_{t-1}`` along one sequence's trajectory: [T, S, S].

    ``s`` is the whole carry of one sequence, flattened: S = H for vanilla, GRU
    and MRNN cells, S = 2H for the LSTM (c then h, as ``ravel_pytree`` orders
    ``LSTMCarry(c, h)``). ``J_t`` is evaluated at the state the trajectory
    actually visits, driven by ``xs[:, index]``.

    Args:
      xs: inputs [T, B, D]; the sequence ``index`` is used.
      carry: initial carry for a batch of one; default the cell's initial carry.
    """
    if xs.ndim != 3:
        raise ValueError(f"xs must be [T, B, D], got shape {tuple(xs.shape)}")
    if not 0 <= index < xs.shape[1]:
        raise ValueError(f"index must lie in [0, {xs.shape[1]}), got {index}")
    x = xs[:, index:index + 1]                      # [T, 1, D]
    if carry is None:
        carry = cell.initial_carry(params, 1)
    flat0, unravel = ravel_pytree(carry)
    xp = cell.project(params, x)

    def transition(s, xp_t):
        c, _ = cell.recurrent_step(params, unravel(s), xp_t)
        return ravel_pytree(c)[0]

    def body(s, xp_t):
        J = jax.jacfwd(transition)(s, xp_t)
        return transition(s, xp_t), J

    _, Js = jax.lax.scan(body, flat0, xp)
    return Js


class JacobianProducts(NamedTuple):
    """Products ``P_k = ds_T/ds_{T-k} = J_T J_{T-1} ... J_{T-k+1}`` for k = 1..K.

    lags: [K] the lags k.
    norms: [K] the spectral norm (largest singular value) of P_k.
    singular_values: [K, S] all singular values of P_k, largest first.
    """

    lags: np.ndarray
    norms: np.ndarray
    singular_values: np.ndarray


def jacobian_products(jacobians: jax.Array, max_lag: int | None = None) -> JacobianProducts:
    """Norms and singular values of the Jacobian products back from the last step.

    Args:
      jacobians: [T, S, S] from :func:`state_jacobians`.
      max_lag: K, the longest product (default T).
    """
    T = jacobians.shape[0]
    K = T if max_lag is None else int(max_lag)
    if not 1 <= K <= T:
        raise ValueError(f"max_lag must lie in [1, T={T}], got {max_lag}")
    back = jacobians[::-1][:K]                        # J_T, J_{T-1}, ...

    def body(P, J):
        P = P @ J
        return P, jnp.linalg.svd(P, compute_uv=False)

    S = jacobians.shape[1]
    _, svs = jax.lax.scan(body, jnp.eye(S, dtype=jacobians.dtype), back)
    svs = np.asarray(svs)
    return JacobianProducts(np.arange(1, K + 1), svs[:, 0], svs)


def spectral_radius(matrix: jax.Array) -> float:
    """Largest |eigenvalue| of a square matrix."""
    return float(initializers.spectral_radius(matrix))


_GATES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n")}


def recurrent_spectral_radius(params: Params) -> float | dict[str, float]:
    """Spectral radius of the recurrent matrix ``W_hh``.

    A square ``W_hh`` [H, H] (vanilla cells) gives one number. A gated cell's
    ``W_hh`` [H, kH] gives one number per gate block: ``{"i": .., "f": .., ...}``
    for the LSTM (k = 4), ``{"r", "z", "n"}`` for the GRU (k = 3).
    """
    if "W_hh" not in params:
        raise ValueError(f"params have no recurrent matrix 'W_hh' (keys: {sorted(params)}); "
                         "for other cells use state_jacobians and lyapunov_exponents")
    w = np.asarray(params["W_hh"])
    H, cols = w.shape
    if cols == H:
        return spectral_radius(w)
    if cols % H:
        raise ValueError(f"W_hh must be [H, H] or [H, k*H], got {w.shape}")
    k = cols // H
    names = _GATES.get(k, tuple(str(i) for i in range(k)))
    return {n: spectral_radius(w[:, i * H:(i + 1) * H]) for i, n in enumerate(names)}


def lyapunov_exponents(jacobians: jax.Array, num: int = 1, *, burn_in: int = 0,
                       key: jax.Array | None = None) -> np.ndarray:
    """The ``num`` largest Lyapunov exponents (natural log per step), largest first; QR method.

    Propagates ``num`` orthonormal directions through ``J_t``, re-orthonormalising
    by QR after every step, and averages ``log |diag R|`` over the steps after
    ``burn_in``. A largest exponent ``λ`` means perturbations (and, backwards, the
    gradient) change by about ``exp(λ)`` per step: λ < 0 contracting (vanishing),
    λ > 0 expanding (exploding or chaotic).

    Args:
      jacobians: [T, S, S] from :func:`state_jacobians`.
      num: how many exponents (1 <= num <= S).
      burn_in: steps skipped before averaging (the initial directions are arbitrary).
      key: PRNG key for the initial directions (default a fixed key).
    """
    T, S, _ = jacobians.shape
    if not 1 <= num <= S:
        raise ValueError(f"num must lie in [1, S={S}], got {num}")
    if not 0 <= burn_in < T:
        raise ValueError(f"burn_in must lie in [0, T={T}), got {burn_in}")
    key = jax.random.PRNGKey(0) if key is None else key
    Q0, _ = jnp.linalg.qr(jax.random.normal(key, (S, num), jacobians.dtype))

    def body(Q, J):
        Q, R = jnp.linalg.qr(J @ Q)
        d = jnp.diagonal(R)
        # Keep Q's orientation continuous; only |diag R| matters for the rates.
        return Q * jnp.sign(d)[None, :], jnp.log(jnp.abs(d) + 1e-38)

    _, logs = jax.lax.scan(body, Q0, jacobians)
    # The QR order is the asymptotic order; on short trajectories sort explicitly.
    return np.sort(np.asarray(jnp.mean(logs[burn_in:], axis=0)))[::-1]


# ----------------------------------------------------------------------------- verdict

class Verdict(NamedTuple):
    """What the per-step gradient norms say.

    kind: ``"vanishing"``, ``"exploding"`` or ``"healthy"``.
    rate_per_step: the factor by which ``‖dL/dh‖`` changes per step further back
      in time (least-squares fit of log-norm against lag): < 1 decays, > 1 grows.
    horizon: how many steps back (from the last step) the gradient stays within
      a factor ``1/factor`` of its running peak; equals ``span`` when it never drops.
    span: the number of lags measured (T).
    total_change: the fitted change over the whole span, ``rate ** (span - 1)``.
    """

    kind: str
    rate_per_step: float
    horizon: int
    span: int
    total_change: float

    def __str__(self) -> str:
        reach = (f"stays within 1e-3 of its peak over all {self.span} steps"
                 if self.horizon >= self.span else
                 f"effective horizon {self.horizon} of {self.span} steps")
        return (f"{self.kind}: the gradient changes by x{self.rate_per_step:.4g} per step back "
                f"in time ({self.total_change:.3g} over the sequence); {reach}")


def verdict(norms: jax.Array | Sequence[float], *, factor: float = 1e3) -> Verdict:
    """Classify per-step gradient norms of a loss at the last step.

    Args:
      norms: ``‖dL/dh_t‖`` for t = 0..T-1 (time order, as returned by
        :func:`hidden_gradient_norms`) for a loss at the last step; lag k is
        step ``T - 1 - k``. (With a loss at every step the norms add up many
        losses and decay less; measure a last-step loss to read the horizon.)
      factor: the change over the sequence that counts as vanishing
        (``<= 1/factor``) or exploding (``>= factor``); 1e3 by default.

    Non-finite norms are exploding. The rate is ``exp(slope)`` of a
    least-squares fit of ``log ‖dL/dh‖`` against the lag over the positive,
    finite norms.
    """
    g = np.asarray(norms, dtype=np.float64).reshape(-1)
    if g.size < 2:
        raise ValueError(f"verdict needs the norms of at least 2 steps, got {g.size}")
    lagged = g[::-1]                                  # lag 0 = the last step
    span = lagged.size
    if not np.all(np.isfinite(lagged)):
        first_bad = int(np.argmin(np.isfinite(lagged)))
        return Verdict("exploding", math.inf, first_bad, span, math.inf)
    ok = lagged > 0
    lags = np.arange(span)
    if ok.sum() >= 2:
        slope = float(np.polyfit(lags[ok], np.log(lagged[ok]), 1)[0])
    else:
        slope = -math.inf                             # the gradient is zero beyond one step
    rate = math.exp(slope)
    peak = np.maximum.accumulate(lagged)
    below = lagged < peak / factor
    horizon = int(np.argmax(below)) if below.any() else span
    log_total = slope * (span - 1)
    total = math.exp(min(log_total, 700.0)) if math.isfinite(log_total) else 0.0
    if log_total >= math.log(factor):
        kind = "exploding"
    elif log_total <= -math.log(factor) or horizon < span:
        kind = "vanishing"
    else:
        kind = "healthy"
    return Verdict(kind, rate, horizon, span, total)


# ----------------------------------------------------------------------------- training metrics

def gradient_norm_metrics(grads: Any, prefix: str = "grad_norm/") -> dict[str, jax.Array]:
    """``{prefix + name: ‖g‖}`` for every leaf of a gradient pytree (for a train step's metrics).

    Names are the leaf paths joined by ``/``: ``grad_norm/W_hh``, ``grad_norm/readout/w``.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = "/".join(_key_name(p) for p in path)
        out[prefix + name] = jnp.sqrt(jnp.sum(jnp.square(leaf)))
    return out


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)
