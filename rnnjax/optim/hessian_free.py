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
* an :class:`OutputLoss` (:mod:`rnnjax.optim.hf_losses`): ``loss(outputs, batch)
  -> scalar`` and its Hessian with respect to the outputs as a closed-form product
  ``hessian_vp(outputs, batch, v)`` for the matching pairs softmax + cross-entropy,
  logistic + binary cross-entropy, linear + squared error.

CG, backtracking, the damping rule and the line search are in
:mod:`rnnjax.optim.cg`; :mod:`rnnjax.models.hf` adapts a model with a readout at
every step to this optimizer. Everything follows the params' dtype: with float64
params (``jax_enable_x64``) losses, curvature products, the structural term and
CG run in float64.

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
4. CG backtracking: the last iterate is scored on the loss, then the iterates
   kept at geometrically spaced iterations (ceil(1.3^k)) from the latest back,
   while the loss does not get worse (Martens 2010 §4.6);
5. the reduction ratio ρ = (f(θ+p) − f(θ)) / (gᵀp + ½ pᵀGp) (the undamped
   model; 0 where that model predicts no decrease) moves λ by the
   Levenberg–Marquardt rule (ρ < ¼: λ·3/2; ρ > ¾: λ·2/3);
6. a backtracking (Armijo) line search on the final step: rate 1, 0.8, 0.8², …
   until f(θ + rate·p) ≤ f(θ) + 0.01·rate·gᵀp; no step if none passes.

Steps 4–6 score the loss on the gradient batch, or on a separate ``eval_batch``
when one is passed (Martens & Sutskever 2011 used fresh 1,000-sequence batches
for the curvature and for backtracking and line search, and 10,000 sequences
for the gradient: :func:`martens2011`).

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

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rnnjax.optim.cg import (CGResult, backtrack, conjugate_gradient, line_search, save_schedule,
                             update_damping)
from rnnjax.optim.hf_losses import (OutputLoss, autodiff_loss, sigmoid_cross_entropy,
                                    softmax_cross_entropy, squared_error)

PyTree = Any
Batch = Any
Array = jax.Array

__all__ = [
    # re-exported from rnnjax.optim.hf_losses and rnnjax.optim.cg
    "OutputLoss",
    "softmax_cross_entropy",
    "sigmoid_cross_entropy",
    "squared_error",
    "autodiff_loss",
    "CGResult",
    "conjugate_gradient",
    "save_schedule",
    "backtrack",
    "update_damping",
    "line_search",
    # this module
    "gauss_newton_operator",
    "HFState",
    "HessianFree",
    "hessian_free",
    "Protocol",
    "martens2011",
    "take_examples",
    "make_train_step",
]


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
            scale = jnp.asarray(structural_weight, flat.dtype) * inv_count
            h_hid = jax.tree.map(lambda t: (scale * t).astype(t.dtype), j_hid)
        else:
            h_hid = None
        (res,) = vjp_fn((h_out, h_hid))
        return res

    return (outputs, hiddens) if net_returns_hidden else outputs, gv, unravel


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
    ``update(params, state, batch, curvature_batch, eval_batch=None) -> (params, state, info)``
    (``eval_batch``: where backtracking, ρ and the line search score the loss;
    None: ``batch``)."""

    init: Callable[[PyTree], HFState]
    update: Callable[..., tuple[PyTree, HFState, dict[str, Array]]]


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
        return HFState(jnp.asarray(initial_damping, flat.dtype), jnp.zeros_like(flat),
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

    def update(params: PyTree, state: HFState, batch: Batch, curvature_batch: Batch,
               eval_batch: Batch | None = None):
        flat, unravel = ravel_pytree(params)
        lam = state.damping.astype(flat.dtype)

        loss_g, g = jax.value_and_grad(lambda x: loss_fn(unravel(x), batch))(flat)
        scoring = batch if eval_batch is None else eval_batch

        def f(x):
            return loss_fn(unravel(x), scoring)

        loss0 = loss_g if eval_batch is None else f(flat)
        _, gv, _ = gauss_newton_operator(net, output_loss, params, curvature_batch,
                                         net_returns_hidden=net_returns_hidden,
                                         structural_batch_axis=structural_batch_axis)
        mu_lam = structural_damping * lam

        def damped(v):
            return gv(v, mu_lam) + lam * v

        precond = diag_preconditioner(params, curvature_batch, lam) if preconditioner else None
        cg = conjugate_gradient(damped, -g, cg_decay * state.direction, max_iters=max_cg_iters,
                                tol=cg_tol, preconditioner=precond, backtrack_gap=backtrack_gap)
        p, f_p, best_iter, bt_evals = backtrack(lambda d: f(flat + d), cg)

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
        new_state = HFState(
            damping=new_lam.astype(state.damping.dtype),
            direction=cg.x,
            updates=state.updates + 1,
            grad_evals=state.grad_evals + 1.0,
            curvature_products=state.curvature_products + (cg.iters + 2).astype(jnp.float32),
            loss_evals=(state.loss_evals + (bt_evals + ls_evals).astype(jnp.float32)
                        + (0.0 if eval_batch is None else 1.0)),
        )
        info = {
            "loss": loss_g, "new_loss": f_new, "grad_norm": jnp.linalg.norm(g),
            "damping": lam, "rho": rho, "cg_iters": cg.iters.astype(jnp.float32),
            "best_cg_iter": best_iter.astype(jnp.float32), "step_rate": rate,
            "step_norm": rate * jnp.linalg.norm(p),
            "total_curvature_products": new_state.curvature_products,
            "total_grad_evals": new_state.grad_evals,
        }
        return new_params, new_state, info

    return HessianFree(init, update)


# ----------------------------------------------------------------------------
# The protocol of Martens & Sutskever (2011).
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Protocol:
    """Every setting of a Hessian-free training protocol (the model's and the optimizer's).

    The optimizer's settings are the keyword arguments of :func:`hessian_free`
    (:meth:`optimizer_kwargs`); the batch sizes say how many fresh sequences each
    update draws for the gradient, the curvature products and the loss scored by
    backtracking, ρ and the line search (three independent draws).
    """

    hidden: int = 100
    activation: str = "tanh"
    sparse_connections: int = 15
    spectral_radius: float | None = 1.1
    input_scale: float = 0.1           # stddev of the sparse input weights
    initial_damping: float = 1.0
    structural_damping: float = 1.0 / 30.0
    max_cg_iters: int = 300
    gradient_batch: int = 10_000
    curvature_batch: int = 1_000
    eval_batch: int = 1_000
    cg_decay: float = 0.95
    preconditioner: bool = False

    def optimizer_kwargs(self) -> dict[str, Any]:
        return dict(initial_damping=self.initial_damping,
                    structural_damping=self.structural_damping,
                    net_returns_hidden=True, max_cg_iters=self.max_cg_iters,
                    cg_decay=self.cg_decay, preconditioner=self.preconditioner)


def martens2011(**overrides: Any) -> Protocol:
    """Martens & Sutskever (2011)'s protocol for the long-term-dependency problems.

    100 tanh units with sparse initialisation (15 incoming weights ~N(0, 1) per unit,
    W_hh then scaled to spectral radius 1.1: unscaled, its radius is about √15 ≈ 3.9,
    the units saturate and HF barely learned addition at T = 10 in 12 updates,
    where the scaled init solved it in 7; the 1.1 is this library's choice, the
    paper's exact scaling is not verified);
    structural damping μ = 1/30 (the hidden-state penalty weight is μλ); up to 300
    CG iterations per update; the gradient on 10,000 fresh sequences, the curvature
    products and backtracking/line search on separate fresh 1,000-sequence batches.
    ``initial_damping`` λ0 = 1 here: the paper scales it with the number of outputs
    of its summed loss, and the losses here are means over the scored outputs, so
    λ0 = 1 plays that role (an interpretation, not a quoted figure).
    Any field of :class:`Protocol` can be overridden (e.g. smaller batches on a CPU).
    """
    fields = {f.name for f in dataclasses.fields(Protocol)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"martens2011: unknown setting(s) {sorted(unknown)}; accepted: "
                         f"{sorted(fields)}")
    return Protocol(**overrides)


# ----------------------------------------------------------------------------
# The team's training loop.
# ----------------------------------------------------------------------------

def make_train_step(hf: HessianFree, *, curvature_batch_size: int | None = None,
                    example_axes: Any = 0, separate_batches: bool = False) -> Callable:
    """A pure ``step_fn(train_state, batch) -> (train_state, metrics)`` for :func:`rnnjax.train.run`.

    ``train_state.opt_state`` is the :class:`HFState` (make the state with
    ``train.init_state(params, None, opt_state=hf.init(params))``). The curvature
    batch is the first ``curvature_batch_size`` examples of ``batch`` (the whole
    batch if None); batches are fresh random draws, so that is a random subset.
    With ``separate_batches`` each batch is a tuple ``(gradient_batch,
    curvature_batch, eval_batch)`` of independent draws (Martens & Sutskever
    2011's protocol) and ``curvature_batch_size`` must be None.
    A non-finite loss or gradient leaves the params and optimizer state unchanged
    (``train.guarded_update``).
    """
    from rnnjax import train  # the engine imports optax & orbax; keep this module light

    if curvature_batch_size is not None and (not isinstance(curvature_batch_size, int)
                                             or curvature_batch_size < 1):
        raise ValueError(f"curvature_batch_size must be a positive integer or None, got "
                         f"{curvature_batch_size!r}")

    if separate_batches and curvature_batch_size is not None:
        raise ValueError("separate_batches=True takes the curvature batch from the batch tuple; "
                         f"curvature_batch_size must be None, got {curvature_batch_size!r}")

    def step_fn(state, batch):
        if separate_batches:
            batch, curv, held_out = batch
        else:
            held_out = None
            curv = batch if curvature_batch_size is None else take_examples(
                batch, curvature_batch_size, example_axes)
        new_params, new_opt, info = hf.update(state.params, state.opt_state, batch, curv, held_out)
        finite = jnp.isfinite(info["loss"]) & jnp.isfinite(info["grad_norm"])
        new_state = train.guarded_update(state, new_params, new_opt, finite)
        metrics = dict(info, finite=finite.astype(jnp.float32), bad_steps=new_state.bad_steps)
        return new_state, metrics

    return step_fn
