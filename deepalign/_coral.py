r"""The closed-form alignment map :func:`coral_transform` (re-exported by
:mod:`deepalign.functional`, where users find it)."""

from __future__ import annotations

import math

import torch

from deepalign._checks import (
    check_choice,
    check_finite,
    check_in_range,
    check_same_device,
    check_shape,
    check_tensor,
    compute_dtype,
)
from deepalign._kernels import no_autocast

__all__ = ["coral_transform"]

METHODS = ("coral", "ot")
# Ties among singular values or eigenvalues are broken with this fixed matrix, so that the
# result is a function of the inputs alone (never of LAPACK's choice of eigenvector signs).
_TIE_BREAK_SEED = 20160212


def _check_covariance_pair(c_a: object, c_b: object) -> tuple[torch.Tensor, torch.Tensor]:
    c_a, c_b = check_tensor(c_a, "c_a"), check_tensor(c_b, "c_b")
    check_shape(c_a, "c_a", ("d", "d"))
    check_shape(c_b, "c_b", (c_a.shape[0], c_a.shape[0]))
    check_same_device(c_a=c_a, c_b=c_b)
    if c_a.device.type != "meta":  # meta tensors hold no values to check
        check_finite(c_a, "c_a")
        check_finite(c_b, "c_b")
    return c_a, c_b


def _check_tolerance(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    value = check_in_range(value, name, 0.0)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite non-negative number, got {value}")
    return value


def _psd_eigh(
    c: torch.Tensor, name: str, sym_tol: float, psd_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix, eigenvalues in descending order.

    Asymmetry up to ``sym_tol · max|C|`` is round-off (the symmetric part is decomposed);
    eigenvalues down to ``-psd_tol · λ_max`` are round-off of a PSD matrix and become 0.
    """
    asymmetry = (c - c.mT).abs().max()
    if asymmetry > sym_tol * c.abs().max():
        raise ValueError(
            f"{name}: expected a symmetric matrix, got max |C - Cᵀ| = {asymmetry.item():.3g} "
            f"> sym_tol · max|C| = {sym_tol * c.abs().max().item():.3g}"
        )
    values, vectors = torch.linalg.eigh((c + c.mT) / 2)
    values, vectors = values.flip(-1), vectors.flip(-1)
    largest = values[0].clamp_min(0)
    tolerance = psd_tol * largest
    if values[-1] < -tolerance:
        floor = -tolerance.item() + 0.0  # + 0.0: a zero tolerance prints as 0, not -0
        raise ValueError(
            f"{name}: expected a positive semi-definite matrix, got smallest eigenvalue "
            f"{values[-1].item():.3g}, below the round-off tolerance applied, {floor:.3g} "
            f"(-psd_tol · max(λ_max, 0) with psd_tol = {psd_tol:.3g} and largest eigenvalue "
            f"λ_max = {values[0].item():.3g})"
        )
    return values.clamp_min(0), vectors


def _function(vectors: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix ``U diag(values) Uᵀ``, exactly symmetric."""
    m = (vectors * values) @ vectors.mT
    return (m + m.mT) / 2


def _top_isometry(x: torch.Tensor, count: int, rtol: float) -> torch.Tensor:
    """``P_r Q_rᵀ`` from the SVD ``x = P D Qᵀ``, with ``r ≤ count`` the number of singular
    values above ``rtol`` times the largest: the partial isometry of ``x``'s polar
    decomposition restricted to its leading ``r`` singular directions (unique when ``r`` is
    ``x``'s rank, whatever signs or bases the SVD picks)."""
    if count == 0:
        return torch.zeros_like(x)
    p, s, qh = torch.linalg.svd(x)
    r = min(count, int((s > rtol * s[0]).sum()))
    return p[:, :r] @ qh[:r]


def _tie_break(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(_TIE_BREAK_SEED)
    return torch.randn(d, d, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _polar_completed(
    x: torch.Tensor, k: int, proj_a: torch.Tensor, proj_s: torch.Tensor, rtol: float
) -> torch.Tensor:
    """The partial isometry ``V`` that maximises ``tr(Vᵀ x)`` subject to ``V Vᵀ = proj_s``
    (rank ``k``) and a row space inside the range of ``proj_a``. When ``x`` has rank below
    ``k``, the directions ``x`` leaves free are paired by a fixed generic matrix."""
    v = _top_isometry(x, k, rtol)
    missing = k - int(torch.linalg.matrix_norm(v).square().round().item())
    if missing > 0:
        free_a = proj_a - v.mT @ v
        free_s = proj_s - v @ v.mT
        g = _tie_break(x.shape[0], x.dtype, x.device)
        v = v + _top_isometry(free_s @ g @ free_a, missing, rtol)
    return v


def _leading_directions(
    basis: torch.Tensor, reference: torch.Tensor, count: int, *, tie_break: bool = True
) -> torch.Tensor:
    """``count`` orthonormal directions in the span of ``basis`` (orthonormal columns) along
    which ``reference``'s rows have the largest norm: the leading left singular directions of
    ``basisᵀ · reference``. Directions that tie with the last one chosen are ranked by a fixed
    generic matrix instead, so that the choice does not depend on the SVD's bases."""
    p, s, _ = torch.linalg.svd(basis.mT @ reference, full_matrices=False)
    tol = basis.shape[0] * torch.finfo(s.dtype).eps * s[0].clamp_min(1e-300)
    if not tie_break or count == 0 or count >= p.shape[1] or s[count - 1] - s[count] > tol:
        return basis @ p[:, :count]
    sure = int((s > s[count - 1] + tol).sum())
    tied = p[:, sure:][:, (s[sure:] - s[count - 1]).abs() <= tol]
    g = _tie_break(basis.shape[0], basis.dtype, basis.device)
    extra = _leading_directions(tied, basis.mT @ g, count - sure, tie_break=False)
    return basis @ torch.cat([p[:, :sure], extra], dim=1)


def _target_projector_root(
    values_b: torch.Tensor,
    vectors_b: torch.Tensor,
    k: int,
    reference: torch.Tensor,
    tie: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = (C_b^{(k)})^{1/2}`` and the projector onto its range, ``C_b^{(k)}`` the best
    approximation of ``C_b`` of rank ``k``. If ``C_b``'s ``k``-th and ``(k+1)``-th eigenvalues
    tie, ``C_b^{(k)}`` is not unique: the tied eigenspace contributes the directions closest
    to ``reference`` (see :func:`_leading_directions`)."""
    if k == 0:
        zero = torch.zeros_like(vectors_b)
        return zero, zero
    cluster = (values_b - values_b[k - 1]).abs() <= tie
    if k < values_b.numel() and bool(cluster[k]):
        first = int(cluster.nonzero()[0])
        last = int(cluster.nonzero()[-1]) + 1
        chosen = _leading_directions(vectors_b[:, first:last], reference, k - first)
        basis = torch.cat([vectors_b[:, :first], chosen], dim=1)
        root = torch.cat([values_b[:first].sqrt(), values_b[k - 1].sqrt().expand(k - first)])
    else:
        basis, root = vectors_b[:, :k], values_b[:k].sqrt()
    return _function(basis, root), _function(basis, torch.ones_like(root))


def coral_transform(
    c_a: torch.Tensor,
    c_b: torch.Tensor,
    *,
    method: str = "coral",
    reg: float = 0.0,
    eps: float | None = None,
    psd_tol: float | None = None,
    sym_tol: float | None = None,
) -> torch.Tensor:
    r"""The linear map :math:`A` that aligns covariance ``c_a`` to ``c_b`` (paper Eq. 17),
    chosen among the many minimisers so that it does not scramble the features.

    Features are rows: a source batch ``x`` is mapped to ``x @ A``, whose covariance is
    :math:`A^\top C_a A`. Every :math:`A = C_a^{-1/2} Q\, C_b^{1/2}` with :math:`Q` orthogonal
    gives :math:`A^\top C_a A = C_b`; ``method`` says which one is returned:

    - ``"coral"`` (default): CORAL's whitening and recolouring [Sun2016b]_, :math:`Q = I`,

      .. math:: A = (C_a + \lambda I)^{-1/2}\,(C_b + \lambda I)^{1/2},

      which keeps every feature in its own coordinate;
    - ``"ot"``: the optimal-transport (Monge) map between the two centred Gaussians,

      .. math:: A = C_a^{-1/2}\big(C_a^{1/2} C_b C_a^{1/2}\big)^{1/2} C_a^{-1/2}

      (with :math:`C + \lambda I` in place of :math:`C`): symmetric positive semi-definite, and
      of all maps with :math:`A^\top C_a A = C_b` the one that moves the features least,
      :math:`\mathbb E\lVert x - xA\rVert^2` for :math:`x \sim \mathcal N(0, C_a)`.

    When :math:`C_a` is rank-deficient (fewer samples than features, or linearly dependent
    features) neither formula reaches the optimum; the map returned then reaches the
    Eckart–Young bound [EckartYoung1936]_ of :math:`\lVert A^\top C_a A - C_b\rVert_F`, and of
    all maps that reach it, it is the one closest to the method's formula on the source
    features (an orthogonal Procrustes problem; :doc:`/mathematics` derives it). Source
    directions outside the range of :math:`C_a` are mapped to zero. The result depends on the
    input matrices only: not on eigenvector signs, bases or the thread count.

    Args:
        c_a: source covariance (symmetric positive semi-definite).
        c_b: target covariance (symmetric positive semi-definite).
        method: ``"coral"`` (CORAL's map) or ``"ot"`` (the optimal-transport map).
        reg: :math:`\lambda \ge 0`, added to both covariances' diagonals before the map is
            computed; the map then aligns :math:`C_a + \lambda I` to :math:`C_b + \lambda I`
            exactly. CORAL uses 1 with z-scored features; the default 0 aligns the matrices as
            given.
        eps: relative rank tolerance: eigenvalues (after ``reg``) at most ``eps`` times the
            largest one count as zero. Default ``None`` means ``d · finfo(dtype).eps``, as
            :func:`torch.linalg.matrix_rank` does. ``eps=0`` keeps every positive eigenvalue,
            round-off ones included, whose inverse square roots then amplify round-off.
        psd_tol: relative positive semi-definiteness tolerance: eigenvalues down to
            ``-psd_tol`` times the largest one are round-off of a PSD matrix and count as zero;
            a more negative one is an error. Default ``None`` means ``d · finfo(dtype).eps``.
            Independent of ``eps``.
        sym_tol: relative symmetry tolerance: ``max |C - Cᵀ|`` up to ``sym_tol · max |C|`` is
            round-off (the symmetric part is used); more is an error. Default ``None`` means
            ``sqrt(finfo(dtype).eps)``.

    Returns:
        :math:`A` as a ``(d, d)`` tensor in the inputs' promoted dtype (at least float32) on
        their device. On meta tensors, an uninitialised meta tensor of that shape and dtype
        (no value is checked), as the losses do.

    Shape:
        - c_a, c_b: :math:`(d, d)`
        - output: :math:`(d, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor, or a tolerance or ``reg`` is not
            a real number.
        ValueError: if the inputs are not square and equal-sized, lie on different devices,
            hold NaN/Inf, or are not symmetric positive semi-definite within ``sym_tol`` and
            ``psd_tol``; if ``method`` is unknown; if ``reg`` or a tolerance is negative or
            not finite.

    Example:
        >>> c_a = torch.diag(torch.tensor([4.0, 1.0]))
        >>> c_b = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> a = coral_transform(c_a, c_b)
        >>> torch.allclose(a.T @ c_a @ a, c_b)
        True
        >>> ot = coral_transform(c_a, c_b, method="ot")
        >>> torch.allclose(ot, ot.T), torch.allclose(ot.T @ c_a @ ot, c_b)
        (True, True)
        >>> rank_2 = torch.diag(torch.tensor([4.0, 1.0, 0.0]))
        >>> a = coral_transform(rank_2, torch.diag(torch.tensor([1.0, 2.0, 3.0])))
        >>> residual = a.T @ rank_2 @ a - torch.diag(torch.tensor([1.0, 2.0, 3.0]))
        >>> round(torch.linalg.matrix_norm(residual).item(), 4)  # Eckart–Young: drop eigenvalue 1
        1.0
    """
    c_a, c_b = _check_covariance_pair(c_a, c_b)
    method = check_choice(method, "method", METHODS)
    reg = _check_tolerance(reg, "reg")
    eps, psd_tol, sym_tol = (
        _check_tolerance(value, name)
        for value, name in ((eps, "eps"), (psd_tol, "psd_tol"), (sym_tol, "sym_tol"))
    )
    d, dtype = c_a.shape[0], compute_dtype(c_a, c_b)
    unit = torch.finfo(dtype).eps
    rtol = d * unit if eps is None else eps
    psd_tol = d * unit if psd_tol is None else psd_tol
    sym_tol = math.sqrt(unit) if sym_tol is None else sym_tol
    if c_a.device.type == "meta":  # shape and dtype only, as the losses do on meta tensors
        return torch.empty((d, d), dtype=dtype, device=c_a.device)
    with no_autocast(c_a.device):
        values_a, vectors_a = _psd_eigh(c_a.to(dtype), "c_a", sym_tol, psd_tol)
        values_b, vectors_b = _psd_eigh(c_b.to(dtype), "c_b", sym_tol, psd_tol)
        values_a, values_b = values_a + reg, values_b + reg
        kept_a = values_a > rtol * values_a[0]
        kept_b = values_b > rtol * values_b[0]
        rank_a, rank_b = int(kept_a.sum()), int(kept_b.sum())
        values_a, values_b = values_a * kept_a, values_b * kept_b
        inv_root_a = _function(vectors_a, torch.where(kept_a, values_a, 1).rsqrt() * kept_a)
        root_a = _function(vectors_a, values_a.sqrt())
        if rank_a == d:  # the closed forms are optimal (residual 0 for every rank of C_b)
            root_b = _function(vectors_b, values_b.sqrt())
            if method == "coral":
                return inv_root_a @ root_b
            inner = root_a @ _function(vectors_b, values_b) @ root_a
            values_m, vectors_m = torch.linalg.eigh((inner + inner.mT) / 2)
            # rank(inner) = rank(C_b): the rest is round-off, whose square roots are not small
            values_m = values_m * (values_m > rtol * values_m[-1])
            middle = _function(vectors_m, values_m.sqrt())
            a = inv_root_a @ middle @ inv_root_a
            return (a + a.mT) / 2
        # Rank-deficient C_a: the Eckart–Young-optimal map nearest to the method's formula.
        k = min(rank_a, rank_b)
        proj_a = _function(vectors_a, kept_a.to(dtype))
        reference = proj_a if method == "coral" else root_a
        root_s, proj_s = _target_projector_root(
            values_b, vectors_b, k, reference, tie=d * unit * values_b[0]
        )
        target = root_s @ root_s @ proj_a if method == "coral" else root_s @ root_a
        v = _polar_completed(target, k, proj_a, proj_s, d * unit)
        return inv_root_a @ v.mT @ root_s
