r"""The closed-form alignment map :func:`coral_transform` (re-exported by
:mod:`deepalign.functional`, where users find it)."""

from __future__ import annotations

import torch

from deepalign._checks import (
    check_finite,
    check_same_device,
    check_shape,
    check_tensor,
    compute_dtype,
)
from deepalign._kernels import no_autocast

__all__ = ["coral_transform"]


def _check_covariance_pair(c_a: object, c_b: object) -> tuple[torch.Tensor, torch.Tensor]:
    c_a, c_b = check_tensor(c_a, "c_a"), check_tensor(c_b, "c_b")
    check_shape(c_a, "c_a", ("d", "d"))
    check_shape(c_b, "c_b", (c_a.shape[0], c_a.shape[0]))
    check_same_device(c_a=c_a, c_b=c_b)
    check_finite(c_a, "c_a")
    check_finite(c_b, "c_b")
    return c_a, c_b


def _psd_eigh(c: torch.Tensor, name: str, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix, descending, tiny eigenvalues set to 0."""
    asymmetry = (c - c.mT).abs().max()
    scale = c.abs().max().clamp_min(torch.finfo(c.dtype).tiny)
    if asymmetry > 100 * rtol * scale:
        raise ValueError(
            f"{name}: expected a symmetric matrix, got max |C - Cᵀ| = {asymmetry.item():.3g}"
        )
    values, vectors = torch.linalg.eigh((c + c.mT) / 2)
    values, vectors = values.flip(-1), vectors.flip(-1)
    cutoff = rtol * values[0].clamp_min(0)
    if values[-1] < -cutoff * 100:
        raise ValueError(
            f"{name}: expected a positive semi-definite matrix, got eigenvalue "
            f"{values[-1].item():.3g} (largest {values[0].item():.3g})"
        )
    return torch.where(values > cutoff, values, torch.zeros_like(values)), vectors


def coral_transform(
    c_a: torch.Tensor, c_b: torch.Tensor, *, eps: float | None = None
) -> torch.Tensor:
    r"""The linear map :math:`A` that best aligns covariance ``c_a`` to ``c_b`` (paper Eq. 17).

    .. math::

        A^\star = \arg\min_A \lVert A^\top C_a A - C_b \rVert_F
        = U_{a,k}\,\Sigma_{a,k}^{-1/2}\,\Sigma_{b,k}^{1/2}\,U_{b,k}^\top,
        \qquad k = \min(\operatorname{rank} C_a, \operatorname{rank} C_b),

    with :math:`C = U\Sigma U^\top` the eigen-decompositions, eigenvalues in descending order and
    :math:`U_{\cdot,k}` the first ``k`` eigenvectors. Then :math:`A^{\star\top} C_a A^\star` is
    the best positive semi-definite approximation of :math:`C_b` of rank at most
    :math:`\operatorname{rank} C_a`, so the residual reaches the Eckart–Young bound
    [EckartYoung1936]_ :math:`\big(\sum_{i>k}\sigma_{b,i}^2\big)^{1/2}` for every combination of
    ranks. CORAL's whitening and recolouring ([Sun2016b]_) reaches it only when :math:`C_a` has
    full rank, and the paper's Eq. 29 never does; :doc:`/mathematics` derives both facts.

    Args:
        c_a: source covariance (symmetric positive semi-definite).
        c_b: target covariance (symmetric positive semi-definite).
        eps: relative rank tolerance: eigenvalues at most ``eps`` times the largest one count
            as zero. Default ``None`` means ``d · finfo(dtype).eps``, as
            :func:`torch.linalg.matrix_rank` does.

    Returns:
        :math:`A` as a ``(d, d)`` tensor in the inputs' promoted dtype (at least float32) on
        their device.

    Shape:
        - c_a, c_b: :math:`(d, d)`
        - output: :math:`(d, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the inputs are not square and equal-sized, lie on different devices,
            hold NaN/Inf, or are not symmetric positive semi-definite; if ``eps`` is negative.

    Example:
        >>> c_a = torch.diag(torch.tensor([4.0, 1.0, 0.0]))  # rank 2
        >>> c_b = torch.diag(torch.tensor([1.0, 2.0, 3.0]))  # rank 3
        >>> a = coral_transform(c_a, c_b)
        >>> torch.linalg.matrix_norm(a.T @ c_a @ a - c_b).item()  # = 1, the bound: drop σ=1
        1.0
    """
    c_a, c_b = _check_covariance_pair(c_a, c_b)
    if eps is not None and eps < 0:
        raise ValueError(f"eps: expected a non-negative relative tolerance, got {eps}")
    dtype = compute_dtype(c_a, c_b)
    rtol = c_a.shape[0] * torch.finfo(dtype).eps if eps is None else eps
    with no_autocast(c_a.device):
        values_a, vectors_a = _psd_eigh(c_a.to(dtype), "c_a", rtol)
        values_b, vectors_b = _psd_eigh(c_b.to(dtype), "c_b", rtol)
        keep = (values_a > 0) & (values_b > 0)
        scale = torch.where(keep, (values_b / torch.where(keep, values_a, 1)).sqrt(), 0)
        return (vectors_a * scale) @ vectors_b.mT
