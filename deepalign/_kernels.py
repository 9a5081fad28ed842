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
- :class:`PairDistance`: the plug-in of one pair, the common case, without the bookkeeping of
  several pairs.
- :class:`PairMoments`: one pair's unbiased estimate (or plug-in) and, on request, the
  diagnostics' statistics, in one node on either path: every moment from the same centred rows.

Every backward here is written in differentiable operations, so that every higher derivative
is exact (``gradgradcheck``), and every Function has a generated vmap rule for
:mod:`torch.func`. The statistics over a process group (the collectives) are plain autograd in
:mod:`deepalign.functional`.
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


# ---------------------------------------------------------------- one pair of local inputs


class PairDistance(torch.autograd.Function):
    r"""``apply(x_a, x_b)``: the plug-in loss :math:`\theta = \lVert E\rVert_F^2` of one pair
    of local inputs, :math:`E = (C_a - C_b)/2d`, and (not differentiable) :math:`E` and the
    centred inputs: the common case of :class:`PairDistances` without its bookkeeping (no
    stack, no unbind, no pair indexes). :math:`E` is one ``addmm`` whose ``alpha`` and
    ``beta`` carry the scales; backward is one product per input,
    :math:`\partial\theta/\partial X_m = \pm\frac{2}{d(n_m - 1)}\tilde X_mE`, and recomputes the
    parts from the saved inputs in differentiable operations under ``create_graph``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows_a, rows_b, e = _pair_difference(x_a, x_b)
        flat = e.reshape(-1)
        return torch.dot(flat, flat), e, rows_a, rows_b

    @staticmethod
    def value(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """The loss alone, without an autograd node."""
        flat = _pair_difference(x_a, x_b)[2].reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*inputs, *output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        if grad is None:
            return None, None
        x_a, x_b, e, rows_a, rows_b = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: see how the parts depend on the inputs
            rows_a, rows_b, e = _pair_difference(x_a, x_b)
        d = x_a.shape[-1]
        want_a, want_b = ctx.needs_input_grad
        with no_autocast(e.device):
            grad_a = rows_a @ (e * (grad * (2.0 / (d * (x_a.shape[-2] - 1))))) if want_a else None
            grad_b = rows_b @ (e * (grad * (-2.0 / (d * (x_b.shape[-2] - 1))))) if want_b else None
        return grad_a, grad_b


def _pair_difference(
    x_a: torch.Tensor, x_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The centred inputs and :math:`E = (C_a - C_b)/2d`.

    Equal row counts share one scale, applied after an exact difference of the two products
    (identical inputs give exactly 0); otherwise one product and one ``addmm`` whose
    ``alpha`` and ``beta`` carry the two scales."""
    rows_a, rows_b = _subtract_mean(x_a), _subtract_mean(x_b)
    two_d = 2 * x_a.shape[-1]
    n_a, n_b = x_a.shape[-2], x_b.shape[-2]
    if n_a == n_b:
        e = torch.sub(rows_a.mT @ rows_a, rows_b.mT @ rows_b).mul_(1.0 / ((n_a - 1) * two_d))
    else:
        e = torch.addmm(
            rows_b.mT @ rows_b,
            rows_a.mT,
            rows_a,
            beta=-1.0 / ((n_b - 1) * two_d),
            alpha=1.0 / ((n_a - 1) * two_d),
        )
    return rows_a, rows_b, e


STATS = ("plugin", "unbiased", "scale_a", "scale_b")
"""The entries of :class:`PairMoments`'s statistics vector, in order (each ``/4d²`` scaled
estimate, and :math:`\\operatorname{tr} C/d` of each input)."""


def _floor_weights(n: int) -> tuple[float, float, float]:
    r"""Weights of :math:`(q, \operatorname{tr}^2, \lVert C\rVert^2)` in the floor
    :math:`(nq - (n-1)\operatorname{tr}^2 - (n+1)(n-2)\lVert C\rVert^2)/(n(n-2)(n-3))`."""
    den = n * (n - 2) * (n - 3)
    return n / den, (n - 1) / den, (n + 1) * (n - 2) / den


def _moments(
    x_a: torch.Tensor, x_b: torch.Tensor, gram: bool, paired: bool, full: bool
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    r"""The parts and moments of one pair from its centred rows, computed once.

    Returns ``parts``: the centred rows :math:`X_a, X_b`, their squared row norms and, when
    paired, their row dot products; then the unscaled products :math:`X_a^\top X_a,
    X_b^\top X_b` and (paired) :math:`X_a^\top X_b` on the ``d×d`` path, or the Gram matrices
    :math:`G_a, G_b, G_{ab}` on the ``N×N`` path. And ``moments``, by name:
    ``diff_sq`` :math:`\lVert C_a - C_b\rVert^2` and, when ``full``, ``tr_a``, ``tr_b``
    (:math:`\operatorname{tr} C`), ``q_a``, ``q_b`` (:math:`\sum_i\lVert\tilde m_i\rVert^4`),
    and for independent batches ``sq_a``, ``sq_b`` (:math:`\lVert C\rVert^2`), for paired
    rows ``inner`` :math:`\langle C_a, C_b\rangle`, ``cross_sq``
    :math:`\operatorname{tr}C_{ab}^2`, ``cross_tr`` :math:`\operatorname{tr}C_{ab}` and
    ``q_ab`` :math:`\sum_i(\tilde a_i^\top\tilde b_i)^2`. Every scalar is one ``dot`` of
    flattened matrices; the scales :math:`k = 1/(n - 1)` multiply scalars, never matrices.
    """
    rows_a, rows_b = _subtract_mean(x_a), _subtract_mean(x_b)
    n_a, n_b = x_a.shape[-2], x_b.shape[-2]
    k_a, k_b = 1.0 / (n_a - 1), 1.0 / (n_b - 1)
    norms_a, norms_b = (rows_a * rows_a).sum(-1), (rows_b * rows_b).sum(-1)
    dots = (rows_a * rows_b).sum(-1) if paired else None
    if gram:
        m_a, m_b, m_ab = rows_a @ rows_a.mT, rows_b @ rows_b.mT, rows_a @ rows_b.mT
        sq_a, sq_b = _dot(m_a, m_a) * (k_a * k_a), _dot(m_b, m_b) * (k_b * k_b)
        inner = _dot(m_ab, m_ab) * (k_a * k_b)
        diff_sq = sq_a + sq_b - 2 * inner
    else:
        m_a, m_b = rows_a.mT @ rows_a, rows_b.mT @ rows_b
        m_ab = rows_a.mT @ rows_b if paired else None
        if n_a == n_b:  # an exact difference: identical inputs give exactly 0
            diff = torch.sub(m_a, m_b)
            diff_sq = _dot(diff, diff) * (k_a * k_a)
        else:
            diff = torch.add(m_a, m_b, alpha=-k_b / k_a)
            diff_sq = _dot(diff, diff) * (k_a * k_a)
    parts = [rows_a, rows_b, norms_a, norms_b] + ([dots] if paired else [])
    parts += [m_a, m_b] + ([m_ab] if m_ab is not None else [])
    moments = {"diff_sq": diff_sq}
    if not full:
        return parts, moments
    moments |= {"tr_a": norms_a.sum() * k_a, "tr_b": norms_b.sum() * k_b}
    moments |= {"q_a": _dot(norms_a, norms_a), "q_b": _dot(norms_b, norms_b)}
    if paired:
        k2 = k_a * k_a
        if gram:
            moments["inner"] = inner
        else:
            moments["inner"] = _dot(m_a, m_b) * k2
        moments["cross_sq"] = _dot(m_ab, m_ab.mT) * k2  # tr(C_ab²); Gram: k² tr(G_ab²)
        moments["cross_tr"] = dots.sum() * k_a
        moments["q_ab"] = _dot(dots, dots)
    elif gram:
        moments |= {"sq_a": sq_a, "sq_b": sq_b}
    else:
        moments["sq_a"] = _dot(m_a, m_a) * (k_a * k_a)
        moments["sq_b"] = _dot(m_b, m_b) * (k_b * k_b)
    return parts, moments


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum of the elementwise product of two tensors of one shape: one ``dot``."""
    return torch.dot(x.reshape(-1), y.reshape(-1))


def _weights(n_a: int, n_b: int, which: str, paired: bool) -> dict[str, float]:
    """The estimate ``which`` as a linear combination of the moments of :func:`_moments`
    (``tr_a``, ``tr_b`` and ``cross_tr`` enter squared)."""
    if which == "plugin":
        return {"diff_sq": 1.0}
    if not paired:
        qa, ta, sa = _floor_weights(n_a)
        qb, tb, sb = _floor_weights(n_b)
        return {"diff_sq": 1.0, "sq_a": sa, "sq_b": sb, "tr_a": ta, "tr_b": tb,
                "q_a": -qa, "q_b": -qb}  # fmt: skip
    n = n_a
    den = n * (n - 2) * (n - 3)
    c1, c2, c3 = (n - 1) ** 2 * (n - 2) / den, (n - 1) / den, n / den
    return {"diff_sq": c1, "inner": 2 * c2, "cross_sq": -2 * c2, "tr_a": c2, "tr_b": c2,
            "cross_tr": -2 * c2, "q_a": -c3, "q_b": -c3, "q_ab": 2 * c3}  # fmt: skip


_SQUARED = ("tr_a", "tr_b", "cross_tr")


def _unbiased_estimate(
    moments: dict[str, torch.Tensor], n_a: int, n_b: int, paired: bool
) -> torch.Tensor:
    """The unbiased estimate (unscaled) from the full moments."""
    total = None
    for name, w in _weights(n_a, n_b, "unbiased", paired).items():
        m = moments[name]
        term = (m * m if name in _SQUARED else m) * w
        total = term if total is None else total + term
    return total


class PairMoments(torch.autograd.Function):
    r"""``apply(x_a, x_b, which, gram, paired, full)``: one pair of local inputs in one node:
    the estimate ``which`` (``"plugin"`` or ``"unbiased"``, ``/4d²`` scaled; the Gram plug-in
    clamped at 0), and (not differentiable) the statistics vector :data:`STATS` (when
    ``full``, else empty) and the parts that backward reuses.

    Centring, row norms, fourth moments and the ``d×d`` (``gram=False``) or ``N×N``
    (``gram=True``) products all come from the same centred rows, computed once. The
    estimate is a linear combination :math:`\sum_j w_j\mu_j` of the moments :math:`\mu_j` of
    :func:`_moments` (traces squared), so its gradient is the same combination of theirs: per
    input one product with a combined ``d×d`` (or ``N×N``) factor, one more for the partner's
    rows when paired (or on the Gram path), and row-weighted rows for the fourth moments,
    centred (centring's Jacobian) because they are not already. With ``create_graph`` the
    parts are recomputed in differentiable operations, so every higher derivative is exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x_a: torch.Tensor, x_b: torch.Tensor, which: str, gram: bool, paired: bool, full: bool
    ) -> tuple[torch.Tensor, ...]:
        value, stats, parts = _pair_moments(x_a, x_b, which, gram, paired, full)
        return value, stats, *parts

    @staticmethod
    def value(
        x_a: torch.Tensor, x_b: torch.Tensor, which: str, gram: bool, paired: bool, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimate and the statistics, without an autograd node."""
        value, stats, _ = _pair_moments(x_a, x_b, which, gram, paired, full)
        return value, stats

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x_a, x_b, which, gram, paired, _ = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(x_a, x_b, *output[2:])
        ctx.which, ctx.gram, ctx.paired = which, gram, paired
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        none = (None, None, None, None)
        if grad is None:
            return None, None, *none
        x_a, x_b, *parts = ctx.saved_tensors
        which, gram, paired = ctx.which, ctx.gram, ctx.paired
        if torch.is_grad_enabled():  # double backward: see how the parts depend on the inputs
            parts, _ = _moments(x_a, x_b, gram, paired, False)
        with no_autocast(x_a.device):
            grads = _pair_moment_grads(x_a, x_b, parts, grad, which, gram, paired)
        want_a, want_b = ctx.needs_input_grad[:2]
        return (grads[0] if want_a else None), (grads[1] if want_b else None), *none


def _pair_moments(
    x_a: torch.Tensor, x_b: torch.Tensor, which: str, gram: bool, paired: bool, full: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Forward of :class:`PairMoments`: ``(value, stats, parts)``."""
    full_moments = full or which == "unbiased"
    parts, moments = _moments(x_a, x_b, gram, paired, full_moments)
    d = x_a.shape[-1]
    scale = 1.0 / (4 * d * d)
    plugin = moments["diff_sq"] * scale
    if not full_moments:  # the plug-in alone; on the Gram path clamped at 0 as a loss
        return (plugin.clamp_min(0) if gram else plugin), plugin.new_empty(0), parts
    unbiased = _unbiased_estimate(moments, x_a.shape[-2], x_b.shape[-2], paired) * scale
    value = (plugin.clamp_min(0) if gram else plugin) if which == "plugin" else unbiased
    if not full:
        return value, plugin.new_empty(0), parts
    # The statistics keep the raw plug-in (unclamped), as the diagnostics always did.
    stats = torch.stack([plugin, unbiased, moments["tr_a"] / d, moments["tr_b"] / d])
    return value, stats, parts


def _pair_moment_grads(
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    parts: Sequence[torch.Tensor],
    grad: torch.Tensor,
    which: str,
    gram: bool,
    paired: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The gradients of :class:`PairMoments`'s estimate with respect to both inputs.

    With :math:`w` the estimate's weights (:func:`_weights`), :math:`k_m = 1/(n_m - 1)` and
    :math:`P_m = X_m^\top X_m`, :math:`P_{ab} = X_a^\top X_b` the unscaled products, the
    gradient with respect to the centred rows :math:`X_a` is
    :math:`X_a(\alpha_aP_a + \beta P_b) + \gamma X_bP_{ab} +
    \operatorname{diag}(u_a)X_a + \operatorname{diag}(v)X_b` with
    :math:`\alpha_a = 4k_a^2(w_D + w_{sa})`, :math:`\beta = k_ak_b(2w_{in} - 4w_D)`,
    :math:`\gamma = 2k_a^2w_{cs}`, :math:`u_a = 4w_{qa}r_a + 4k_aw_{ta}\operatorname{tr}C_a`
    (:math:`r` the squared row norms), :math:`v = 2w_{qab}s + 2k_aw_{ct}\operatorname{tr}
    C_{ab}` (:math:`s` the row dot products); symmetrically for :math:`X_b`. On the Gram path
    :math:`X_aP_a = G_aX_a`, :math:`X_aP_b = G_{ab}X_b`, :math:`X_bP_{ab} =
    G_{ab}^\top X_b`. Only the row-weighted terms have non-zero column sums, so only they are
    centred (centring's Jacobian). Each input costs one ``addmm`` per factor, the ``alpha``
    carrying the scale.
    """
    n_a, n_b = x_a.shape[-2], x_b.shape[-2]
    w = _weights(n_a, n_b, which, paired)
    d = x_a.shape[-1]
    g = grad * (1.0 / (4 * d * d))
    rows_a, rows_b, norms_a, norms_b = parts[:4]
    dots = parts[4] if paired else None
    m_a, m_b, *rest = parts[5:] if paired else parts[4:]
    m_ab = rest[0] if rest else None
    k_a, k_b = 1.0 / (n_a - 1), 1.0 / (n_b - 1)
    w_d, w_in, w_cs = w["diff_sq"], w.get("inner", 0.0), w.get("cross_sq", 0.0)
    if gram and which == "plugin":  # the clamp: no gradient where the value was clamped
        raw = _dot(m_a, m_a) * (k_a * k_a) + _dot(m_b, m_b) * (k_b * k_b)
        g = g * ((raw - 2 * (k_a * k_b) * _dot(m_ab, m_ab)) >= 0)
    alpha_a = 4 * k_a * k_a * (w_d + w.get("sq_a", 0.0))
    alpha_b = 4 * k_b * k_b * (w_d + w.get("sq_b", 0.0))
    beta = k_a * k_b * (2 * w_in - 4 * w_d)
    gamma = 2 * k_a * k_a * w_cs
    # Everything below is divided by alpha_m, which multiplies the result with the incoming
    # gradient at the end (one scalar product instead of a pass over a matrix).
    base_a = base_b = None
    if "q_a" in w:  # the row-weighted terms (fourth moments, squared traces), centred
        tr_a, tr_b = norms_a.sum() * k_a, norms_b.sum() * k_b
        row_a = norms_a * (4 * w["q_a"] / alpha_a) + tr_a * (4 * k_a * w["tr_a"] / alpha_a)
        row_b = norms_b * (4 * w["q_b"] / alpha_b) + tr_b * (4 * k_b * w["tr_b"] / alpha_b)
        base_a, base_b = rows_a * row_a[..., None], rows_b * row_b[..., None]
        if paired:
            row_ab = dots * (2 * w["q_ab"]) + dots.sum() * (2 * k_a * k_a * w["cross_tr"])
            base_a = torch.addcmul(base_a, rows_b, row_ab[..., None], value=1 / alpha_a)
            base_b = torch.addcmul(base_b, rows_a, row_ab[..., None], value=1 / alpha_b)
        base_a, base_b = _subtract_mean(base_a), _subtract_mean(base_b)
    if gram:
        if paired and gamma:
            other_a = torch.add(m_ab, m_ab.mT, alpha=gamma / beta)
            other_b = torch.add(m_ab.mT, m_ab, alpha=gamma / beta)
        else:
            other_a, other_b = m_ab, m_ab.mT
        own_a = m_a @ rows_a if base_a is None else torch.addmm(base_a, m_a, rows_a)
        own_b = m_b @ rows_b if base_b is None else torch.addmm(base_b, m_b, rows_b)
        grad_a = torch.addmm(own_a, other_a, rows_b, alpha=beta / alpha_a)
        grad_b = torch.addmm(own_b, other_b, rows_a, alpha=beta / alpha_b)
    else:
        f_a = torch.add(m_a, m_b, alpha=beta / alpha_a)
        f_b = torch.add(m_b, m_a, alpha=beta / alpha_b)
        grad_a = rows_a @ f_a if base_a is None else torch.addmm(base_a, rows_a, f_a)
        grad_b = rows_b @ f_b if base_b is None else torch.addmm(base_b, rows_b, f_b)
        if paired and gamma:
            grad_a = torch.addmm(grad_a, rows_b, m_ab, alpha=gamma / alpha_a)
            grad_b = torch.addmm(grad_b, rows_a, m_ab.mT, alpha=gamma / alpha_b)
    return grad_a * (g * alpha_a), grad_b * (g * alpha_b)


for _function in (PairDistance, PairMoments):
    _function.forward.__signature__ = inspect.signature(_function.forward)
