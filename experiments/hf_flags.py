"""Flags of the Hessian-free optimizer (``--optimizer=hf``), defined once.

Import this module next to :mod:`experiments.flags`; :func:`validate` checks the
values and :func:`make_hf` builds the optimizer from them::

    from experiments import flags as common, hf_flags

    cfg = common.validate(optimizers_allowed=common.optimizers.OPTIMIZERS + ("hf",))
    cfg.update(hf_flags.validate())
    if FLAGS.optimizer == "hf":
        opt = hf_flags.make_hf(net, output_loss, net_returns_hidden=True, example_axes=1)
        step_fn = hessian_free.make_train_step(opt, curvature_batch_size=FLAGS.curvature_batch_size,
                                               example_axes=1)
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from rnnjax.optim import hessian_free
from experiments.flags import define as define_flag

FLAGS = flags.FLAGS

HF_FLAGS = ("cg_iters", "hf_lambda", "hf_mu", "curvature_batch_size", "hf_preconditioner")


def _define() -> None:
    if "cg_iters" in FLAGS:
        return
    define_flag("integer", "cg_iters", 100, "--optimizer=hf: cap on conjugate-gradient iterations "
                         "per update (a positive integer).")
    define_flag("float", "hf_lambda", 1.0, "--optimizer=hf: initial Tikhonov damping lambda "
                       "(a positive number), adapted by the Levenberg-Marquardt rule.")
    define_flag("float", "hf_mu", 0.0, "--optimizer=hf: structural damping mu (>= 0); the "
                       "hidden-state penalty weight is mu*lambda (Martens & Sutskever 2011 "
                       "used 1/30).")
    define_flag("integer", "curvature_batch_size", None, "--optimizer=hf: sequences of each batch "
                         "used for the Gauss-Newton products (a positive integer at most "
                         "--batch_size; unset: the whole batch).")
    define_flag("bool", "hf_preconditioner", False, "--optimizer=hf: Martens' diagonal "
                      "preconditioner (diag(mean squared per-example gradients) + lambda)^0.75.")


_define()


def validate() -> dict[str, Any]:
    """Check the HF flags (raise app.UsageError naming the flag); return their values."""
    if not isinstance(FLAGS.cg_iters, int) or FLAGS.cg_iters < 1:
        raise app.UsageError(f"--cg_iters={FLAGS.cg_iters!r} is invalid: expected a positive integer.")
    if not FLAGS.hf_lambda > 0:
        raise app.UsageError(f"--hf_lambda={FLAGS.hf_lambda!r} is invalid: expected a positive number.")
    if not FLAGS.hf_mu >= 0:
        raise app.UsageError(f"--hf_mu={FLAGS.hf_mu!r} is invalid: expected a number >= 0.")
    cbs = FLAGS.curvature_batch_size
    if cbs is not None and (cbs < 1 or cbs > FLAGS.batch_size):
        raise app.UsageError(f"--curvature_batch_size={cbs!r} is invalid: expected a positive "
                             f"integer at most --batch_size={FLAGS.batch_size}.")
    return {name: FLAGS[name].value for name in HF_FLAGS}


def make_hf(net, output_loss: hessian_free.OutputLoss, *, net_returns_hidden: bool,
            example_axes: Any) -> hessian_free.HessianFree:
    """The Hessian-free optimizer the flags describe (call after :func:`validate`)."""
    return hessian_free.hessian_free(
        net, output_loss, initial_damping=FLAGS.hf_lambda, structural_damping=FLAGS.hf_mu,
        net_returns_hidden=net_returns_hidden, max_cg_iters=FLAGS.cg_iters,
        preconditioner=FLAGS.hf_preconditioner, example_axes=example_axes)
