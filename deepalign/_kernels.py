"""Building blocks behind :mod:`deepalign.functional` (no validation here: callers validate).

- :func:`no_autocast` and :func:`centred`: the statistics run in at least float32, centred in
  two passes.
- :class:`Covariance`: :math:`s\\,\\tilde X^\\top\\tilde X` (centring optional) in one node, with a
  backward of one ``N×d×d`` product instead of autograd's two.
- :class:`PairDistances` and :class:`GramPairDistances`: the plug-in loss of several pairs of
  local inputs in one node each (centring, covariances or Gram matrices, differences), with a
  backward of one product per input (the ``d×d`` form; the ``N×N`` form adds one per pair and
  side): the plug-in's path on one process, where a call's fixed cost in Python (one autograd
  node per operation) dominates small batches. :mod:`deepalign.functional` computes the values with
  the same forward code and no node when no input needs a gradient.

Every backward here is written in differentiable operations, so that every higher derivative
is exact (``gradgradcheck``), and every Function has a generated vmap rule for
:mod:`torch.func`. Everything else (the unbiased estimator, the collectives) is plain autograd
in :mod:`deepalign.functional`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
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


def _pair_parts(
    pairs: tuple[tuple[int, int], ...], xs: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    r"""The centred inputs and the stacked :math:`E_p = D_p/2d` (so that the loss is the squared
    norm of each, :math:`\theta_p = \lVert D_p\rVert_F^2/4d^2`)."""
    rows = [_subtract_mean(x) for x in xs]
    two_d = 2 * xs[0].shape[-1]
    cov = [(r.mT @ r).mul_(1.0 / ((r.shape[-2] - 1) * two_d)) for r in rows]
    return rows, torch.stack([cov[a] - cov[b] for a, b in pairs], dim=-3)


class _PairFunction(torch.autograd.Function):
    """What the Functions of pairs share: ``apply(pairs, *xs)`` returns the losses first and
    then the non-differentiable parts that backward reuses, saved after the inputs."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pairs, *xs = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*xs, *output[1:])
        ctx.pairs, ctx.inputs = pairs, len(xs)
        ctx.set_materialize_grads(False)


class PairDistances(_PairFunction):
    r"""``apply(pairs, *xs)``: the plug-in loss :math:`\theta_p = \lVert C_a -
    C_b\rVert_F^2/4d^2` of each pair ``p = (a, b)`` of input indexes, and (not differentiable)
    the stacked :math:`E_p = D_p/2d`, :math:`D_p = C_a - C_b`, and the centred inputs.

    Input ``m`` has :math:`n_m` rows and the covariance
    :math:`C_m = \tilde X_m^\top\tilde X_m/(n_m - 1)`. With :math:`g` the incoming gradient,
    it receives :math:`\frac{2}{d(n_m - 1)}\tilde X_m H_m` with :math:`H_m = \sum_{p:\,a_p = m}
    g_pE_p - \sum_{p:\,b_p = m} g_pE_p` (symmetric, so one product per input). A first-order
    backward reuses the forward's centred inputs and differences; with ``create_graph`` it
    recomputes them from the saved inputs in differentiable operations.
    """

    @staticmethod
    def forward(pairs: tuple[tuple[int, int], ...], *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows, scaled = _pair_parts(pairs, xs)
        return scaled.square().sum((-2, -1)), scaled, *rows

    @staticmethod
    def value(pairs: tuple[tuple[int, int], ...], xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The losses alone, for callers that need no gradient (no autograd node; the
        variadic :meth:`forward` is also what :func:`torch.compile` cannot trace when no input
        requires a gradient)."""
        return _pair_parts(pairs, xs)[1].square().sum((-2, -1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        k = ctx.inputs
        if grad is None:
            return (None,) * (k + 1)
        saved = ctx.saved_tensors
        xs, scaled, rows = saved[:k], saved[k], saved[k + 1 :]
        if torch.is_grad_enabled():  # double backward: see how the parts depend on the inputs
            rows, scaled = _pair_parts(ctx.pairs, xs)
        weighted = scaled * grad[..., None, None]
        terms: list[list[tuple[int, float]]] = [[] for _ in range(k)]
        for p, (a, b) in enumerate(ctx.pairs):
            terms[a].append((p, 1.0))
            terms[b].append((p, -1.0))
        grads: list[torch.Tensor | None] = [None]
        with no_autocast(weighted.device):
            for r, own, wanted in zip(rows, terms, ctx.needs_input_grad[1:], strict=True):
                if not wanted:
                    grads.append(None)
                    continue
                (p, sign), *rest = own  # the first sign goes into the product's factor
                h = weighted.select(-3, p)
                for q, other in rest:
                    h = h.add(weighted.select(-3, q), alpha=other * sign)
                scale = sign * 2.0 / (r.shape[-1] * (r.shape[-2] - 1))
                grads.append(r @ (h * scale))  # scale the d×d factor, not the N×d product
        return tuple(grads)


def _gram_parts(
    pairs: tuple[tuple[int, int], ...], xs: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    r"""The centred inputs, their Gram matrices :math:`\tilde X_m\tilde X_m^\top`, the pairs'
    cross products :math:`\tilde X_a\tilde X_b^\top` and the unclamped losses
    :math:`(k_a^2\lVert G_{aa}\rVert^2 + k_b^2\lVert G_{bb}\rVert^2 -
    2k_ak_b\lVert G_{ab}\rVert^2)/4d^2`, :math:`k_m = 1/(n_m - 1)`."""
    rows = [_subtract_mean(x) for x in xs]
    scale = 1.0 / (4 * xs[0].shape[-1] ** 2)
    k = [1.0 / (r.shape[-2] - 1) for r in rows]
    grams = [r @ r.mT for r in rows]
    sq = [g.square().sum((-2, -1)) * (km * km) for g, km in zip(grams, k, strict=True)]
    cross = [rows[a] @ rows[b].mT for a, b in pairs]
    raw = torch.stack(
        [
            sq[a] + sq[b] - c.square().sum((-2, -1)) * (2 * k[a] * k[b])
            for (a, b), c in zip(pairs, cross, strict=True)
        ],
        dim=-1,
    )
    return rows, grams, cross, raw * scale


class GramPairDistances(_PairFunction):
    r"""``apply(pairs, *xs)``: the losses of :class:`PairDistances` from ``N×N`` Gram matrices
    (:math:`O(N^2d)`, no ``d×d`` matrix), clamped at 0 (rounding must not make the plug-in
    negative), and (not differentiable) the unclamped losses, centred inputs, Gram matrices and
    cross products.

    With :math:`g` the incoming gradient, :math:`s = 1/4d^2` and :math:`G_{mn} = \tilde
    X_m\tilde X_n^\top`, input ``m`` receives :math:`4sk_m\bigl(k_m(\sum_p g_p)G_{mm}\tilde X_m
    - \sum_p g_pk_nG_{mn}\tilde X_n\bigr)`, the sums over the pairs ``p`` that hold ``m``
    (partner ``n``) and not clamped (the :math:`\tilde X_m D` of the ``d×d`` form, rewritten);
    with ``create_graph`` the parts are recomputed in differentiable operations.
    """

    @staticmethod
    def forward(pairs: tuple[tuple[int, int], ...], *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows, grams, cross, raw = _gram_parts(pairs, xs)
        return raw.clamp_min(0), raw, *rows, *grams, *cross

    @staticmethod
    def value(pairs: tuple[tuple[int, int], ...], xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The losses alone (see :meth:`PairDistances.value`)."""
        return _gram_parts(pairs, xs)[3].clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        k_in, pairs = ctx.inputs, ctx.pairs
        if grad is None:
            return (None,) * (k_in + 1)
        saved = ctx.saved_tensors
        xs, raw = saved[:k_in], saved[k_in]
        rows, grams = saved[k_in + 1 : 2 * k_in + 1], saved[2 * k_in + 1 : 3 * k_in + 1]
        cross = saved[3 * k_in + 1 :]
        if torch.is_grad_enabled():  # double backward: see how the parts depend on the inputs
            rows, grams, cross, _ = _gram_parts(pairs, xs)
        # Per pair, the incoming gradient where the clamp did not act, shaped (P, 1, 1).
        g = (grad * (raw >= 0))[..., None, None]
        k = [1.0 / (r.shape[-2] - 1) for r in rows]
        scale = 1.0 / (xs[0].shape[-1] ** 2)  # 4s
        grads: list[torch.Tensor | None] = [None]
        with no_autocast(g.device):
            for m, wanted in enumerate(ctx.needs_input_grad[1:]):
                if not wanted:
                    grads.append(None)
                    continue
                # X_m (C_m - C_n) 4s k_m g_p = (k_m G_mm X_m - k_n G_mn X_n) 4s k_m g_p, summed
                # over the pairs p that hold m (partner n); the N×N factors carry the scales.
                own_weight, out = None, None
                for p, (a, b) in enumerate(pairs):
                    if m not in (a, b):
                        continue
                    n, c = (b, cross[p]) if m == a else (a, cross[p].mT)
                    weight = g.select(-3, p)
                    own_weight = weight if own_weight is None else own_weight + weight
                    term = (c * (weight * (scale * k[m] * k[n]))) @ rows[n]
                    out = term if out is None else out + term
                own = (grams[m] * (own_weight * (scale * k[m] * k[m]))) @ rows[m]
                out = own - out
                grads.append(out)
        return tuple(grads)


# Function.apply binds its arguments to forward's signature on every call; inspect returns a
# function's __signature__ when it has one, which saves recomputing it each time.
for _function in (Covariance, PairDistances, GramPairDistances):
    _function.forward.__signature__ = inspect.signature(_function.forward)
