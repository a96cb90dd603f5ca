"""Hessian-free optimization (Martens 2010; Martens & Sutskever 2011).

A truncated-Newton method: each update minimises a damped quadratic model of the
loss by conjugate gradient (CG), using only products of the Gauss–Newton matrix
with vectors, never the matrix itself.

The model is split in two so that the curvature is exact and positive semi-definite:

* ``net(params, batch) -> outputs`` the network's outputs before the loss's own
  non-linearity (logits for softmax or logistic outputs, linear outputs for
  squared error); with ``net_returns_hidden=True`` it returns ``(outputs, hiddens)``
  where ``hiddens`` (e.g. ``hs`` [T, B, H]) are the states that structural damping
  penalises.
* an :class:`OutputLoss`: ``loss(outputs, batch) -> scalar`` and its Hessian with
  respect to the outputs as a closed-form product ``hessian_vp(outputs, batch, v)``
  for the matching pairs softmax + cross-entropy, logistic + binary cross-entropy,
  linear + squared error.

The Gauss–Newton product is ``G v = Jᵀ H_L J v``: ``J v`` by forward mode
(``jax.linearize``, once per update, so each CG iteration reuses the stored
linearisation), ``Jᵀ u`` by transposing that linear map (reverse mode). H_L is
positive semi-definite for these pairs, so ``vᵀ G v = (Jv)ᵀ H_L (Jv) ≥ 0``.

One update (:func:`hessian_free` ``.update``), following Martens (2010) §4:

1. loss and gradient ``g`` on the gradient batch;
2. linearise ``net`` on the curvature batch (a subset of the gradient batch);
3. CG on ``(G + μλ Sᴳ + λ I) p = -g`` from the previous CG solution times 0.95,
   stopped by Martens' relative-progress rule or the iteration cap, with an
   optional diagonal preconditioner ``(diag(mean_i g_i²) + λ)^0.75``;
   ``Sᴳ = J_hᵀ J_h / B`` is the Gauss–Newton matrix of the structural-damping
   penalty ``(1/2B) Σ_{t,b,j} Δh²`` on the hidden states (Martens & Sutskever 2011);
4. CG backtracking: the iterates kept at geometrically spaced iterations
   (ceil(1.3^k)) and the last one are scored on the loss; the best is chosen;
5. the reduction ratio ρ = (f(θ+p) − f(θ)) / (gᵀp + ½ pᵀGp) (the undamped
   model; 0 where that model predicts no decrease) moves λ by the
   Levenberg–Marquardt rule (ρ < ¼: λ·3/2; ρ > ¾: λ·2/3);
6. a backtracking (Armijo) line search on the final step: rate 1, 0.8, 0.8², …
   until f(θ + rate·p) ≤ f(θ) + 0.01·rate·gᵀp; no step if none passes.

    >>> hf = hessian_free(net, softmax_cross_entropy(), max_cg_iters=50)
    >>> opt_state = hf.init(params)
    >>> params, opt_state, info = hf.update(params, opt_state, batch, curvature_batch)

With the team's training loop (:mod:`rnnjax.train`)::

    state = train.init_state(params, None, opt_state=hf.init(params), seed=0)
    step_fn = make_train_step(hf, curvature_batch_size=100, example_axes=...)
    state, history = train.run(workdir, state, step_fn, batch_fn, steps=...)

Batches are any pytree; the built-in losses read ``batch["targets"]`` and
``batch.get("mask")`` (or the attributes ``batch.targets``, ``batch.mask`` of a
NamedTuple such as :class:`rnnjax.data.synthetic.Batch`) unless given other
accessors. ``example_axes`` says where
the examples lie in each leaf of a batch (e.g. ``{"inputs": 1, "targets": 0}``
for time-major inputs [T, B, D] with one target per sequence [B]); it is needed
to cut the curvature batch and for the preconditioner's per-example gradients.

References: J. Martens, "Deep learning via Hessian-free optimization", ICML 2010;
J. Martens & I. Sutskever, "Learning recurrent neural networks with Hessian-free
optimization", ICML 2011; "Training deep and recurrent networks with
Hessian-free optimization", Neural Networks: Tricks of the Trade, 2012.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnjax import losses

PyTree = Any
Batch = Any
Array = jax.Array

__all__ = [
    "OutputLoss",
    "softmax_cross_entropy",
    "sigmoid_cross_entropy",
    "squared_error",
    "autodiff_loss",
    "gauss_newton_operator",
    "CGResult",
    "conjugate_gradient",
    "save_schedule",
    "backtrack",
    "update_damping",
    "line_search",
    "HFState",
    "HessianFree",
    "hessian_free",
    "take_examples",
    "make_train_step",
]


# ----------------------------------------------------------------------------
# Losses on outputs with their Hessian-vector products in closed form.
# ----------------------------------------------------------------------------

class OutputLoss(NamedTuple):
    """A loss on the network's outputs and the product of its Hessian with a vector.

    loss: ``loss(outputs, batch) -> scalar``.
    hessian_vp: ``hessian_vp(outputs, batch, v) -> H_L v`` (v and H_L v shaped
      like ``outputs``), H_L the Hessian of ``loss`` with respect to ``outputs``.
    """

    name: str
    loss: Callable[[Array, Batch], Array]
    hessian_vp: Callable[[Array, Batch, Array], Array]


def _default_targets(batch: Batch) -> Array:
    """``batch["targets"]`` for a dict, ``batch.targets`` otherwise (e.g. synthetic.Batch)."""
    return batch["targets"] if isinstance(batch, dict) else batch.targets


def _default_mask(batch: Batch) -> Array | None:
    """``batch.get("mask")`` for a dict, ``batch.mask`` (or None) otherwise."""
    return batch.get("mask") if isinstance(batch, dict) else getattr(batch, "mask", None)


def _position_weights(mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
    """Weights w (broadcast to ``shape``) with loss = Σ w·ℓ: mask / number counted."""
    if mask is None:
        m = jnp.ones(shape, dtype)
    else:
        mask = jnp.asarray(mask)
        if mask.ndim > len(shape):
            raise ValueError(f"mask has shape {mask.shape}, more axes than the outputs' "
                             f"per-position shape {shape}")
        m = jnp.broadcast_to(mask.astype(dtype).reshape(mask.shape + (1,) * (len(shape) - mask.ndim)),
                             shape)
    return m / jnp.maximum(jnp.sum(m), 1.0)


def softmax_cross_entropy(targets: Callable[[Batch], Array] = _default_targets,
                          mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Softmax outputs with cross-entropy: mean nats over unmasked positions.

    outputs: logits [..., V]; targets [...] ints; mask broadcastable to [...].
    H_L v = w ⊙ (p ⊙ v − p (pᵀv)) per position, p = softmax(logits), w = mask / count.
    """

    def loss(outputs, batch):
        return losses.cross_entropy(outputs, targets(batch), mask(batch))

    def hessian_vp(outputs, batch, v):
        p = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
        w = _position_weights(mask(batch), outputs.shape[:-1], p.dtype)[..., None]
        return (w * (p * v - p * jnp.sum(p * v, axis=-1, keepdims=True))).astype(v.dtype)

    return OutputLoss("softmax_cross_entropy", loss, hessian_vp)


def sigmoid_cross_entropy(targets: Callable[[Batch], Array] = _default_targets,
                          mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Logistic outputs with binary cross-entropy: mean nats over unmasked elements.

    outputs: logits [...]; targets [...] in {0, 1}; mask broadcastable to [...].
    H_L v = w ⊙ σ(z)(1 − σ(z)) ⊙ v, w = mask / count.
    """

    def loss(outputs, batch):
        return losses.sigmoid_binary_cross_entropy(outputs, targets(batch), mask(batch))

    def hessian_vp(outputs, batch, v):
        s = jax.nn.sigmoid(outputs.astype(jnp.float32))
        w = _position_weights(mask(batch), outputs.shape, s.dtype)
        return (w * s * (1.0 - s) * v).astype(v.dtype)

    return OutputLoss("sigmoid_cross_entropy", loss, hessian_vp)


def squared_error(targets: Callable[[Batch], Array] = _default_targets,
                  mask: Callable[[Batch], Array | None] = _default_mask) -> OutputLoss:
    """Linear outputs with squared error: mean of (z − y)² over unmasked elements.

    outputs [..., D] (or [...]); H_L v = 2 w ⊙ v, w = mask / count (the Hessian is
    constant, so here Gauss–Newton is the exact Hessian of the network's loss
    only where the network is linear in its params).
    """

    def loss(outputs, batch):
        return losses.squared_error(outputs, targets(batch), mask(batch))

    def hessian_vp(outputs, batch, v):
        w = _position_weights(mask(batch), outputs.shape, jnp.float32)
        return (2.0 * w * v).astype(v.dtype)

    return OutputLoss("squared_error", loss, hessian_vp)


def autodiff_loss(loss: Callable[[Array, Batch], Array], name: str = "autodiff") -> OutputLoss:
    """Any loss on outputs, with H_L v by forward-over-reverse differentiation.

    Exact, but positive semi-definite only when ``loss`` is convex in the outputs;
    prefer the closed forms above for the matching pairs.
    """

    def hessian_vp(outputs, batch, v):
        return jax.jvp(lambda o: jax.grad(loss)(o, batch), (outputs,), (v,))[1]

    return OutputLoss(name, loss, hessian_vp)


# ----------------------------------------------------------------------------
# Gauss–Newton–vector products.
# ----------------------------------------------------------------------------

def _structural_count(hiddens: PyTree, axis: int) -> float:
    leaves = jax.tree.leaves(hiddens)
    if not leaves:
        raise ValueError("net_returns_hidden=True but net returned no hidden states")
    shape = leaves[0].shape
    if len(shape) <= axis:
        raise ValueError(f"hidden states of shape {shape} have no batch axis {axis} "
                         "(structural_batch_axis); expected e.g. hs [T, B, H] with axis 1")
    return float(shape[axis])


def gauss_newton_operator(
    net: Callable[[PyTree, Batch], Any],
    output_loss: OutputLoss,
    params: PyTree,
    batch: Batch,
    *,
    net_returns_hidden: bool = False,
    structural_batch_axis: int = 1,
) -> tuple[Any, Callable[[Array, Array], Array], Callable[[Array], PyTree]]:
    """Linearise ``net`` at ``params`` on ``batch`` and return its curvature product.

    Returns ``(outputs, gv, unravel)``: ``outputs`` what ``net`` returned;
    ``gv(v, structural_weight) -> G v + structural_weight · J_hᵀ J_h v / B`` on
    flat vectors [n] (``ravel_pytree`` order; ``unravel`` maps them back to
    params), where G = Jᵀ H_L J is the Gauss–Newton matrix of the loss and J_h the
    Jacobian of the hidden states (B their batch size; weight 0 with no hiddens).
    The linearisation is computed once: each call costs one forward-mode and one
    reverse-mode linear pass, without re-running the non-linear network.
    """
    flat, unravel = ravel_pytree(params)

    def net_flat(x):
        out = net(unravel(x), batch)
        return out if net_returns_hidden else (out, None)

    (outputs, hiddens), jvp_fn = jax.linearize(net_flat, flat)
    vjp_fn = jax.linear_transpose(jvp_fn, flat)
    inv_count = 1.0 / _structural_count(hiddens, structural_batch_axis) if net_returns_hidden else 0.0

    def gv(v: Array, structural_weight: Array | float = 0.0) -> Array:
        j_out, j_hid = jvp_fn(v)
        h_out = output_loss.hessian_vp(outputs, batch, j_out)
        if net_returns_hidden:
            scale = jnp.asarray(structural_weight, jnp.float32) * inv_count
            h_hid = jax.tree.map(lambda t: (scale * t).astype(t.dtype), j_hid)
        else:
            h_hid = None
        (res,) = vjp_fn((h_out, h_hid))
        return res

    return (outputs, hiddens) if net_returns_hidden else outputs, gv, unravel


# ----------------------------------------------------------------------------
# Conjugate gradient with Martens' stopping rule and saved iterates.
# ----------------------------------------------------------------------------

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


def backtrack(objective: Callable[[Array], Array], result: CGResult) -> tuple[Array, Array, Array]:
    """CG backtracking: the kept iterate with the lowest ``objective``.

    Returns ``(p, objective(p), iteration of p)``. Non-finite objective values and
    rows never reached count as +inf; ties go to the later iterate.
    """
    values = jax.lax.map(objective, result.saved)
    values = jnp.where((result.saved_iters >= 0) & jnp.isfinite(values), values, jnp.inf)
    # argmin over the reversed rows: among equal values prefer the later iterate.
    best = values.shape[0] - 1 - jnp.argmin(values[::-1])
    # If every value is inf (all steps blow up), fall back to the first kept iterate.
    best = jnp.where(jnp.isfinite(values[best]), best, 0)
    return result.saved[best], values[best], result.saved_iters[best]


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

    k, rate, f = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.float32(1.0), f1))
    failed = bad(rate, f)
    return jnp.where(failed, 0.0, rate), jnp.where(failed, f0, f), k


# ----------------------------------------------------------------------------
# The optimizer.
# ----------------------------------------------------------------------------

class HFState(NamedTuple):
    """Hessian-free optimizer state (a pytree; checkpoint it with the params).

    damping: float [] λ.
    direction: [n] the last CG solution (flat), the next CG's start (× decay).
    updates: int [] updates made.
    grad_evals, curvature_products, loss_evals: float [] running totals of the
      gradient evaluations, Gauss–Newton products and extra loss evaluations
      (backtracking, line search, ρ), each on its own batch.
    """

    damping: Array
    direction: Array
    updates: Array
    grad_evals: Array
    curvature_products: Array
    loss_evals: Array


class HessianFree(NamedTuple):
    """``init(params) -> HFState``;
    ``update(params, state, batch, curvature_batch) -> (params, state, info)``."""

    init: Callable[[PyTree], HFState]
    update: Callable[[PyTree, HFState, Batch, Batch], tuple[PyTree, HFState, dict[str, Array]]]


def _leaf_axes(batch: Batch, axes: Any) -> PyTree:
    """``axes`` (an int, or a pytree shaped like ``batch`` of ints/None) per leaf of ``batch``."""
    if isinstance(axes, int):
        return jax.tree.map(lambda _: axes, batch)
    try:
        return jax.tree.map(lambda ax, _: ax, axes, batch, is_leaf=lambda x: x is None)
    except ValueError as e:
        raise ValueError(f"example_axes {axes!r} must be an int or a pytree with the structure of "
                         f"the batch {jax.tree.structure(batch)}") from e


def take_examples(batch: Batch, n: int, example_axes: Any = 0) -> Batch:
    """The first ``n`` examples of ``batch`` (leaves cut along their example axis; None: kept)."""
    axes = _leaf_axes(batch, example_axes)

    def cut(ax, x):
        if ax is None:
            return x
        if x.shape[ax] < n:
            raise ValueError(f"curvature_batch_size {n} exceeds the batch's {x.shape[ax]} examples "
                             f"(leaf of shape {x.shape}, example axis {ax})")
        return jax.lax.slice_in_dim(x, 0, n, axis=ax)

    return jax.tree.map(cut, axes, batch, is_leaf=lambda x: x is None)


def hessian_free(
    net: Callable[[PyTree, Batch], Any],
    output_loss: OutputLoss,
    *,
    initial_damping: float = 1.0,
    structural_damping: float = 0.0,
    net_returns_hidden: bool = False,
    structural_batch_axis: int = 1,
    max_cg_iters: int = 250,
    cg_tol: float = 5e-4,
    cg_decay: float = 0.95,
    backtrack_gap: float = 1.3,
    preconditioner: bool = False,
    example_axes: Any = None,
    damping_boost: float = 1.5,
    damping_drop: float = 2.0 / 3.0,
    min_damping: float = 1e-8,
    line_search_decay: float = 0.8,
    line_search_c: float = 1e-2,
    line_search_steps: int = 20,
) -> HessianFree:
    """Build a Hessian-free optimizer for ``net`` with ``output_loss``.

    Args:
      net: ``net(params, batch) -> outputs`` (or ``(outputs, hiddens)`` with
        ``net_returns_hidden``); deterministic (no dropout).
      output_loss: an :class:`OutputLoss` whose Hessian matches the output
        non-linearity (see :func:`softmax_cross_entropy` etc.).
      initial_damping: λ at the start (``--hf_lambda``).
      structural_damping: μ (``--hf_mu``); the hidden-state penalty weight is μλ.
        Needs ``net_returns_hidden=True``.
      structural_batch_axis: the batch axis of the hidden states (1 for [T, B, H]).
      max_cg_iters: the CG iteration cap (``--cg_iters``).
      cg_tol: ε of Martens' stopping rule.
      cg_decay: CG starts from the previous solution times this.
      backtrack_gap: CG iterates are kept at iterations ceil(gap^k).
      preconditioner: use ``(diag(mean_i g_i²) + λ)^0.75`` (per-example gradients
        on the curvature batch; needs ``example_axes``).
      example_axes: int or pytree like the batch: the example axis of each leaf.
      damping_boost, damping_drop: the Levenberg–Marquardt factors.
      line_search_decay, line_search_c, line_search_steps: the final line search.
    """
    if not initial_damping > 0:
        raise ValueError(f"initial_damping (--hf_lambda) must be positive, got {initial_damping!r}")
    if structural_damping < 0:
        raise ValueError(f"structural_damping (--hf_mu) must be >= 0, got {structural_damping!r}")
    if structural_damping > 0 and not net_returns_hidden:
        raise ValueError("structural_damping (--hf_mu) > 0 needs net_returns_hidden=True: net must "
                         "return (outputs, hiddens) so that changes of the hidden states can be damped")
    if not isinstance(max_cg_iters, int) or max_cg_iters < 1:
        raise ValueError(f"max_cg_iters (--cg_iters) must be a positive integer, got {max_cg_iters!r}")
    if not 0 <= cg_decay <= 1:
        raise ValueError(f"cg_decay must be in [0, 1], got {cg_decay!r}")
    if preconditioner and example_axes is None:
        raise ValueError("preconditioner=True needs example_axes (the example axis of each batch "
                         "leaf) to compute per-example gradients")
    if not (damping_boost > 1 and 0 < damping_drop < 1):
        raise ValueError(f"need damping_boost > 1 and 0 < damping_drop < 1, got "
                         f"{damping_boost!r}, {damping_drop!r}")

    def outputs_only(params, batch):
        out = net(params, batch)
        return out[0] if net_returns_hidden else out

    def loss_fn(params, batch):
        return output_loss.loss(outputs_only(params, batch), batch)

    def init(params: PyTree) -> HFState:
        flat, _ = ravel_pytree(params)
        z = jnp.zeros((), jnp.float32)
        return HFState(jnp.asarray(initial_damping, jnp.float32), jnp.zeros_like(flat),
                       jnp.zeros((), jnp.int32), z, z, z)

    def diag_preconditioner(params, batch, damping):
        axes = _leaf_axes(batch, example_axes)
        flat, unravel = ravel_pytree(params)

        def one(example):  # an example keeps a batch axis of size 1
            ex = jax.tree.map(lambda ax, x: x if ax is None else jnp.expand_dims(x, ax), axes,
                              example, is_leaf=lambda x: x is None)
            return jax.grad(lambda f: loss_fn(unravel(f), ex))(flat)

        sq = jax.vmap(lambda e: jnp.square(one(e)), in_axes=(axes,))(batch)
        return (jnp.mean(sq, axis=0) + damping) ** 0.75

    def update(params: PyTree, state: HFState, batch: Batch, curvature_batch: Batch):
        flat, unravel = ravel_pytree(params)

        def f(x):
            return loss_fn(unravel(x), batch)

        loss0, g = jax.value_and_grad(f)(flat)
        _, gv, _ = gauss_newton_operator(net, output_loss, params, curvature_batch,
                                         net_returns_hidden=net_returns_hidden,
                                         structural_batch_axis=structural_batch_axis)
        lam = state.damping
        mu_lam = structural_damping * lam

        def damped(v):
            return gv(v, mu_lam) + lam * v

        precond = diag_preconditioner(params, curvature_batch, lam) if preconditioner else None
        cg = conjugate_gradient(damped, -g, cg_decay * state.direction, max_iters=max_cg_iters,
                                tol=cg_tol, preconditioner=precond, backtrack_gap=backtrack_gap)
        p, f_p, best_iter = backtrack(lambda d: f(flat + d), cg)

        slope = jnp.vdot(g, p)
        model_decrease = slope + 0.5 * jnp.vdot(p, gv(p, 0.0))  # undamped model q(p) − q(0)
        # ρ is undefined when the model predicts no decrease (possible for an early
        # iterate of a warm-started CG) or the loss is not finite: count it as 0 (bad).
        defined = (model_decrease < 0) & jnp.isfinite(f_p)
        rho = jnp.where(defined, (f_p - loss0) / jnp.where(defined, model_decrease, -1.0), 0.0)
        new_lam = update_damping(lam, rho, boost=damping_boost, drop=damping_drop,
                                 min_damping=min_damping)

        rate, f_new, ls_evals = line_search(lambda a: f(flat + a * p), loss0, slope, f_p,
                                            decay=line_search_decay, c=line_search_c,
                                            max_steps=line_search_steps)
        new_params = unravel(flat + rate * p)
        n_saved = jnp.sum(cg.saved_iters >= 0).astype(jnp.float32)
        new_state = HFState(
            damping=new_lam,
            direction=cg.x,
            updates=state.updates + 1,
            grad_evals=state.grad_evals + 1.0,
            curvature_products=state.curvature_products + (cg.iters + 2).astype(jnp.float32),
            loss_evals=state.loss_evals + n_saved + ls_evals.astype(jnp.float32),
        )
        info = {
            "loss": loss0, "new_loss": f_new, "grad_norm": jnp.linalg.norm(g),
            "damping": lam, "rho": rho, "cg_iters": cg.iters.astype(jnp.float32),
            "best_cg_iter": best_iter.astype(jnp.float32), "step_rate": rate,
            "step_norm": rate * jnp.linalg.norm(p),
            "total_curvature_products": new_state.curvature_products,
            "total_grad_evals": new_state.grad_evals,
        }
        return new_params, new_state, info

    return HessianFree(init, update)


# ----------------------------------------------------------------------------
# The team's training loop.
# ----------------------------------------------------------------------------

def make_train_step(hf: HessianFree, *, curvature_batch_size: int | None = None,
                    example_axes: Any = 0) -> Callable:
    """A pure ``step_fn(train_state, batch) -> (train_state, metrics)`` for :func:`rnnjax.train.run`.

    ``train_state.opt_state`` is the :class:`HFState` (make the state with
    ``train.init_state(params, None, opt_state=hf.init(params))``). The curvature
    batch is the first ``curvature_batch_size`` examples of ``batch`` (the whole
    batch if None); batches are fresh random draws, so that is a random subset.
    A non-finite loss or gradient leaves the params and optimizer state unchanged
    (``train.guarded_update``).
    """
    from rnnjax import train  # the engine imports optax & orbax; keep this module light

    if curvature_batch_size is not None and (not isinstance(curvature_batch_size, int)
                                             or curvature_batch_size < 1):
        raise ValueError(f"curvature_batch_size must be a positive integer or None, got "
                         f"{curvature_batch_size!r}")

    def step_fn(state, batch):
        curv = batch if curvature_batch_size is None else take_examples(
            batch, curvature_batch_size, example_axes)
        new_params, new_opt, info = hf.update(state.params, state.opt_state, batch, curv)
        finite = jnp.isfinite(info["loss"]) & jnp.isfinite(info["grad_norm"])
        new_state = train.guarded_update(state, new_params, new_opt, finite)
        metrics = dict(info, finite=finite.astype(jnp.float32), bad_steps=new_state.bad_steps)
        return new_state, metrics

    return step_fn
