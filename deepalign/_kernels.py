"""Building blocks behind :mod:`deepalign.functional` (no validation here: callers validate).

- :func:`no_autocast` and :func:`centred`: the statistics run in at least float32, centred in
  two passes.
- :class:`SelfProduct`: :math:`s\\,X^\\top X` with a backward of one ``N×d×d`` product instead
  of autograd's two, written in differentiable operations so that every higher derivative is
  exact (``gradgradcheck``), and with a generated vmap rule for :mod:`torch.func`.

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
    x = x.to(dtype)
    return x - x.mean(dim=-2, keepdim=True)


class SelfProduct(torch.autograd.Function):
    r""":math:`P = s\,X^\top X` for a ``(N, d)`` matrix :math:`X` and a Python float :math:`s`.

    Autograd through ``X.mT @ X`` runs two ``N×d×d`` products in backward, one per operand;
    both operands are the same tensor, so one suffices:
    :math:`\partial L/\partial X = s\,X(G + G^\top)` with :math:`G = \partial L/\partial P`.
    The backward is written in differentiable operations on the saved input, so double
    backward (gradient penalties, Hessian-vector products, meta-learning) differentiates it
    exactly; ``generate_vmap_rule`` lets :func:`torch.func.vmap` batch it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, scale: float) -> torch.Tensor:
        return (x.mT @ x).mul_(scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, float], output: torch.Tensor) -> None:
        x, scale = inputs
        ctx.save_for_backward(x)
        ctx.scale = scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        with no_autocast(x.device):
            return x @ ((grad + grad.mT) * ctx.scale), None
