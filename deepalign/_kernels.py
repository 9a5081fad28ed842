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
) -> tuple[list[torch.Tensor], torch.Tensor]:
    r"""The parts and moments of one pair from its centred rows, computed once.

    Returns ``parts`` (centred rows, row norms² and, when paired, the row dot products; then
    the ``d×d`` matrices :math:`C_a, C_b, C_{ab}` or the ``N×N`` ones :math:`G_a, G_b, G_{ab}`;
    :math:`C_{ab}`/:math:`G_{ab}` only when needed) and ``moments``, a vector of
    :math:`\lVert C_a - C_b\rVert^2` and, when ``full``, :math:`\lVert C_a\rVert^2,
    \lVert C_b\rVert^2, \operatorname{tr} C_a, \operatorname{tr} C_b, q_a, q_b` and (paired)
    :math:`\langle C_a, C_b\rangle, \operatorname{tr} C_{ab}^2, \operatorname{tr} C_{ab},
    q_{ab}`.
    """
    rows_a, rows_b = _subtract_mean(x_a), _subtract_mean(x_b)
    k_a, k_b = 1.0 / (x_a.shape[-2] - 1), 1.0 / (x_b.shape[-2] - 1)
    norms_a, norms_b = rows_a.square().sum(-1), rows_b.square().sum(-1)
    dots = (rows_a * rows_b).sum(-1) if paired else None
    cross_needed = gram or paired
    if gram:
        m_a, m_b = rows_a @ rows_a.mT, rows_b @ rows_b.mT
        m_ab = rows_a @ rows_b.mT
        sq_a = m_a.square().sum() * (k_a * k_a)
        sq_b = m_b.square().sum() * (k_b * k_b)
        inner = m_ab.square().sum() * (k_a * k_b)
        diff_sq = sq_a + sq_b - 2 * inner
    else:
        m_a, m_b = (rows_a.mT @ rows_a) * k_a, (rows_b.mT @ rows_b) * k_b
        m_ab = (rows_a.mT @ rows_b) * k_a if cross_needed else None
        diff = (m_a - m_b).reshape(-1)
        diff_sq = torch.dot(diff, diff)
        if full:
            sq_a, sq_b = m_a.square().sum(), m_b.square().sum()
            inner = (m_a * m_b).sum() if paired else None
    parts = [rows_a, rows_b, norms_a, norms_b] + ([dots] if paired else [])
    parts += [m_a, m_b] + ([m_ab] if cross_needed else [])
    if not full:
        return parts, diff_sq[None]
    values = [diff_sq, sq_a, sq_b, norms_a.sum() * k_a, norms_b.sum() * k_b]
    values += [norms_a.square().sum(), norms_b.square().sum()]
    if paired:
        cross_sq = (m_ab * m_ab.mT).sum()  # tr(C_ab²); on the Gram path k² tr(G_ab²)
        if gram:
            cross_sq = cross_sq * (k_a * k_a)
        values += [inner, cross_sq, dots.sum() * k_a, dots.square().sum()]
    return parts, torch.stack(values)


def _weights(n_a: int, n_b: int, which: str, paired: bool) -> dict[str, float]:
    """The estimate ``which`` as a linear combination of the moments (names as in
    :func:`_moments`; ``tr_a``/``tr_b``/``cross_tr`` weigh the squares of the traces)."""
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


_MOMENT_NAMES = ("diff_sq", "sq_a", "sq_b", "tr_a", "tr_b", "q_a", "q_b",
                 "inner", "cross_sq", "cross_tr", "q_ab")  # fmt: skip


def _estimates(
    moments: torch.Tensor, n_a: int, n_b: int, paired: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plug-in (unclamped) and unbiased estimates, ``scale`` = ``1/4d²`` applied, from the
    full moment vector."""
    names = _MOMENT_NAMES[: moments.shape[-1]]
    unbiased = 0.0
    for name, w in _weights(n_a, n_b, "unbiased", paired).items():
        m = moments[..., names.index(name)]
        unbiased = unbiased + w * (m * m if name in ("tr_a", "tr_b", "cross_tr") else m)
    return moments[..., 0] * scale, unbiased * scale


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
        value, stats, parts, _ = _pair_moments(x_a, x_b, which, gram, paired, full)
        return value, stats, *parts

    @staticmethod
    def value(
        x_a: torch.Tensor, x_b: torch.Tensor, which: str, gram: bool, paired: bool, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimate and the statistics, without an autograd node."""
        value, stats, _, _ = _pair_moments(x_a, x_b, which, gram, paired, full)
        return value, stats

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x_a, x_b, which, gram, paired, _ = inputs
        ctx.mark_non_differentiable(*output[1:])
        # The moments backward needs (the traces, the plug-in's unclamped value) are
        # recomputed from the saved parts: cheap reductions, no extra output.
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
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Forward of :class:`PairMoments`: ``(value, stats, parts, moments)``."""
    parts, moments = _moments(x_a, x_b, gram, paired, full or which == "unbiased")
    d = x_a.shape[-1]
    scale = 1.0 / (4 * d * d)
    if moments.shape[-1] == 1:  # the plug-in alone
        value = moments[..., 0] * scale
        return (value.clamp_min(0) if gram else value), moments[..., :0], parts, moments
    plugin, unbiased = _estimates(moments, x_a.shape[-2], x_b.shape[-2], paired, scale)
    # The Gram plug-in is clamped at 0 as a loss; the statistics keep the raw value.
    value = (plugin.clamp_min(0) if gram else plugin) if which == "plugin" else unbiased
    if not full:
        return value, moments[..., :0], parts, moments
    stats = torch.stack([plugin, unbiased, moments[..., 3] / d, moments[..., 4] / d], dim=-1)
    return value, stats, parts, moments


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

    With :math:`w` the estimate's weights (:func:`_weights`) and :math:`k_m = 1/(n_m - 1)`,
    the gradient with respect to the centred rows :math:`X_a` is
    :math:`X_aM_a + X_bN_a + \operatorname{diag}(u_a)X_a + \operatorname{diag}(v)X_b`:
    :math:`M_a = 4k_a(w_{D}(C_a - C_b) + w_{sa}C_a) + 2k_aw_{in}C_b`,
    :math:`N_a = 2k_aw_{cs}C_{ab}`, :math:`u_a = 4w_{qa}r_a + 4k_aw_{ta}\operatorname{tr}C_a`
    (:math:`r` the squared row norms), :math:`v = 2w_{qab}s + 2k_aw_{ct}\operatorname{tr}
    C_{ab}` (:math:`s` the row dot products); symmetrically for :math:`X_b`. Only the
    row-weighted terms have non-zero column sums, so only they are centred. On the Gram path
    :math:`X_aC_a = k_aG_aX_a`, :math:`X_aC_b = k_bG_{ab}X_b`, :math:`X_bC_{ab} =
    k_aG_{ab}^\top X_b`.
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
    w_d, w_in, w_cs = w.get("diff_sq", 0.0), w.get("inner", 0.0), w.get("cross_sq", 0.0)
    if gram and which == "plugin":  # the clamp: no gradient where the value was clamped
        raw = m_a.square().sum() * (k_a * k_a) + m_b.square().sum() * (k_b * k_b)
        raw = raw - 2 * (k_a * k_b) * m_ab.square().sum()
        g = g * (raw >= 0)
    # Row weights (vectors) for the fourth moments and the squared traces.
    row_a = row_b = row_ab = None
    if "q_a" in w:
        tr_a, tr_b = norms_a.sum() * k_a, norms_b.sum() * k_b
        row_a = norms_a * (4 * w["q_a"]) + tr_a * (4 * k_a * w["tr_a"])
        row_b = norms_b * (4 * w["q_b"]) + tr_b * (4 * k_b * w["tr_b"])
        if paired:
            row_ab = dots * (2 * w["q_ab"]) + dots.sum() * (2 * k_a * k_a * w["cross_tr"])
    if gram:
        # Sums of the N×N factors times the rows; sq weights fold into the own Gram factor.
        own_a = m_a * (4 * k_a * k_a * (w_d + w.get("sq_a", 0.0)))
        own_b = m_b * (4 * k_b * k_b * (w_d + w.get("sq_b", 0.0)))
        other = m_ab * (k_a * k_b * (2 * w_in - 4 * w_d))
        if paired:
            other_a = other + m_ab.mT * (2 * k_a * k_a * w_cs)
            other_b = other.mT + m_ab * (2 * k_a * k_a * w_cs)
        else:
            other_a, other_b = other, other.mT
        grad_a = torch.addmm(own_a @ rows_a, other_a, rows_b)
        grad_b = torch.addmm(own_b @ rows_b, other_b, rows_a)
    else:
        diff = m_a - m_b
        f_a = diff * (4 * k_a * w_d)
        f_b = diff * (-4 * k_b * w_d)
        if "sq_a" in w:
            f_a = f_a + m_a * (4 * k_a * w["sq_a"])
            f_b = f_b + m_b * (4 * k_b * w["sq_b"])
        if paired and w_in:
            f_a = f_a + m_b * (2 * k_a * w_in)
            f_b = f_b + m_a * (2 * k_b * w_in)
        grad_a, grad_b = rows_a @ f_a, rows_b @ f_b
        if paired and w_cs:
            grad_a = torch.addmm(grad_a, rows_b, m_ab, alpha=2 * k_a * w_cs)
            grad_b = torch.addmm(grad_b, rows_a, m_ab.mT, alpha=2 * k_b * w_cs)
    if row_a is not None:
        extra_a = rows_a * row_a[..., None]
        extra_b = rows_b * row_b[..., None]
        if paired:
            extra_a = extra_a + rows_b * row_ab[..., None]
            extra_b = extra_b + rows_a * row_ab[..., None]
        grad_a = grad_a + _subtract_mean(extra_a)
        grad_b = grad_b + _subtract_mean(extra_b)
    return grad_a * g, grad_b * g


for _function in (PairDistance, PairMoments):
    _function.forward.__signature__ = inspect.signature(_function.forward)
