"""Building blocks behind :mod:`deepalign.functional` (no validation here: callers validate).

- :func:`no_autocast` and :func:`centred`: the statistics run in at least float32, centred in
  two passes.
- :class:`Covariance`: :math:`s\\,\\tilde X^\\top\\tilde X` (centring optional) in one node, with a
  backward of one ``N×d×d`` product instead of autograd's two, written in
  differentiable operations so that every higher derivative is exact (``gradgradcheck``), and
  with a generated vmap rule for :mod:`torch.func`.

Everything else (the covariance, the Gram matrices, the estimators, the collectives) is plain
autograd in :mod:`deepalign.functional`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off: the statistics must not be computed in fp16/bf16.

    Entering even a disabled autocast context costs tens of microseconds per call, so it is
    entered only when autocast is on for ``device`` (never for meta tensors, which have no
    autocast state).
    """
    if device.type != "meta" and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def centred(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` minus its column means (the two-pass form of Eq. 12)."""
    return _subtract_mean(x.to(dtype))


def _subtract_mean(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its column means (over the rows, dimension -2)."""
    return x - x.mean(dim=-2, keepdim=True)


class Covariance(torch.autograd.Function):
    r"""``apply(x, centre, scale)``: :math:`P = s\,\tilde X^\top\tilde X`, and the rows
    :math:`\tilde X` (not differentiable), with :math:`\tilde X = X` minus its column means when
    ``centre``, else ``X`` as given (e.g. rows already centred on a global mean).

    Autograd through ``X.mT @ X`` runs two ``N×d×d`` products in backward, one per operand;
    both operands are the same tensor, so one suffices:
    :math:`\partial L/\partial X = s\,\tilde X(G + G^\top)` with :math:`G = \partial L/\partial P`
    (centring needs no extra term: the columns of :math:`\tilde X(G + G^\top)` sum to 0). A
    first-order backward reuses the forward's :math:`\tilde X`; with ``create_graph`` it
    recomputes it from the saved input in differentiable operations, so double backward
    (gradient penalties, Hessian-vector products, meta-learning) is exact;
    ``generate_vmap_rule`` lets :func:`torch.func.vmap` batch it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, centre: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        xc = _subtract_mean(x) if centre else x
        return (xc.mT @ xc).mul_(scale), xc if centre else x.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, centre, scale = inputs
        rows = output[1]
        ctx.mark_non_differentiable(rows)
        ctx.save_for_backward(x, rows)
        ctx.centre, ctx.scale = centre, scale
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor | None, _: Any
    ) -> tuple[torch.Tensor | None, None, None]:
        if grad is None:
            return None, None, None
        x, rows = ctx.saved_tensors
        # Grad mode is on here only for double backward, which must see how the rows depend on
        # the input: recompute them (or use the input itself when it is the rows).
        if torch.is_grad_enabled():
            rows = _subtract_mean(x) if ctx.centre else x
        with no_autocast(x.device):
            return rows @ ((grad + grad.mT) * ctx.scale), None, None
