"""The unbiased estimator, the sampling-floor diagnostic and their agreement with definitions."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deepalign
from deepalign import functional as F

f64 = torch.float64


def rows(seed: int, n: int, d: int, *, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=f64) * scale + shift


# ---------------------------------------------------------------- definitions, by brute force


def u_trace_sq(x: torch.Tensor) -> torch.Tensor:
    """tr(Σ²) by its definition as a U-statistic: 1/4 E[((x_i - x_j)ᵀ(x_k - x_l))²] over
    ordered distinct i, j, k, l (unbiased for every distribution with finite 4th moments)."""
    quads = list(itertools.permutations(range(x.shape[0]), 4))
    return sum(((x[i] - x[j]) @ (x[k] - x[m])) ** 2 for i, j, k, m in quads) / (4 * len(quads))


def u_paired_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖Σ_a - Σ_b‖² from paired rows: the U-statistic whose kernel uses distinct samples only,
    so that the a-rows and b-rows of a term come from independent samples."""
    quads = list(itertools.permutations(range(a.shape[0]), 4))
    total = 0.0
    for i, j, k, m in quads:
        da, db, ea, eb = a[i] - a[j], b[i] - b[j], a[k] - a[m], b[k] - b[m]
        total = total + (da @ ea) ** 2 + (db @ eb) ** 2 - 2 * (da @ eb) ** 2
    return total / (4 * len(quads))


@pytest.mark.parametrize(("n", "d"), [(4, 3), (5, 2), (6, 8), (7, 5)])
@pytest.mark.parametrize("method", ["dense", "gram"])
def test_unbiased_equals_its_u_statistic_definition(n, d, method):
    a = rows(n, n, d, scale=2, shift=1)
    b = 0.7 * a + rows(n + 1, n, d)  # correlated with a: paired modalities of one batch
    paired = F.covariance_alignment_loss(a, b, estimator="unbiased", method=method)
    torch.testing.assert_close(paired * 4 * d * d, u_paired_distance(a, b), rtol=1e-10, atol=1e-10)
    independent = u_trace_sq(a) + u_trace_sq(b) - 2 * (torch.cov(a.T) * torch.cov(b.T)).sum()
    ours = F.covariance_alignment_loss(a, b, estimator="unbiased", method=method, paired=False)
    torch.testing.assert_close(ours * 4 * d * d, independent, rtol=1e-10, atol=1e-10)


def test_unbiased_independent_form_with_unequal_rows_equals_definition():
    a, b = rows(0, 5, 3), rows(1, 7, 3) * 1.5
    expected = u_trace_sq(a) + u_trace_sq(b) - 2 * (torch.cov(a.T) * torch.cov(b.T)).sum()
    for method in ("dense", "gram"):
        ours = F.covariance_alignment_loss(a, b, estimator="unbiased", method=method)
        torch.testing.assert_close(ours * 36, expected, rtol=1e-10, atol=1e-10)


def test_paired_estimate_of_identical_inputs_is_exactly_zero_and_independent_one_is_not():
    a = rows(2, 9, 4)
    assert F.covariance_alignment_loss(a, a.clone(), estimator="unbiased").item() == 0.0
    independent = F.covariance_alignment_loss(a, a.clone(), estimator="unbiased", paired=False)
    assert independent.item() < 0  # its cross term assumes independent rows: biased here


def test_floor_is_plugin_minus_unbiased_and_hand_value_for_one_side():
    a, b = rows(3, 8, 3), rows(4, 6, 3)
    diag = F.alignment_diagnostics(a, b)
    torch.testing.assert_close(diag.floor, diag.plugin - diag.unbiased)
    # independent batches: the floor is each side's ‖C‖² minus the U-statistic of tr Σ²
    floors = [(torch.cov(x.T) ** 2).sum() - u_trace_sq(x) for x in (a, b)]
    torch.testing.assert_close(diag.floor * 36, sum(floors), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(diag.scale_a, torch.cov(a.T).trace() / 3)
    torch.testing.assert_close(diag.scale_b, torch.cov(b.T).trace() / 3)
    assert diag.plugin.requires_grad is False


# ---------------------------------------------------------------- Monte Carlo


def draw(kind: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(*shape, generator=g, dtype=f64)
    if kind == "student_t10":  # heavy tails, finite fourth moment
        z = torch.randn(*shape, generator=g, dtype=f64)
        chi2 = torch.randn(*shape[:-1], 10, generator=g, dtype=f64).square().sum(-1, keepdim=True)
        return z / (chi2 / 10).sqrt()
    return -torch.rand(*shape, generator=g, dtype=f64).log()  # exponential: skewed


def monte_carlo(estimator, paired, a, b):
    values = torch.func.vmap(
        lambda x, y: F.covariance_alignment_loss(x, y, estimator=estimator, paired=paired)
    )(a, b)
    return values.mean().item(), values.std().item() / len(values) ** 0.5, values.std().item()


@pytest.mark.parametrize("n", [4, 16, 64])
@pytest.mark.parametrize("d", [8, 64])
@pytest.mark.parametrize("kind", ["gaussian", "student_t10", "exponential"])
def test_monte_carlo_same_distribution_unbiased_mean_is_zero_plugin_shows_floor(n, d, kind):
    g = torch.Generator().manual_seed(1000 * n + d)
    draws = 1000
    a, b = draw(kind, (draws, n, d), g), draw(kind, (draws, n, d), g)
    plug_mean, plug_se, plug_sd = monte_carlo("plugin", None, a, b)
    assert plug_mean > 10 * plug_se  # the floor: far above the true distance, 0
    for paired in (False, True):  # independent draws: both forms are unbiased
        mean, se, sd = monte_carlo("unbiased", paired, a, b)
        assert abs(mean) < 3 * se, (paired, mean, se)
        assert sd <= plug_sd


@pytest.mark.parametrize("n", [4, 16, 64])
@pytest.mark.parametrize("kind", ["gaussian", "exponential"])
def test_monte_carlo_known_shift(n, kind):
    d, draws = 8, 1000
    g = torch.Generator().manual_seed(n)
    scales = torch.linspace(0.5, 2.0, d, dtype=f64)
    a = draw(kind, (draws, n, d), g)
    b = draw(kind, (draws, n, d), g) * scales
    variance = 1.0  # both distributions have unit variance per column before scaling
    truth = ((variance - variance * scales**2) ** 2).sum().item() / (4 * d * d)
    mean, se, sd = monte_carlo("unbiased", False, a, b)
    assert abs(mean - truth) < 3 * se, (mean, truth, se)
    plug_mean, plug_se, plug_sd = monte_carlo("plugin", None, a, b)
    assert plug_mean - truth > 3 * plug_se
    assert sd <= plug_sd


def test_monte_carlo_paired_correlated_modalities():
    """Two modalities of one sample, correlated: the paired form stays unbiased, the form that
    assumes independent batches does not (the reason ``paired`` exists)."""
    n, d, draws = 16, 8, 1000
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(draws, n, d, generator=g, dtype=f64)
    a = shared + 0.5 * torch.randn(draws, n, d, generator=g, dtype=f64)
    b = shared * 1.2 + 0.3 * torch.randn(draws, n, d, generator=g, dtype=f64)
    truth = ((1.25 - (1.44 + 0.09)) ** 2 * d) / (4 * d * d)
    mean, se, _ = monte_carlo("unbiased", True, a, b)
    assert abs(mean - truth) < 3 * se
    wrong, wrong_se, _ = monte_carlo("unbiased", False, a, b)
    assert abs(wrong - truth) > 10 * wrong_se


# ---------------------------------------------------------------- options and errors


def test_unbiased_needs_four_rows_and_says_so():
    with pytest.raises(ValueError, match=r"x_a: expected at least 4 rows .*unbiased"):
        F.covariance_alignment_loss(rows(0, 3, 2), rows(1, 5, 2), estimator="unbiased")
    F.covariance_alignment_loss(rows(0, 3, 2), rows(1, 5, 2))  # the plug-in needs 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"estimator": "mle"}, ValueError, "estimator: expected one of"),
        ({"method": "fast"}, ValueError, "method: expected one of"),
        ({"paired": 1}, TypeError, "paired: expected True, False or None"),
        ({"validate": "yes"}, TypeError, "validate: expected True, False or None"),
        ({"paired": True, "estimator": "unbiased"}, ValueError, "paired: True needs"),
    ],
)
def test_option_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        F.covariance_alignment_loss(rows(0, 6, 3), rows(1, 7, 3), **kwargs)


def test_unbiased_in_low_precision_and_autocast_is_float32():
    a, b = rows(5, 32, 6).float(), rows(6, 32, 6).float() * 2
    exact = F.covariance_alignment_loss(a.double(), b.double(), estimator="unbiased")
    half = F.covariance_alignment_loss(a.bfloat16(), b.bfloat16(), estimator="unbiased")
    assert half.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = F.covariance_alignment_loss(a, b, estimator="unbiased")
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(exact.item(), rel=1e-4)


@settings(deadline=None, max_examples=30)
@given(
    st.integers(4, 12), st.integers(1, 10), st.integers(0, 10**6), st.sampled_from([None, False])
)
def test_unbiased_dense_equals_gram_and_is_shift_and_permutation_invariant(n, d, seed, paired):
    a, b = rows(seed, n, d), rows(seed + 1, n, d) * 1.3
    kw = {"estimator": "unbiased", "paired": paired}
    dense = F.covariance_alignment_loss(a, b, method="dense", **kw)
    gram = F.covariance_alignment_loss(a, b, method="gram", **kw)
    torch.testing.assert_close(dense, gram, rtol=1e-9, atol=1e-12)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    moved = F.covariance_alignment_loss(a[perm] + 5.0, b[perm] - 2.0, **kw)  # rows stay paired
    torch.testing.assert_close(moved, dense, rtol=1e-8, atol=1e-10)


def test_module_options_reach_the_functional():
    a, b = rows(8, 10, 4), rows(9, 10, 4)
    module = deepalign.CovarianceAlignmentLoss(0.5, estimator="unbiased", paired=False)
    expected = F.covariance_alignment_loss(a, b, estimator="unbiased", paired=False)
    torch.testing.assert_close(module(a, b), 0.5 * expected)
    align = deepalign.ModalityAlignment("A-V", {"audio": 4, "vision": 4}, estimator="unbiased")
    expected = F.covariance_alignment_loss(a, b, estimator="unbiased")
    torch.testing.assert_close(align({"audio": a, "vision": b}), expected)


def test_bounded_private_penalty_is_defined_for_negative_unbiased_theta():
    align = deepalign.ModalityAlignment(
        "A+V", {"audio": 3, "vision": 3}, estimator="unbiased", paired=False
    )
    a = rows(10, 6, 3).requires_grad_()
    b = rows(11, 6, 3)
    theta = F.covariance_alignment_loss(a, b, estimator="unbiased", paired=False)
    assert theta.item() < 0  # one distribution: a negative estimate is common
    value = align({"audio": a, "vision": b})
    torch.testing.assert_close(value, -theta / (1 + theta.abs()))
    assert 0 < value.item() < 1
    value.backward()
    assert torch.isfinite(a.grad).all()
    # phi is odd and its slope is -1 on both sides of 0
    t = torch.tensor([-1e-9, 1e-9], dtype=f64, requires_grad=True)
    align._private_penalty(t).sum().backward()
    torch.testing.assert_close(t.grad, torch.tensor([-1.0, -1.0], dtype=f64))


def test_module_diagnostics_match_functional():
    align = deepalign.ModalityAlignment("T-V/T+A", dict.fromkeys(("text", "audio", "vision"), 4))
    feats = {m: rows(i, 12, 4) for i, m in enumerate(("text", "audio", "vision"))}
    diagnostics = align.diagnostics(feats)
    assert sorted(diagnostics) == ["text+audio", "text-vision"]
    expected = F.alignment_diagnostics(feats["text"], feats["vision"])
    for got, want in zip(diagnostics["text-vision"], expected, strict=True):
        torch.testing.assert_close(got, want)


def test_floor_estimate_matches_the_gaussian_formula_on_average():
    """E[floor] for independent Gaussian batches is (tr Σ² + (tr Σ)²)/(N-1) per side (the issue's
    formula), in θ units divided by 4d²."""
    n, d, draws = 16, 6, 2000
    g = torch.Generator().manual_seed(3)
    scales = torch.linspace(0.5, 1.5, d, dtype=f64)
    a = torch.randn(draws, n, d, generator=g, dtype=f64) * scales
    b = torch.randn(draws, n, d, generator=g, dtype=f64) * scales
    floors = torch.func.vmap(lambda x, y: F.alignment_diagnostics(x, y, paired=False).floor)(a, b)
    sigma = torch.diag(scales**2)
    expected = 2 * ((sigma @ sigma).trace() + sigma.trace() ** 2) / (n - 1) / (4 * d * d)
    se = floors.std() / draws**0.5
    assert abs(floors.mean() - expected) < 3 * se
    assert np.isfinite(floors.numpy()).all()


# ---------------------------------------------------------------- the analytic gradients


def analytic_unbiased_grad_a(a: torch.Tensor, b: torch.Tensor, paired: bool) -> torch.Tensor:
    """∂θ_u/∂M_a as written in docs/estimators.rst (θ_u = est / 4d²)."""
    n, d = a.shape
    ac, bc = a - a.mean(0), b - b.mean(0)
    c_a, c_b = ac.T @ ac / (n - 1), bc.T @ bc / (len(b) - 1)
    centre = torch.eye(n, dtype=a.dtype) - 1.0 / n
    r_a = torch.diag(ac.square().sum(1))
    den = n * (n - 2) * (n - 3)
    if not paired:
        floor_grad = (
            4
            * (n * centre @ r_a @ ac - c_a.trace() * ac - (n + 1) * (n - 2) * ac @ c_a / (n - 1))
            / den
        )
        return (4 * ac @ (c_a - c_b) / (n - 1) - floor_grad) / (4 * d * d)
    c_ab = ac.T @ bc / (n - 1)
    s = torch.diag((ac * bc).sum(1))
    est_grad = (
        4
        * (
            (n - 1) * (n - 2) * ac @ (c_a - c_b)
            + ac @ c_b
            - bc @ c_ab
            + c_a.trace() * ac
            - c_ab.trace() * bc
            - n * centre @ (r_a @ ac - s @ bc)
        )
        / den
    )
    return est_grad / (4 * d * d)


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize(("n", "d"), [(6, 3), (9, 5)])
def test_analytic_gradient_of_the_unbiased_estimator_equals_autograd(paired, n, d):
    a = rows(20 + n, n, d, scale=1.5, shift=2).requires_grad_()
    b = 0.5 * a.detach() + rows(21 + n, n, d)
    F.covariance_alignment_loss(a, b, estimator="unbiased", paired=paired).backward()
    torch.testing.assert_close(a.grad, analytic_unbiased_grad_a(a.detach(), b, paired))
