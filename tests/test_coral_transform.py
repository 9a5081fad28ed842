"""deepalign.functional.coral_transform."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import functional as F

f64 = torch.float64


def features(seed: int, n: int, d: int, dtype=f64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


# ---------------------------------------------------------------- coral_transform


def random_psd(seed: int, d: int, rank: int) -> torch.Tensor:
    factor = features(seed, d, rank) * torch.linspace(0.5, 3.0, rank, dtype=f64)
    return factor @ factor.T


def eckart_young_residual(c_a: torch.Tensor, c_b: torch.Tensor) -> float:
    """Residual of the best PSD approximation of c_b of rank <= rank(c_a)."""
    rank_a = int(torch.linalg.matrix_rank(c_a, hermitian=True))
    eigenvalues = torch.linalg.eigvalsh(c_b).flip(0).clamp_min(0)
    return eigenvalues[rank_a:].square().sum().sqrt().item()


def residual(a: torch.Tensor, c_a: torch.Tensor, c_b: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(a.T @ c_a @ a - c_b).item()


def coral_whitening_recolouring(c_a, c_b):
    """Original CORAL: U_a S_a^{+1/2} U_aᵀ · U_b[:r] S_b[:r]^{1/2} U_b[:r]ᵀ."""
    r = min(int(torch.linalg.matrix_rank(c, hermitian=True)) for c in (c_a, c_b))
    s_a, u_a = torch.linalg.eigh(c_a)
    s_b, u_b = torch.linalg.eigh(c_b)
    s_b, u_b = s_b.flip(0)[:r], u_b.flip(1)[:, :r]
    inv_sqrt_a = torch.where(s_a > 1e-10 * s_a.max(), s_a.clamp_min(1e-300).rsqrt(), 0)
    return (u_a * inv_sqrt_a) @ u_a.T @ (u_b * s_b.sqrt()) @ u_b.T


RANKS = {
    "full/full": (6, 6),
    "full/deficient": (6, 3),
    "deficient/full": (3, 6),
    "deficient/deficient": (2, 4),
    "deficient/deficient, lower target": (4, 2),
}


@pytest.mark.parametrize("ranks", RANKS.values(), ids=RANKS.keys())
@pytest.mark.parametrize("seed", range(5))
def test_coral_transform_reaches_eckart_young_bound(ranks, seed):
    c_a, c_b = random_psd(seed, 6, ranks[0]), random_psd(seed + 100, 6, ranks[1])
    bound = eckart_young_residual(c_a, c_b)
    ours = residual(F.coral_transform(c_a, c_b), c_a, c_b)
    assert ours == pytest.approx(bound, rel=1e-6, abs=1e-9 * c_b.norm().item())


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 10_000))
def test_coral_transform_bound_property(rank_a, rank_b, seed):
    c_a, c_b = random_psd(seed, 7, rank_a), random_psd(seed + 1, 7, rank_b)
    bound = eckart_young_residual(c_a, c_b)
    ours = residual(F.coral_transform(c_a, c_b), c_a, c_b)
    assert ours == pytest.approx(bound, rel=1e-6, abs=1e-9 * c_b.norm().item())


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


def test_coral_transform_hand_case_and_dtype():
    c_a = torch.diag(torch.tensor([4.0, 1.0, 0.0]))
    c_b = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    a = F.coral_transform(c_a, c_b)
    assert a.dtype == torch.float32
    # Best rank-2 approximation of c_b keeps eigenvalues 3 and 2.
    torch.testing.assert_close(a.T @ c_a @ a, torch.diag(torch.tensor([0.0, 2.0, 3.0])))
    assert F.coral_transform(c_a.double(), c_b.double()).dtype == torch.float64


def test_coral_transform_aligns_features_in_practice():
    x_a, x_b = features(30, 200, 4), features(31, 200, 4) @ features(32, 4, 4)
    a = F.coral_transform(F.covariance(x_a), F.covariance(x_b))
    assert F.covariance_alignment_loss(x_a @ a, x_b).item() < 1e-20


@pytest.mark.parametrize(
    ("c_a", "c_b", "kwargs", "match"),
    [
        (torch.eye(3), torch.eye(2), {}, "c_b: expected shape"),
        (torch.ones(3, 2), torch.eye(3), {}, "c_a: expected shape"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), {}, "c_a: expected a symmetric"),
        (torch.eye(2), -torch.eye(2), {}, "c_b: expected a positive semi-definite"),
        (torch.eye(2), torch.full((2, 2), math.nan), {}, "c_b: expected finite"),
        (torch.eye(2), torch.eye(2), {"eps": -1.0}, "eps"),
    ],
)
def test_coral_transform_errors(c_a, c_b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.coral_transform(c_a, c_b, **kwargs)
