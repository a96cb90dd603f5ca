"""The one adapter from a model to Hessian-free optimization.

Every model that trains with :mod:`rnnjax.optim.hessian_free` goes through here:
the settings named as the experiments' flags (``cg_iters``, ``hf_lambda``,
``hf_mu``, ``hf_preconditioner``, ``curvature_batch_size``) become the optimizer,
a task kind picks the matching output loss, and a model's params become a
:class:`rnnjax.train.TrainState` plus a pure step for :func:`rnnjax.train.run`.

    >>> opt = hf.optimizer(net, "regression", {"cg_iters": 50, "hf_mu": 1 / 30})
    >>> state, step_fn = hf.state_and_step(net, "classification", params, settings)

``net(params, batch) -> (outputs [T, B, O], hiddens [T, B, H])``: the outputs
before the loss's non-linearity and the hidden states that structural damping
penalises (a cell with a readout at every step returns both). For the language
model use :func:`language_model`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from rnnjax.optim import hessian_free as hf_lib
from rnnjax.optim.hf_losses import OutputLoss, for_kind

__all__ = ["DEFAULTS", "optimizer", "from_protocol", "protocol_cell", "state_and_step",
           "language_model"]

# The experiments' flag names and their defaults.
DEFAULTS: dict[str, Any] = {"cg_iters": 100, "hf_lambda": 1.0, "hf_mu": 0.0,
                            "hf_preconditioner": False, "curvature_batch_size": None}


def _output_loss(loss: OutputLoss | str) -> OutputLoss:
    return for_kind(loss) if isinstance(loss, str) else loss


def optimizer(net: Callable, loss: OutputLoss | str, settings: Mapping[str, Any] | None = None,
              *, example_axes: Any = 1) -> hf_lib.HessianFree:
    """Hessian-free for ``net`` with the flag-named ``settings`` (missing ones: :data:`DEFAULTS`).

    loss: an OutputLoss or a task kind (``"regression"``, ``"classification"``).
    example_axes: the example axis of each batch leaf (1 for time-major [T, B, ...]).
    """
    s = {**DEFAULTS, **(settings or {})}
    return hf_lib.hessian_free(
        net, _output_loss(loss), initial_damping=s["hf_lambda"], structural_damping=s["hf_mu"],
        net_returns_hidden=True, max_cg_iters=s["cg_iters"],
        preconditioner=s["hf_preconditioner"], example_axes=example_axes)


def from_protocol(net: Callable, loss: OutputLoss | str,
                  protocol: hf_lib.Protocol) -> hf_lib.HessianFree:
    """Hessian-free with the optimizer settings of ``protocol`` (e.g. ``hessian_free.martens2011()``)."""
    kwargs = protocol.optimizer_kwargs()
    if kwargs["preconditioner"]:
        kwargs["example_axes"] = 1
    return hf_lib.hessian_free(net, _output_loss(loss), **kwargs)


def protocol_cell(protocol: hf_lib.Protocol):
    """The recurrent cell of ``protocol``: ``protocol.hidden`` units of its activation,
    sparse W_hh (``sparse_connections`` incoming weights per unit) at
    ``spectral_radius``, sparse input weights of standard deviation ``input_scale``."""
    from rnnjax import cells, initializers

    k = protocol.sparse_connections
    return cells.vanilla(protocol.hidden, protocol.activation,
                         recurrent_init=initializers.sparse(k, radius=protocol.spectral_radius),
                         input_init=initializers.sparse(k, protocol.input_scale))


def state_and_step(net: Callable, loss: OutputLoss | str, params: Any,
                   settings: Mapping[str, Any] | hf_lib.Protocol | None = None, *,
                   seed: int = 0, example_axes: Any = 1):
    """``(TrainState, step_fn)`` for a model whose batches are time-major.

    With flag-named ``settings`` each batch is one draw and the curvature batch is
    its first ``curvature_batch_size`` sequences; with a :class:`hessian_free.Protocol`
    each batch is a tuple ``(gradient, curvature, eval)`` of independent draws.
    """
    from rnnjax import train  # the engine imports optax & orbax; keep this module light

    if isinstance(settings, hf_lib.Protocol):
        opt = from_protocol(net, loss, settings)
        step = hf_lib.make_train_step(opt, separate_batches=True, example_axes=example_axes)
    else:
        s = {**DEFAULTS, **(settings or {})}
        opt = optimizer(net, loss, s, example_axes=example_axes)
        step = hf_lib.make_train_step(opt, curvature_batch_size=s["curvature_batch_size"],
                                      example_axes=example_axes)
    return train.init_state(params, None, opt_state=opt.init(params), seed=seed), step


def language_model(model: Any, carry: Any,
                   settings: Mapping[str, Any] | None = None) -> hf_lib.HessianFree:
    """Hessian-free for an :mod:`rnnjax.models.lm` model (its split is ``lm.hf_network``)."""
    from rnnjax.models import lm

    return optimizer(lm.hf_network(model), "classification", settings,
                     example_axes=lm.hf_example_axes(carry))
