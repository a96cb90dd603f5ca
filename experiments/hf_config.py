"""The settings of the Hessian-free optimizer (``--optimizer=hf``), as a Config mixin.

An experiment that offers Hessian-free lists this mixin before its other bases::

    @dataclasses.dataclass(frozen=True)
    class Config(hf_config.HessianFreeConfig, cli.TrainConfig):
        ...

which adds ``--cg_iters``, ``--hf_lambda``, ``--hf_mu``, ``--curvature_batch_size``
and ``--hf_preconditioner`` (same names and defaults as before) and lets
``--optimizer`` take ``hf`` besides the first-order names. ``check`` refuses a
curvature batch larger than the batch, then runs the other bases' checks.
"""

from __future__ import annotations

import dataclasses

from experiments import cli

# The first-order names --optimizer accepts in every experiment, and Hessian-free.
OPTIMIZERS = cli.optim_factory.OPTIMIZERS + ("hf",)
HF_FIELDS = ("cg_iters", "hf_lambda", "hf_mu", "curvature_batch_size", "hf_preconditioner")


@dataclasses.dataclass(frozen=True)
class HessianFreeConfig:
    """Hessian-free's settings (Martens 2010; Martens & Sutskever 2011)."""

    optimizer: str = cli.field("adam", "The optimizer: an optax name, or hf (Hessian-free).",
                               choices=OPTIMIZERS)
    cg_iters: int = cli.field(100, "--optimizer=hf: cap on conjugate-gradient iterations per "
                              "update.", check=cli.positive)
    hf_lambda: float = cli.field(1.0, "--optimizer=hf: initial Tikhonov damping lambda, adapted "
                                 "by the Levenberg-Marquardt rule.", check=cli.positive)
    hf_mu: float = cli.field(0.0, "--optimizer=hf: structural damping mu; the hidden-state "
                             "penalty weight is mu*lambda (Martens & Sutskever 2011 used 1/30).",
                             check=cli.non_negative)
    curvature_batch_size: int | None = cli.field(
        None, "--optimizer=hf: sequences of each batch used for the Gauss-Newton products (at "
        "most --batch_size; unset: the whole batch).", check=cli.positive)
    hf_preconditioner: bool = cli.field(False, "--optimizer=hf: Martens' diagonal preconditioner "
                                        "(diag(mean squared per-example gradients) + lambda)^0.75.")

    def check(self) -> None:
        """Curvature batch within the batch; then the other bases' cross-field checks."""
        cbs, batch = self.curvature_batch_size, getattr(self, "batch_size", None)
        if cbs is not None and batch is not None and cbs > batch:
            raise cli.ConfigError("curvature_batch_size", cbs,
                                  f"expected a positive integer at most batch_size={batch}")
        parent = getattr(super(), "check", None)
        if callable(parent):
            parent()
