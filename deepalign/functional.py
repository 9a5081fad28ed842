r"""Pure functions: covariance statistics, the covariance alignment loss, its analytic gradient
and the closed-form optimal alignment. All input validation lives here; the modules in
:mod:`deepalign.alignment` hold hyperparameters and delegate to these functions.

Notation follows [Lai2023]_: a batch of features is a matrix :math:`M \in \mathbb{R}^{N\times d}`
(``N`` rows, ``d`` columns), :math:`\tilde M = M - \mathbf{1}\bar m^\top` its column-centred copy.
The derivations, and the errata of the paper's printed equations, are on the
:doc:`/mathematics` page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from deepalign._checks import (
    check_finite,
    check_min_rows,
    check_same_device,
    check_shape,
    check_tensor,
    compute_dtype,
)
from deepalign._coral import coral_transform
from deepalign._kernels import (
    Covariance,
    CovarianceAlignment,
    GramAlignment,
    centred,
    no_autocast,
)
from deepalign.distributed import should_sync

__all__ = [
    "coral_transform",
    "covariance",
    "covariance_alignment_grad",
    "covariance_alignment_loss",
    "covariance_distance",
    "named_covariances",
    "pairwise_alignment_losses",
]


def _check_features(x: object, name: str, *, min_rows: int) -> torch.Tensor:
    x = check_tensor(x, name)
    check_shape(x, name, ("N", "d"))
    check_min_rows(x, name, min_rows)
    return x


def _raise_non_finite(finite: torch.Tensor, **inputs: torch.Tensor) -> None:
    """If ``finite`` (booleans, one host synchronisation) is not all true, raise an error that
    says whether an input or the maths (overflow) is to blame."""
    if not bool(finite.all()):
        for name, x in inputs.items():
            check_finite(x, name)
        largest = max((x.abs().max().item() for x in inputs.values() if x.numel()), default=0.0)
        raise ValueError(
            f"{', '.join(inputs)}: the covariance statistics are not finite although these "
            f"features are (largest magnitude {largest:.3g}): they overflowed, "
            "or another rank's features hold NaN/Inf; rescale the features or pass float64"
        )


def process_group(sync_dist: bool | None) -> dist.ProcessGroup | None:
    """The group to reduce statistics over (see :func:`deepalign.distributed.should_sync`);
    ``None`` means this process's batch alone."""
    return dist.group.WORLD if should_sync(sync_dist) else None


def covariance(
    x: torch.Tensor, *, correction: int = 1, sync_dist: bool | None = None
) -> torch.Tensor:
    r"""Sample covariance of the columns of ``x`` (paper Eq. 12–13), computed stably.

    .. math::

        C = \frac{1}{N - c}\,\tilde M^\top \tilde M,
        \qquad \tilde M = M - \tfrac{1}{N}\mathbf{1}\mathbf{1}^\top M .

    This equals the paper's one-pass form
    :math:`\frac{1}{N-1}\big(M^\top M - \frac{1}{N}(\mathbf{1}^\top M)^\top(\mathbf{1}^\top M)\big)`
    but avoids its catastrophic cancellation when :math:`|\bar m| \gg \sigma` (and its fp16
    overflow of :math:`M^\top M`). Its backward costs one ``N×d×d`` matrix product.

    Args:
        x: features, one sample per row.
        correction: ``c`` above; 1 gives the unbiased estimate used by the paper, 0 the
            maximum-likelihood one. Default: 1.
        sync_dist: compute the covariance of the global batch of all ranks of the default
            process group (every rank must call it; see :doc:`/distributed`). Default ``None``:
            sync whenever a process group of more than one rank is initialised.

    Returns:
        The ``(d, d)`` covariance. Its dtype is ``x.dtype`` for float32/float64 inputs and
        float32 for float16/bfloat16 inputs (the statistics are always computed in at least
        float32, also under :class:`torch.autocast`); its device is ``x.device``.

    Shape:
        - x: :math:`(N, d)`
        - output: :math:`(d, d)`

    Raises:
        TypeError: if ``x`` is not a floating-point tensor or ``correction`` not an int.
        ValueError: if ``x`` is not 2-D, has no more than ``correction`` rows, or holds NaN/Inf.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
        >>> covariance(x)
        tensor([[ 4.,  8.],
                [ 8., 16.]])
    """
    return named_covariances({"x": x}, correction=correction, sync_dist=sync_dist)["x"]


def named_covariances(
    inputs: Mapping[str, torch.Tensor], *, correction: int = 1, sync_dist: bool | None = None
) -> dict[str, torch.Tensor]:
    """:func:`covariance` of several named inputs (e.g. modalities), errors naming each.

    One host synchronisation checks all the results for NaN/Inf at once (a finite input can
    still overflow), instead of one per input; the inputs are diagnosed only on failure.

    Args:
        inputs: name -> features of shape ``(N_name, d_name)``.
        correction: as in :func:`covariance`.
        sync_dist: as in :func:`covariance`.

    Returns:
        name -> the ``(d_name, d_name)`` covariance.

    Raises:
        TypeError, ValueError: as :func:`covariance`, naming the offending input.

    Example:
        >>> c = named_covariances({"audio": torch.randn(5, 2), "vision": torch.randn(7, 3)})
        >>> {name: tuple(m.shape) for name, m in c.items()}
        {'audio': (2, 2), 'vision': (3, 3)}
    """
    if not isinstance(correction, int) or isinstance(correction, bool) or correction < 0:
        raise TypeError(f"correction: expected a non-negative int, got {correction!r}")
    group = process_group(sync_dist)
    min_rows = 0 if group is not None else correction + 1
    checked = {name: _check_features(x, name, min_rows=min_rows) for name, x in inputs.items()}
    covariances = {
        name: Covariance.apply(x, correction, compute_dtype(x), group)
        for name, x in checked.items()
    }
    finite = torch.stack([torch.isfinite(c).all() for c in covariances.values()])
    _raise_non_finite(finite, **checked)
    return covariances


def covariance_distance(c_a: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
    r"""The alignment loss between two covariance matrices (paper Eq. 14).

    .. math::

        \theta = \frac{1}{4d^2}\,\lVert C_a - C_b \rVert_F^2 .

    Use it with :func:`covariance` when one modality takes part in several terms, so that each
    modality's statistics are computed once (as :class:`~deepalign.ModalityAlignment` does).

    Args:
        c_a: covariance of the first modality.
        c_b: covariance of the second modality.

    Returns:
        A 0-dim tensor in the promoted dtype of the inputs, on their device.

    Shape:
        - c_a, c_b: :math:`(d, d)`
        - output: :math:`()`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the inputs are not square, differ in size, or lie on different devices.

    Example:
        >>> covariance_distance(torch.eye(2), torch.zeros(2, 2))
        tensor(0.1250)
    """
    c_a, c_b = check_tensor(c_a, "c_a"), check_tensor(c_b, "c_b")
    check_shape(c_a, "c_a", ("d", "d"))
    check_shape(c_b, "c_b", (c_a.shape[0], c_a.shape[0]))
    check_same_device(c_a=c_a, c_b=c_b)
    d = c_a.shape[0]
    dtype = compute_dtype(c_a, c_b)
    with no_autocast(c_a.device):
        return (c_a.to(dtype) - c_b.to(dtype)).square().sum() / (4 * d * d)


def _check_pair(
    x_a: object, x_b: object, *, min_rows: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    x_a = _check_features(x_a, "x_a", min_rows=min_rows)
    x_b = _check_features(x_b, "x_b", min_rows=min_rows)
    check_same_device(x_a=x_a, x_b=x_b)
    if x_a.shape[1] != x_b.shape[1]:
        raise ValueError(
            f"x_b: expected the width of x_a ({x_a.shape[1]} columns), got {x_b.shape[1]}; "
            "project the features to a common width first (CovarianceAlignmentLoss(in_dims=..., "
            "proj_dim=...))"
        )
    return x_a, x_b


def covariance_alignment_loss(
    x_a: torch.Tensor, x_b: torch.Tensor, *, sync_dist: bool | None = None
) -> torch.Tensor:
    r"""Covariance (CORAL) alignment loss between two batches of features (paper Eq. 12–14).

    .. math::

        \theta(M_a, M_b) = \frac{1}{4d^2}\,\lVert C_a - C_b \rVert_F^2,
        \qquad C = \tfrac{1}{N-1}\tilde M^\top \tilde M .

    The batches may have different numbers of rows. The gradient is the corrected form of the
    paper's Eq. 15–16 (see :func:`covariance_alignment_grad` and :doc:`/mathematics`); backward
    costs one ``N×d×d`` product per input. When :math:`N_a + N_b < d` (wide features, small
    batches) the loss is computed from ``N×N`` Gram matrices instead, in
    :math:`O((N_a+N_b)^2 d)` time and without ``d×d`` memory; same value and gradient, up to
    rounding (the Gram form subtracts squared norms, so in float32 it loses accuracy when
    :math:`\theta` is tiny against :math:`\lVert C\rVert_F^2`).

    Args:
        x_a: features of the first modality.
        x_b: features of the second modality, same width.
        sync_dist: use the statistics of the global batch of all ranks (see :func:`covariance`;
            communication is :math:`O(d^2)`; the Gram path is then not used). Default ``None``:
            sync whenever a process group of more than one rank is initialised.

    Returns:
        A 0-dim tensor :math:`\theta \ge 0` on the inputs' device, in their promoted dtype
        (float32 when both are float16/bfloat16; also under :class:`torch.autocast`).

    Shape:
        - x_a: :math:`(N_a, d)`, x_b: :math:`(N_b, d)`
        - output: :math:`()`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if an input is not 2-D, has fewer than 2 rows or holds NaN/Inf; if the
            widths differ; if the inputs lie on different devices.

    Example:
        >>> x_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # C_a = [[2, 0], [0, 0]]
        >>> x_b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # C_b = [[0, 0], [0, 2]]
        >>> covariance_alignment_loss(x_a, x_b)  # (4 + 4) / (4 * 2**2)
        tensor(0.5000)
    """
    group = process_group(sync_dist)
    x_a, x_b = _check_pair(x_a, x_b, min_rows=2 if group is None else 0)
    if group is not None:
        c = named_covariances({"x_a": x_a, "x_b": x_b}, sync_dist=True)
        return covariance_distance(c["x_a"], c["x_b"])
    return _local_pair_loss({"x_a": x_a, "x_b": x_b})


def _local_pair_loss(pair: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """θ of two validated local batches in one autograd node: Gram or fused d×d kernel."""
    x_a, x_b = pair.values()
    wide = x_a.shape[0] + x_b.shape[0] < x_a.shape[1]
    if wide:
        theta = GramAlignment.apply(x_a, x_b, compute_dtype(x_a, x_b))
    else:
        (theta,) = _fused_losses(((0, 1),), x_a, x_b)
    _check_losses([theta], pair)
    return theta


def pairwise_alignment_losses(
    inputs: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    *,
    sync_dist: bool | None = None,
) -> list[torch.Tensor]:
    r""":math:`\theta` of :func:`covariance_alignment_loss` for several pairs of named inputs,
    each input's statistics computed once.

    With covariances (``d×d``): locally in one autograd node that centres each input once and
    forms its covariance with one product (backward: one product per input, whatever the number
    of pairs), over a process group through :func:`named_covariances`. When every pair has
    :math:`N_m + N_n < d` and nothing is synchronised, with Gram matrices: each input's
    centred rows and
    :math:`\lVert \tilde M_m\tilde M_m^\top\rVert_F^2` once, one
    :math:`\lVert \tilde M_m\tilde M_n^\top\rVert_F^2` per pair (the identity of
    :func:`covariance_alignment_loss`'s Gram path). One host synchronisation checks all the
    results for NaN/Inf.

    Args:
        inputs: name -> features; the names in ``pairs`` must share one width ``d``.
        pairs: the ``(first, second)`` names of each term.
        sync_dist: as in :func:`covariance`.

    Returns:
        One 0-dim tensor per pair, in order.

    Shape:
        - inputs[name]: :math:`(N_\text{name}, d)`
        - output: a list of :math:`()` tensors

    Raises:
        TypeError, ValueError: as :func:`covariance_alignment_loss`, naming the input; also if
            a name in ``pairs`` is not in ``inputs``, a pair repeats a name, or the widths
            differ.

    Example:
        >>> x = {m: torch.randn(6, 3) for m in ("text", "audio", "vision")}
        >>> thetas = pairwise_alignment_losses(x, [("text", "audio"), ("audio", "vision")])
        >>> torch.allclose(thetas[1], covariance_alignment_loss(x["audio"], x["vision"]))
        True
    """
    group = process_group(sync_dist)
    used = list(dict.fromkeys(name for pair in pairs for name in pair))
    if any(m == n for m, n in pairs):
        raise ValueError(f"pairs: expected two different names per pair, got {list(pairs)}")
    missing = [name for name in used if name not in inputs]
    if missing:
        raise ValueError(f"inputs: expected the names of pairs {list(pairs)}, missing {missing}")
    checked = {n: _check_features(inputs[n], n, min_rows=0 if group else 2) for n in used}
    check_same_device(**checked)
    widths = {name: x.shape[1] for name, x in checked.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"inputs: expected one width for all paired inputs, got {widths}")
    if group is not None:
        covariances = named_covariances(checked, sync_dist=True)
        return [covariance_distance(covariances[m], covariances[n]) for m, n in pairs]
    if len(pairs) == 1:  # one term: the fused one-pair kernels
        return [_local_pair_loss({name: checked[name] for name in pairs[0]})]
    rows = {name: x.shape[0] for name, x in checked.items()}
    if all(rows[m] + rows[n] < widths[m] for m, n in pairs):
        thetas = _gram_losses(checked, pairs)
    else:
        index = {name: i for i, name in enumerate(checked)}
        by_index = tuple((index[m], index[n]) for m, n in pairs)
        thetas = list(_fused_losses(by_index, *checked.values()))
    _check_losses(thetas, checked)
    return thetas


def _check_losses(thetas: Sequence[torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> None:
    """Raise if a θ is NaN/Inf: one host synchronisation that brings the θ back as Python
    floats, so the common case runs no ``isfinite`` kernels."""
    values = torch.stack(list(thetas))
    if not all(map(math.isfinite, values.tolist())):
        _raise_non_finite(torch.isfinite(values), **inputs)


def _fused_losses(pairs: tuple[tuple[int, int], ...], *xs: torch.Tensor) -> tuple[torch.Tensor]:
    """θ of each pair of ``xs`` (validated, local) in one :class:`CovarianceAlignment` node."""
    return CovarianceAlignment.apply(pairs, compute_dtype(*xs), *xs)


def _gram_losses(
    inputs: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]]
) -> list[torch.Tensor]:
    """The Gram form of θ under plain autograd, each input's terms once (``N_m + N_n < d``)."""
    first = next(iter(inputs.values()))
    dtype, d = compute_dtype(*inputs.values()), first.shape[1]
    with no_autocast(first.device):
        xc = {name: centred(x, dtype) for name, x in inputs.items()}
        k = {name: 1.0 / (x.shape[0] - 1) for name, x in inputs.items()}
        own = {name: (x @ x.mT).square().sum() * k[name] ** 2 for name, x in xc.items()}
        return [
            (own[m] + own[n] - 2 * k[m] * k[n] * (xc[m] @ xc[n].mT).square().sum()).clamp_min(0)
            / (4 * d * d)
            for m, n in pairs
        ]


def covariance_alignment_grad(
    x_a: torch.Tensor, x_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Analytic gradients of :func:`covariance_alignment_loss` (corrected paper Eq. 15–16).

    .. math::

        \frac{\partial\theta}{\partial M_a} = \frac{\tilde M_a (C_a - C_b)}{d^2 (N_a - 1)},
        \qquad
        \frac{\partial\theta}{\partial M_b} = -\frac{\tilde M_b (C_a - C_b)}{d^2 (N_b - 1)} .

    The paper prints :math:`\tilde M_a^\top` (a ``d×N`` matrix, which cannot multiply
    ``C_a - C_b``) and a positive sign for :math:`M_b`; :doc:`/mathematics` derives the forms
    above and shows the printed ones fail numerically.

    Args:
        x_a: features of the first modality.
        x_b: features of the second modality, same width.

    Returns:
        ``(grad_a, grad_b)``, shaped like the inputs, in the dtype the loss is computed in.

    Shape:
        - x_a: :math:`(N_a, d)`, x_b: :math:`(N_b, d)`
        - output: :math:`(N_a, d)`, :math:`(N_b, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: as :func:`covariance_alignment_loss`.

    Example:
        >>> x_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> x_b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
        >>> grad_a, grad_b = covariance_alignment_grad(x_a, x_b)
        >>> grad_a
        tensor([[-0.5000,  0.0000],
                [ 0.5000,  0.0000]])
    """
    x_a, x_b = _check_pair(x_a, x_b)
    dtype = compute_dtype(x_a, x_b)
    d = x_a.shape[1]
    with torch.no_grad(), no_autocast(x_a.device):
        xc_a, xc_b = centred(x_a, dtype), centred(x_b, dtype)
        diff = xc_a.mT @ xc_a / (x_a.shape[0] - 1) - xc_b.mT @ xc_b / (x_b.shape[0] - 1)
        _raise_non_finite(torch.isfinite(diff).all(), x_a=x_a, x_b=x_b)
        grad_a = xc_a @ diff / (d * d * (x_a.shape[0] - 1))
        grad_b = xc_b @ diff / (-d * d * (x_b.shape[0] - 1))
    return grad_a, grad_b
