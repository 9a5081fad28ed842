"""Autograd functions behind :mod:`deepalign.functional` (no validation here: callers validate).

- :class:`Covariance`: centred covariance, optionally over the global batch of a process group,
  with a backward of one ``N×d×d`` product.
- :class:`CovarianceAlignment`: the alignment losses of one or several pairs, fused, each
  input's statistics once.
- :class:`GramAlignment`: the alignment loss from ``N×N`` Gram matrices, for ``N_a + N_b < d``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off: the statistics must not be computed in fp16/bf16.

    Entering even a disabled autocast context costs tens of microseconds per call, so it is
    entered only when autocast is on for ``device``.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def centred(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` minus its column means (the two-pass form of Eq. 12)."""
    x = x.to(dtype)
    return x - x.mean(dim=0, keepdim=True)


def _global_centred(
    x: torch.Tensor, dtype: torch.dtype, group: dist.ProcessGroup
) -> tuple[torch.Tensor, int]:
    """Centre the local rows on the mean of the global batch; return them and the global count."""
    x = x.to(dtype)
    sums = torch.cat([x.sum(dim=0), x.new_tensor([x.shape[0]])])
    dist.all_reduce(sums, group=group)
    count = int(sums[-1].item())
    return x - sums[:-1] / max(count, 1), count


class Covariance(torch.autograd.Function):
    """Centred covariance with a one-matmul backward, local or over a process group.

    Autograd through ``X̃ᵀX̃`` would run two ``N×d×d`` products in backward (one per operand);
    both operands are the same tensor, so one suffices: ``∂/∂M = X̃ (G + Gᵀ) / (N - c)``, already
    centred because X̃'s columns sum to 0.

    Over a process group, the rows are centred on the global mean (one all-reduce of ``d + 1``
    numbers) and the products ``X̃_rᵀX̃_r`` summed (one all-reduce of ``d²``): exactly the
    two-pass covariance of the concatenated batch. Backward all-reduces ``G`` (``d²``), so each
    rank's rows get the gradient of the sum of all ranks' losses (the convention of
    :func:`torch.distributed.nn.functional.all_reduce`); the mean over ranks is divided out by
    DistributedDataParallel's gradient averaging.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        correction: int,
        dtype: torch.dtype,
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        with no_autocast(x.device):
            if group is None:
                xc, count = centred(x, dtype), x.shape[0]
            else:
                xc, count = _global_centred(x, dtype, group)
            if count <= correction:
                raise ValueError(
                    f"x: expected at least {correction + 1} rows in the global batch, got {count}"
                )
            c = xc.mT @ xc
            if group is not None:
                dist.all_reduce(c, group=group)
            c = c / (count - correction)
        ctx.save_for_backward(xc)
        ctx.denominator = count - correction
        ctx.input_dtype = x.dtype
        ctx.group = group
        return c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_c: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (xc,) = ctx.saved_tensors
        with no_autocast(xc.device):
            grad_sym = grad_c + grad_c.mT
            if ctx.group is not None:
                dist.all_reduce(grad_sym, group=ctx.group)
            grad_x = xc @ (grad_sym / ctx.denominator)
        return grad_x.to(ctx.input_dtype), None, None, None


def scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * (a @ b)`` in one BLAS call (``beta=0``: the uninitialised input is ignored)."""
    out = a.new_empty(a.shape[0], b.shape[1])
    return torch.addmm(out, a, b, beta=0, alpha=alpha, out=out)


class CovarianceAlignment(torch.autograd.Function):
    r"""The alignment losses of several pairs of local batches in one autograd node.

    ``apply(pairs, dtype, *xs)`` returns one :math:`\theta_p` per pair ``(i, j)`` of input
    indices. Forward: :math:`C_i = k_i\tilde M_i^\top\tilde M_i` with
    :math:`k_i = 1/(N_i - 1)` applied inside the product (one product per input, however many
    pairs use it), :math:`D_p = C_i - C_j` and :math:`\theta_p = \langle D_p, D_p\rangle/4d^2`.
    Backward, with :math:`g_p` the incoming gradients: :math:`k_i\tilde M_i W_i/d^2` with
    :math:`W_i = \sum_p \pm g_p D_p` (``+`` where input ``i`` comes first in pair ``p``): one
    product per input and no symmetrisation (the :math:`D_p` are symmetric).
    """

    @staticmethod
    def forward(
        ctx, pairs: tuple[tuple[int, int], ...], dtype: torch.dtype, *xs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        d = xs[0].shape[1]
        with no_autocast(xs[0].device):
            xcs = [centred(x, dtype) for x in xs]
            covs = [scaled_mm(xc.mT, xc, 1.0 / (xc.shape[0] - 1)) for xc in xcs]
            diffs = [covs[i] - covs[j] for i, j in pairs]  # θ(M, M) is exactly 0
            thetas = tuple(torch.dot(D.view(-1), D.view(-1)).div_(4 * d * d) for D in diffs)
        ctx.save_for_backward(*xcs, *diffs)
        ctx.pairs, ctx.dtypes = pairs, [x.dtype for x in xs]
        ctx.set_materialize_grads(False)
        return thetas

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        xcs, diffs = saved[: len(ctx.dtypes)], saved[len(ctx.dtypes) :]
        terms: list[list[tuple[float, torch.Tensor]]] = [[] for _ in xcs]
        with no_autocast(xcs[0].device):
            for (i, j), diff, grad in zip(ctx.pairs, diffs, grads, strict=True):
                if grad is not None:
                    weighted = diff * grad
                    terms[i].append((1.0, weighted))
                    terms[j].append((-1.0, weighted))
            wanted = ctx.needs_input_grad[2:]  # no product for an input that needs no gradient
            grads_x = [
                _input_grad(xc, own, dtype) if own and want else None
                for xc, own, dtype, want in zip(xcs, terms, ctx.dtypes, wanted, strict=True)
            ]
        return (None, None, *grads_x)


def _input_grad(
    xc: torch.Tensor, terms: list[tuple[float, torch.Tensor]], dtype: torch.dtype
) -> torch.Tensor:
    """:math:`k\tilde M W/d^2` with :math:`W = \\sum \text{sign}\\cdot\text{term}`; the first
    sign goes into the product's factor, so one term costs no extra ``d×d`` operation."""
    (sign, total), *rest = terms
    for other_sign, term in rest:
        total = total.add(term, alpha=other_sign * sign)
    d = xc.shape[1]
    return scaled_mm(xc, total, sign / ((xc.shape[0] - 1) * d * d)).to(dtype)


class GramAlignment(torch.autograd.Function):
    r"""The alignment loss without forming ``d×d`` matrices, for ``N_a + N_b < d``.

    With :math:`k_a = 1/(N_a-1)`, :math:`G_a = \tilde M_a\tilde M_a^\top`,
    :math:`G_b = \tilde M_b\tilde M_b^\top` and :math:`K = \tilde M_a\tilde M_b^\top`:
    :math:`\lVert C_a - C_b\rVert_F^2 = k_a^2\lVert G_a\rVert^2 + k_b^2\lVert G_b\rVert^2
    - 2k_ak_b\lVert K\rVert^2` and :math:`\tilde M_a(C_a - C_b) = k_aG_a\tilde M_a -
    k_bK\tilde M_b`: :math:`O((N_a+N_b)^2 d)` time and :math:`O((N_a+N_b)^2)` extra memory.
    """

    @staticmethod
    def forward(ctx, x_a: torch.Tensor, x_b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        d = x_a.shape[1]
        k_a, k_b = 1.0 / (x_a.shape[0] - 1), 1.0 / (x_b.shape[0] - 1)
        with no_autocast(x_a.device):
            xc_a, xc_b = centred(x_a, dtype), centred(x_b, dtype)
            gram_a, gram_b, cross = xc_a @ xc_a.mT, xc_b @ xc_b.mT, xc_a @ xc_b.mT
            squared = (
                k_a * k_a * gram_a.square().sum()
                + k_b * k_b * gram_b.square().sum()
                - 2 * k_a * k_b * cross.square().sum()
            )
        ctx.save_for_backward(xc_a, xc_b, gram_a, gram_b, cross)
        ctx.constants = (k_a, k_b, d, x_a.dtype, x_b.dtype)
        return squared.clamp_min(0) / (4 * d * d)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        xc_a, xc_b, gram_a, gram_b, cross = ctx.saved_tensors
        k_a, k_b, d, dtype_a, dtype_b = ctx.constants
        with no_autocast(xc_a.device):
            diff_a = k_a * (gram_a @ xc_a) - k_b * (cross @ xc_b)  # M̃_a (C_a - C_b)
            diff_b = k_a * (cross.mT @ xc_a) - k_b * (gram_b @ xc_b)  # M̃_b (C_a - C_b)
            scale = grad / (d * d)
            grad_a = diff_a * (scale * k_a)
            grad_b = diff_b * (-scale * k_b)
        return grad_a.to(dtype_a), grad_b.to(dtype_b), None
