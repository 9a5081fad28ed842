"""deepalign.functional.coral_transform: optimality, which minimiser, determinism, tolerances."""

import math
import re

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import functional as F

f64 = torch.float64
METHODS = ("coral", "ot")


def features(seed: int, n: int, d: int, dtype=f64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def random_psd(seed: int, d: int, rank: int) -> torch.Tensor:
    factor = features(seed, d, rank) * torch.linspace(0.5, 3.0, rank, dtype=f64)
    return factor @ factor.T


def random_orthogonal(seed: int, d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(features(seed, d, d))
    return q * torch.sign(torch.diagonal(r))


def well_conditioned_psd(seed: int, d: int, rank: int) -> torch.Tensor:
    """Nonzero eigenvalues in [1, 10]: round-off stays near machine precision."""
    basis = random_orthogonal(seed, d)[:, :rank]
    return (basis * torch.linspace(1.0, 10.0, rank, dtype=f64)) @ basis.T


def eckart_young_residual(c_a: torch.Tensor, c_b: torch.Tensor) -> float:
    """Residual of the best PSD approximation of c_b of rank <= rank(c_a)."""
    rank_a = int(torch.linalg.matrix_rank(c_a, hermitian=True))
    eigenvalues = torch.linalg.eigvalsh(c_b).flip(0).clamp_min(0)
    return eigenvalues[rank_a:].square().sum().sqrt().item()


def residual(a: torch.Tensor, c_a: torch.Tensor, c_b: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(a.T @ c_a @ a - c_b).item()


def source_distance(a, b, c_a) -> float:
    """E‖x a − x b‖² for rows x ~ N(0, c_a): tr((a − b)ᵀ c_a (a − b))."""
    diff = np.asarray(a) - np.asarray(b)
    return float(np.trace(diff.T @ np.asarray(c_a) @ diff))


def displacement(a, c_a) -> float:
    """E‖x − x a‖² for rows x ~ N(0, c_a)."""
    return source_distance(np.eye(len(c_a)), a, c_a)


# ------------------------------------------------------ independent references (numpy / scipy)


def psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Square root of a PSD matrix by numpy's eigh, eigenvalues below 1e-12 relative set to 0
    (their round-off would otherwise add its square root, 1e-8, to the result)."""
    values, vectors = np.linalg.eigh(c)
    return (vectors * np.sqrt(np.where(values > 1e-12 * values[-1], values, 0))) @ vectors.T


def scipy_sqrtm(c: np.ndarray) -> np.ndarray:
    """Square root by scipy's Schur method (accurate for non-singular matrices)."""
    return np.real(scipy.linalg.sqrtm(c))


def reference_full_rank(c_a, c_b, method: str, reg: float = 0.0, sqrt=scipy_sqrtm) -> np.ndarray:
    """The two closed forms by scipy.linalg.sqrtm (or ``sqrt``), for full-rank c_a."""
    c_a, c_b = np.asarray(c_a) + reg * np.eye(len(c_a)), np.asarray(c_b) + reg * np.eye(len(c_a))
    root_a, root_b = sqrt(c_a), sqrt(c_b)
    inv_root_a = np.linalg.inv(root_a)
    if method == "coral":
        return inv_root_a @ root_b
    return inv_root_a @ sqrt(root_a @ c_b @ root_a) @ inv_root_a


def top_eigen(c: np.ndarray, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(c)
    values, vectors = values[::-1], vectors[:, ::-1]
    keep = values > rtol * values[0]
    return values[keep], vectors[:, keep]


def reference_procrustes(c_a, c_b, method: str) -> np.ndarray:
    """The Eckart–Young-optimal map nearest to the method's formula, in the r_a-dimensional
    parameterisation of docs/mathematics.rst: C_a = L Lᵀ, B = Aᵀ L (d × r_a), BBᵀ = C_b^{(k)},
    B = U_{b,k} Σ_{b,k}^{1/2} W with orthonormal rows W maximising tr(Bᵀ B_ref)."""
    c_a, c_b = np.asarray(c_a), np.asarray(c_b)
    s_a, u_a = top_eigen(c_a)
    s_b, u_b = top_eigen(c_b)
    k = min(len(s_a), len(s_b))
    s_b, u_b = s_b[:k], u_b[:, :k]
    b_ref = psd_sqrt(c_b) @ u_a if method == "coral" else u_a * np.sqrt(s_a)
    p, _, qh = np.linalg.svd(np.sqrt(s_b)[:, None] * (u_b.T @ b_ref), full_matrices=False)
    b = (u_b * np.sqrt(s_b)) @ p @ qh
    return (u_a / np.sqrt(s_a)) @ b.T


def random_eckart_young_map(c_a, c_b, seed: int) -> np.ndarray:
    """Another member of the Eckart–Young-optimal family (W random with orthonormal rows)."""
    s_a, u_a = top_eigen(np.asarray(c_a))
    s_b, u_b = top_eigen(np.asarray(c_b))
    k = min(len(s_a), len(s_b))
    w = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(s_a), k)))[0].T
    b = (u_b[:, :k] * np.sqrt(s_b[:k])) @ w
    return (u_a / np.sqrt(s_a)) @ b.T


def coral_formula(c_a, c_b) -> np.ndarray:
    """C_a^{+1/2} C_b^{1/2} (pseudo-inverse square root for rank-deficient c_a)."""
    s_a, u_a = top_eigen(np.asarray(c_a))
    return (u_a / np.sqrt(s_a)) @ u_a.T @ psd_sqrt(np.asarray(c_b))


# ------------------------------------------------------------------ the bound, every method

RANKS = {
    "full/full": (6, 6),
    "full/deficient": (6, 3),
    "deficient/full": (3, 6),
    "deficient/deficient": (2, 4),
    "deficient/deficient, lower target": (4, 2),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ranks", RANKS.values(), ids=RANKS.keys())
@pytest.mark.parametrize("seed", range(5))
def test_coral_transform_reaches_eckart_young_bound(ranks, seed, method):
    c_a, c_b = random_psd(seed, 6, ranks[0]), random_psd(seed + 100, 6, ranks[1])
    bound = eckart_young_residual(c_a, c_b)
    ours = residual(F.coral_transform(c_a, c_b, method=method), c_a, c_b)
    assert ours == pytest.approx(bound, rel=1e-6, abs=1e-9 * c_b.norm().item())


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 10_000), st.sampled_from(METHODS))
def test_coral_transform_bound_property(rank_a, rank_b, seed, method):
    c_a, c_b = random_psd(seed, 7, rank_a), random_psd(seed + 1, 7, rank_b)
    bound = eckart_young_residual(c_a, c_b)
    ours = residual(F.coral_transform(c_a, c_b, method=method), c_a, c_b)
    assert ours == pytest.approx(bound, rel=1e-6, abs=1e-9 * c_b.norm().item())


# ------------------------------------------------------- which minimiser: full-rank references


@pytest.mark.parametrize("reg", [0.0, 1.0])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_full_rank_map_equals_scipy_sqrtm_formula(method, reg, seed):
    c_a, c_b = random_psd(seed, 7, 7), random_psd(seed + 50, 7, 7)
    ours = F.coral_transform(c_a, c_b, method=method, reg=reg).numpy()
    np.testing.assert_allclose(ours, reference_full_rank(c_a, c_b, method, reg), atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank_b", [1, 4, 6])
def test_full_rank_source_singular_target_equals_numpy_formula(method, rank_b):
    """scipy's sqrtm loses half the digits on singular matrices: numpy's eigh instead."""
    c_a, c_b = random_psd(rank_b, 7, 7), random_psd(rank_b + 50, 7, rank_b)
    ours = F.coral_transform(c_a, c_b, method=method).numpy()
    reference = reference_full_rank(c_a, c_b, method, sqrt=psd_sqrt)
    np.testing.assert_allclose(ours, reference, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_regularised_map_aligns_regularised_covariances_exactly(method):
    eye = torch.eye(8, dtype=f64)
    c_a, c_b = random_psd(7, 8, 3), random_psd(8, 8, 5)  # both singular: reg makes them not
    a = F.coral_transform(c_a, c_b, method=method, reg=1.0)
    torch.testing.assert_close(a.T @ (c_a + eye) @ a, c_b + eye, rtol=0, atol=1e-9)
    assert residual(a, c_a, c_b) > eckart_young_residual(c_a, c_b) + 0.1  # not the plain map


@pytest.mark.parametrize("seed", range(4))
def test_ot_map_is_symmetric_psd_and_moves_the_features_by_the_bures_distance(seed):
    c_a, c_b = random_psd(seed, 6, 6), random_psd(seed + 9, 6, 6)
    a = F.coral_transform(c_a, c_b, method="ot")
    assert torch.equal(a, a.T)
    assert torch.linalg.eigvalsh(a).min() > 0
    root_a = psd_sqrt(c_a.numpy())
    bures = np.trace(c_a.numpy() + c_b.numpy() - 2 * psd_sqrt(root_a @ c_b.numpy() @ root_a))
    assert displacement(a, c_a) == pytest.approx(bures, rel=1e-9)


@settings(deadline=None, max_examples=40)
@given(st.integers(2, 7), st.integers(0, 10_000))
def test_ot_map_moves_features_least_among_full_rank_minimisers(d, seed):
    c_a, c_b = random_psd(seed, d, d), random_psd(seed + 1, d, d)
    ot = F.coral_transform(c_a, c_b, method="ot").numpy()
    coral = F.coral_transform(c_a, c_b).numpy()
    inv_root_a, root_b = np.linalg.inv(psd_sqrt(c_a.numpy())), psd_sqrt(c_b.numpy())
    others = [coral] + [
        inv_root_a @ random_orthogonal(seed + i, d).numpy() @ root_b for i in range(5)
    ]
    for other in others:
        np.testing.assert_allclose(other.T @ c_a.numpy() @ other, c_b.numpy(), atol=1e-8)
        assert displacement(ot, c_a) <= displacement(other, c_a) + 1e-9 * np.trace(c_a.numpy())


def test_coral_map_keeps_each_feature_in_its_coordinate():
    """Diagonal covariances: CORAL's map rescales each feature; nothing moves elsewhere."""
    c_a = torch.diag(torch.tensor([4.0, 1.0, 9.0], dtype=f64))
    c_b = torch.diag(torch.tensor([1.0, 4.0, 1.0], dtype=f64))
    for method in METHODS:
        a = F.coral_transform(c_a, c_b, method=method)
        torch.testing.assert_close(a, torch.diag(torch.tensor([0.5, 2.0, 1 / 3], dtype=f64)))


# --------------------------------------------------- which minimiser: rank-deficient source


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000), st.sampled_from(METHODS))
def test_deficient_source_map_equals_independent_procrustes(rank_a, rank_b, seed, method):
    c_a, c_b = random_psd(seed, 6, rank_a), random_psd(seed + 1, 6, rank_b)
    ours = F.coral_transform(c_a, c_b, method=method).numpy()
    np.testing.assert_allclose(ours, reference_procrustes(c_a, c_b, method), atol=1e-7)


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_deficient_source_maps_are_nearest_in_their_family(rank_a, rank_b, seed):
    """Among Eckart–Young-optimal maps, "coral" is nearest to C_a^{+1/2} C_b^{1/2} and "ot"
    moves the source features least (both measured on x ~ N(0, C_a))."""
    c_a, c_b = random_psd(seed, 6, rank_a), random_psd(seed + 1, 6, rank_b)
    coral = F.coral_transform(c_a, c_b).numpy()
    ot = F.coral_transform(c_a, c_b, method="ot").numpy()
    formula, bound = coral_formula(c_a, c_b), eckart_young_residual(c_a, c_b)
    slack = 1e-9 * np.trace(c_a.numpy()) * (1 + np.abs(formula).max()) ** 2
    for i in range(5):
        other = random_eckart_young_map(c_a, c_b, seed + i)
        assert residual(torch.from_numpy(other), c_a, c_b) == pytest.approx(bound, abs=1e-8)
        assert source_distance(coral, formula, c_a) <= source_distance(other, formula, c_a) + slack
        assert displacement(ot, c_a) <= displacement(other, c_a) + 1e-9 * np.trace(c_a.numpy())


@pytest.mark.parametrize("method", METHODS)
def test_deficient_source_map_is_the_formula_when_that_is_optimal(method):
    """If C_b lives in the range of C_a, the pseudo-inverse formula reaches residual 0: then
    it is what comes back."""
    basis = random_orthogonal(3, 6)[:, :4]
    c_a = basis @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=f64)) @ basis.T
    c_b = basis[:, :3] @ features(4, 3, 3) @ features(4, 3, 3).T @ basis[:, :3].T
    ours = F.coral_transform(c_a, c_b, method=method).numpy()
    pinv_root = np.linalg.pinv(psd_sqrt(c_a.numpy()), hermitian=True, rtol=1e-8)
    if method == "coral":
        formula = pinv_root @ psd_sqrt(c_b.numpy())
    else:
        root_a = pinv_root @ c_a.numpy()
        formula = pinv_root @ psd_sqrt(root_a @ c_b.numpy() @ root_a) @ pinv_root
    np.testing.assert_allclose(ours, formula, atol=1e-7)
    assert residual(torch.from_numpy(ours), c_a, c_b) < 1e-9


# ------------------------------------------------------------------------- determinism


class FlippedDecompositions:
    """Replaces torch.linalg.eigh / svd by versions that flip the signs of the vectors and
    rotate them inside eigenspaces of repeated eigenvalues: an equally valid decomposition."""

    def __init__(self, seed: int):
        self.eigh, self.svd = torch.linalg.eigh, torch.linalg.svd
        self.generator = torch.Generator().manual_seed(seed)

    def signs(self, n: int, dtype) -> torch.Tensor:
        return torch.randint(0, 2, (n,), generator=self.generator).to(dtype) * 2 - 1

    def flipped_eigh(self, c, *args, **kwargs):
        values, vectors = self.eigh(c, *args, **kwargs)
        vectors = vectors * self.signs(len(values), vectors.dtype)
        start, tol = 0, 1e-9 * values.abs().max()
        for i in range(1, len(values) + 1):  # rotate each cluster of equal eigenvalues
            if i == len(values) or values[i] - values[start] > tol:
                if i - start > 1:
                    g = torch.randn(i - start, i - start, generator=self.generator)
                    q = torch.linalg.qr(g.to(vectors.dtype))[0]
                    vectors[:, start:i] = vectors[:, start:i] @ q
                start = i
        return values, vectors

    def flipped_svd(self, x, *args, **kwargs):
        p, s, qh = self.svd(x, *args, **kwargs)
        signs = self.signs(len(s), p.dtype)
        p = p.clone()
        p[:, : len(s)] *= signs
        return p, s, qh * signs[:, None]


CASES = {
    "full/full": (6, 6),
    "full/deficient": (6, 2),
    "deficient/full": (3, 6),
    "deficient/deficient": (4, 3),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ranks", CASES.values(), ids=CASES.keys())
def test_result_does_not_depend_on_eigenvector_signs(ranks, method, monkeypatch):
    c_a, c_b = random_psd(11, 6, ranks[0]), random_psd(12, 6, ranks[1])
    expected = F.coral_transform(c_a, c_b, method=method)
    for seed in range(3):
        flips = FlippedDecompositions(seed)
        monkeypatch.setattr(torch.linalg, "eigh", flips.flipped_eigh)
        monkeypatch.setattr(torch.linalg, "svd", flips.flipped_svd)
        torch.testing.assert_close(
            F.coral_transform(c_a, c_b, method=method), expected, rtol=0, atol=1e-12
        )


TIES = {
    # c_b = identity: every rank-2 projector is a best approximation; the source's range wins
    "target identity": (
        torch.diag(torch.tensor([4.0, 1.0, 0.0, 0.0], dtype=f64)),
        torch.eye(4, dtype=f64),
    ),
    # the docs' worked case: the pairing of e1 with e3 is left free by the formula
    "orthogonal leftover": (
        torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=f64)),
        torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=f64)),
    ),
    "tie at the cut": (
        torch.diag(torch.tensor([4.0, 1.0, 0.0, 0.0], dtype=f64)),
        torch.diag(torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=f64)),
    ),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", TIES.values(), ids=TIES.keys())
def test_ties_are_broken_independently_of_the_decomposition(pair, method, monkeypatch):
    c_a, c_b = pair
    expected = F.coral_transform(c_a, c_b, method=method)
    assert residual(expected, c_a, c_b) == pytest.approx(eckart_young_residual(c_a, c_b))
    for seed in range(4):
        flips = FlippedDecompositions(seed)
        monkeypatch.setattr(torch.linalg, "eigh", flips.flipped_eigh)
        monkeypatch.setattr(torch.linalg, "svd", flips.flipped_svd)
        torch.testing.assert_close(
            F.coral_transform(c_a, c_b, method=method), expected, rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("method", METHODS)
def test_target_identity_keeps_the_source_range(method):
    """C_b = I, C_a of rank 2: C_a^{+1/2} is optimal (it maps onto the source's own range)."""
    c_a, c_b = TIES["target identity"]
    expected = torch.diag(torch.tensor([0.5, 1.0, 0.0, 0.0], dtype=f64))
    torch.testing.assert_close(F.coral_transform(c_a, c_b, method=method), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ranks", CASES.values(), ids=CASES.keys())
def test_map_follows_a_change_of_basis(ranks, method):
    """A(Qᵀ C_a Q, Qᵀ C_b Q) = Qᵀ A(C_a, C_b) Q for orthogonal Q: features are not paired by
    the rank of eigenvalues (which is what scrambled them)."""
    c_a, c_b = random_psd(21, 6, ranks[0]), random_psd(22, 6, ranks[1])
    a = F.coral_transform(c_a, c_b, method=method)
    for seed in range(3):
        q = random_orthogonal(seed, 6)
        rotated = F.coral_transform(q.T @ c_a @ q, q.T @ c_b @ q, method=method)
        torch.testing.assert_close(rotated, q.T @ a @ q, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank_a", [96, 40])
def test_result_does_not_depend_on_the_thread_count(rank_a, method):
    c_a, c_b = well_conditioned_psd(31, 96, rank_a), well_conditioned_psd(32, 96, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.coral_transform(c_a, c_b, method=method)
        torch.set_num_threads(2)
        two = F.coral_transform(c_a, c_b, method=method)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, rtol=0, atol=1e-12 * one.abs().max().item())


# --------------------------------------------------------------------------- tolerances


def test_rank_deficient_batch_covariance_with_eps_zero():
    """Issue 13: covariance() of a 5x8 batch has round-off eigenvalues below 0; eps=0 (the rank
    tolerance) must not turn them into a PSD error."""
    c_a = F.covariance(features(0, 5, 8))
    c_b = F.covariance(features(1, 50, 8))
    assert torch.linalg.eigvalsh(c_a).min() < 0  # the case exercised
    for method in METHODS:
        assert torch.isfinite(F.coral_transform(c_a, c_b, eps=0, method=method)).all()
        a = F.coral_transform(c_a, c_b, method=method)
        assert residual(a, c_a, c_b) == pytest.approx(eckart_young_residual(c_a, c_b), rel=1e-6)


def test_eps_zero_with_exact_zero_eigenvalues_reaches_the_bound():
    c_a = torch.diag(torch.tensor([4.0, 1.0, 0.0, 0.0], dtype=f64))
    c_b = random_psd(3, 4, 4)
    a = F.coral_transform(c_a, c_b, eps=0)
    assert residual(a, c_a, c_b) == pytest.approx(eckart_young_residual(c_a, c_b), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_float_covariances_of_wide_batches_pass_the_default_tolerances(dtype):
    for seed in range(5):
        c_a = F.covariance(features(seed, 9, 40, dtype))
        c_b = F.covariance(features(seed + 9, 20, 40, dtype))
        a = F.coral_transform(c_a, c_b, method="ot")
        assert torch.isfinite(a).all()


def psd_with_smallest(value: float) -> torch.Tensor:
    q = random_orthogonal(5, 4)
    return q @ torch.diag(torch.tensor([1.0, 0.5, 0.25, value], dtype=f64)) @ q.T


def test_psd_tolerance_is_independent_of_the_rank_tolerance():
    with pytest.raises(ValueError, match="c_a: expected a positive semi-definite"):
        F.coral_transform(psd_with_smallest(-0.1), torch.eye(4, dtype=f64), eps=0.5)
    with pytest.raises(ValueError, match="psd_tol"):
        F.coral_transform(psd_with_smallest(-1e-9), torch.eye(4, dtype=f64))
    a = F.coral_transform(psd_with_smallest(-1e-9), torch.eye(4, dtype=f64), psd_tol=1e-8)
    b = F.coral_transform(psd_with_smallest(0.0), torch.eye(4, dtype=f64))
    torch.testing.assert_close(a, b)


def test_symmetry_tolerance():
    c = random_psd(6, 4, 4)
    c = c / c.abs().max()
    skew = torch.zeros(4, 4, dtype=f64)
    skew[0, 1], skew[1, 0] = 1.0, -1.0
    F.coral_transform(c + 1e-10 * skew, c)  # default sqrt(eps) = 1.5e-8: round-off
    with pytest.raises(ValueError, match="c_a: expected a symmetric matrix"):
        F.coral_transform(c + 1e-6 * skew, c)
    F.coral_transform(c + 1e-6 * skew, c, sym_tol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_tolerances_are_relative_to_the_scale(method, scale):
    c_a, c_b = random_psd(8, 5, 3), random_psd(9, 5, 5)
    a = F.coral_transform(c_a, c_b, method=method)
    scaled = F.coral_transform(scale * c_a, scale * c_b, method=method)
    torch.testing.assert_close(scaled, a)


def test_coral_transform_hand_case_and_dtype():
    c_a = torch.diag(torch.tensor([4.0, 1.0, 0.0]))
    c_b = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    for method in METHODS:
        a = F.coral_transform(c_a, c_b, method=method)
        assert a.dtype == torch.float32
        # Best rank-2 approximation of c_b keeps eigenvalues 3 and 2.
        torch.testing.assert_close(a.T @ c_a @ a, torch.diag(torch.tensor([0.0, 2.0, 3.0])))
    assert F.coral_transform(c_a.double(), c_b.double()).dtype == torch.float64
    assert F.coral_transform(c_a.half(), c_b.half()).dtype == torch.float32


# ------------------------------------------------------------ errata of the paper's Eq. 29


def coral_whitening_recolouring(c_a, c_b):
    """Original CORAL: U_a S_a^{+1/2} U_aᵀ · U_b[:r] S_b[:r]^{1/2} U_b[:r]ᵀ."""
    r = min(int(torch.linalg.matrix_rank(c, hermitian=True)) for c in (c_a, c_b))
    s_a, u_a = torch.linalg.eigh(c_a)
    s_b, u_b = torch.linalg.eigh(c_b)
    s_b, u_b = s_b.flip(0)[:r], u_b.flip(1)[:, :r]
    inv_sqrt_a = torch.where(s_a > 1e-10 * s_a.max(), s_a.clamp_min(1e-300).rsqrt(), 0)
    return (u_a * inv_sqrt_a) @ u_a.T @ (u_b * s_b.sqrt()) @ u_b.T


def test_coral_whitening_is_optimal_only_with_full_rank_source():
    full, deficient, target = random_psd(1, 6, 6), random_psd(2, 6, 3), random_psd(3, 6, 6)
    assert residual(coral_whitening_recolouring(full, target), full, target) == pytest.approx(
        eckart_young_residual(full, target), rel=1e-6
    )
    coral = residual(coral_whitening_recolouring(deficient, target), deficient, target)
    assert coral > 1.01 * eckart_young_residual(deficient, target)


def test_printed_eq29_is_not_the_minimiser():
    c_a, c_b = random_psd(4, 5, 5), random_psd(5, 5, 5)
    s_a, u_a = torch.linalg.eigh(c_a)
    s_b, u_b = torch.linalg.eigh(c_b)
    printed = (u_a * s_a.rsqrt()) @ u_a.T @ (u_b * s_b.rsqrt()) @ u_b.T
    assert residual(printed, c_a, c_b) > 1.01 * eckart_young_residual(c_a, c_b)
    assert eckart_young_residual(c_a, c_b) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_coral_transform_aligns_features_in_practice(method):
    x_a, x_b = features(30, 200, 4), features(31, 200, 4) @ features(32, 4, 4)
    a = F.coral_transform(F.covariance(x_a), F.covariance(x_b), method=method)
    assert F.covariance_alignment_loss(x_a @ a, x_b).item() < 1e-20


@pytest.mark.parametrize(
    ("c_a", "c_b", "kwargs", "error", "match"),
    [
        (torch.eye(3), torch.eye(2), {}, ValueError, "c_b: expected shape"),
        (torch.ones(3, 2), torch.eye(3), {}, ValueError, "c_a: expected shape"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), {}, ValueError, "c_a: .*symmetric"),
        (torch.eye(2), -torch.eye(2), {}, ValueError, "c_b: expected a positive semi-definite"),
        (torch.eye(2), torch.full((2, 2), math.nan), {}, ValueError, "c_b: expected finite"),
        (torch.eye(2), torch.eye(2), {"eps": -1.0}, ValueError, "eps"),
        (torch.eye(2), torch.eye(2), {"psd_tol": -1.0}, ValueError, "psd_tol"),
        (torch.eye(2), torch.eye(2), {"sym_tol": math.inf}, ValueError, "sym_tol"),
        (torch.eye(2), torch.eye(2), {"reg": -1.0}, ValueError, "reg"),
        (torch.eye(2), torch.eye(2), {"reg": "1"}, TypeError, "reg: expected a real number"),
        (torch.eye(2), torch.eye(2), {"method": "monge"}, ValueError, r"method: .*'coral', 'ot'"),
        (torch.eye(2, dtype=torch.int64), torch.eye(2), {}, TypeError, "c_a: .*floating"),
    ],
)
def test_coral_transform_errors(c_a, c_b, kwargs, error, match):
    with pytest.raises(error, match=match):
        F.coral_transform(c_a, c_b, **kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        F.coral_transform(torch.eye(2), torch.eye(2), "ot")


@pytest.mark.parametrize("method", METHODS)
def test_zero_covariances_give_the_zero_map(method):
    zero, eye = torch.zeros(3, 3, dtype=f64), torch.eye(3, dtype=f64)
    rank_1 = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=f64))
    for c_a, c_b in [(zero, eye), (eye, zero), (rank_1, zero)]:
        assert torch.equal(F.coral_transform(c_a, c_b, method=method), zero)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_meta_tensors_give_shape_and_dtype(dtype):
    """Issue 19: on meta tensors the result has the real call's shape and dtype, no value read."""
    c = torch.eye(4, dtype=dtype)
    out = F.coral_transform(c.to("meta"), c.to("meta"), method="ot")
    real = F.coral_transform(c, c, method="ot")
    assert out.device.type == "meta"
    assert (out.shape, out.dtype) == (real.shape, real.dtype)
    with pytest.raises(ValueError, match=r"c_b: expected shape \(4, 4\)"):
        F.coral_transform(c.to("meta"), torch.eye(3, device="meta", dtype=dtype))


@pytest.mark.parametrize(
    ("c_a", "smallest", "floor"),
    [
        (-torch.eye(3), "-1", "0"),  # all eigenvalues negative: tolerance 0, printed as 0
        (torch.diag(torch.tensor([2.0, 1.0, -0.5])), "-0.5", "-7.15e-07"),  # 2 · 3 · 2^-23
    ],
)
def test_psd_error_states_smallest_eigenvalue_and_applied_tolerance(c_a, smallest, floor):
    """Issue 19: the message names the smallest eigenvalue and the tolerance applied (never -0)."""
    stated = f"got smallest eigenvalue {smallest}, below the round-off tolerance applied, {floor} ("
    with pytest.raises(ValueError, match=r"^c_a: expected a positive semi-definite") as info:
        F.coral_transform(c_a, torch.eye(3))
    assert stated in str(info.value)
    assert not re.search(r"(^|[ =])-0($|[ ,)])", str(info.value))
