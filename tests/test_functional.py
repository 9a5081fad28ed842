"""deepalign.functional: covariance, the alignment loss, its analytic gradient, coral_transform."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import functional as F

f64 = torch.float64


def one_pass_covariance(m: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 12, literally: the one-pass form (a reference, not the implementation)."""
    n = m.shape[0]
    ones = torch.ones(1, n, dtype=m.dtype)
    s = ones @ m
    return (m.T @ m - s.T @ s / n) / (n - 1)


def one_pass_theta(m_a: torch.Tensor, m_b: torch.Tensor) -> torch.Tensor:
    d = m_a.shape[1]
    return (one_pass_covariance(m_a) - one_pass_covariance(m_b)).square().sum() / (4 * d * d)


def features(seed: int, n: int, d: int, dtype=f64, scale=1.0, shift=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) * scale + shift


shapes = st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(1, 6), st.integers(0, 999))


# ---------------------------------------------------------------- covariance


def test_covariance_matches_torch_cov_and_one_pass():
    x = features(0, 9, 4)
    torch.testing.assert_close(F.covariance(x), torch.cov(x.T))
    torch.testing.assert_close(F.covariance(x), one_pass_covariance(x))
    torch.testing.assert_close(F.covariance(x, correction=0), torch.cov(x.T, correction=0))


def test_covariance_hand_value():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=f64)  # deviations ±1, ±1
    torch.testing.assert_close(F.covariance(x), torch.full((2, 2), 2.0, dtype=f64))


def test_covariance_gradcheck():
    x = features(1, 6, 3).requires_grad_()
    assert torch.autograd.gradcheck(F.covariance, (x,))
    assert torch.autograd.gradcheck(lambda t: F.covariance(t, correction=0), (x,))


def test_covariance_backward_matches_autograd_of_one_pass():
    x = features(2, 7, 3).requires_grad_()
    weights = features(3, 3, 3)
    (F.covariance(x) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (one_pass_covariance(x) * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ([[1.0, 2.0]], TypeError, "expected a torch.Tensor"),
        (torch.ones(3, 2, dtype=torch.int64), TypeError, "floating-point"),
        (torch.ones(3), ValueError, "expected a 2-D tensor"),
        (torch.ones(2, 3, 4), ValueError, "expected a 2-D tensor"),
        (torch.ones(1, 3), ValueError, "at least 2 rows"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "x: expected finite"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "x: expected finite"),
    ],
)
def test_covariance_errors(bad, error, match):
    with pytest.raises(error, match=match):
        F.covariance(bad)


def test_covariance_bad_correction():
    with pytest.raises(TypeError, match="correction"):
        F.covariance(torch.ones(3, 2), correction=0.5)
    with pytest.raises(ValueError, match="at least 3 rows"):
        F.covariance(torch.ones(2, 2), correction=2)


def test_covariance_overflow_is_an_error_not_inf():
    x = torch.tensor([[3e19, 0.0], [-3e19, 1.0]])  # (6e19)^2 overflows float32
    with pytest.raises(ValueError, match="statistics are not finite although these features are"):
        F.covariance(x)


# ---------------------------------------------------------------- the loss: values


def test_loss_known_value():
    # C_a = diag(2, 0) and C_b = diag(0, 2): ||C_a - C_b||^2 = 8, d = 2, theta = 8 / 16.
    x_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=f64)
    x_b = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=f64)
    assert F.covariance_alignment_loss(x_a, x_b).item() == pytest.approx(0.5)


def test_covariance_distance_matches_definition():
    c_a, c_b = features(4, 3, 3), features(5, 3, 3)
    expected = ((c_a - c_b) ** 2).sum() / 36
    torch.testing.assert_close(F.covariance_distance(c_a, c_b), expected)


@settings(deadline=None, max_examples=40)
@given(shapes)
def test_loss_equals_one_pass_formula(shape):
    n_a, n_b, d, seed = shape
    x_a, x_b = features(seed, n_a, d), features(seed + 1, n_b, d)
    torch.testing.assert_close(F.covariance_alignment_loss(x_a, x_b), one_pass_theta(x_a, x_b))


# ---------------------------------------------------------------- the loss: gradients


@settings(deadline=None, max_examples=40)
@given(shapes)
def test_corrected_eq15_16_equal_autograd(shape):
    n_a, n_b, d, seed = shape
    x_a = features(seed, n_a, d).requires_grad_()
    x_b = features(seed + 1, n_b, d).requires_grad_()
    one_pass_theta(x_a, x_b).backward()  # autograd through the paper's own formula
    grad_a, grad_b = F.covariance_alignment_grad(x_a, x_b)
    torch.testing.assert_close(grad_a, x_a.grad)
    torch.testing.assert_close(grad_b, x_b.grad)


@settings(deadline=None, max_examples=25)
@given(shapes)
def test_backward_equals_analytic_gradient(shape):
    n_a, n_b, d, seed = shape
    x_a = features(seed, n_a, d).requires_grad_()
    x_b = features(seed + 1, n_b, d).requires_grad_()
    F.covariance_alignment_loss(x_a, x_b).backward()
    grad_a, grad_b = F.covariance_alignment_grad(x_a, x_b)
    torch.testing.assert_close(x_a.grad, grad_a)
    torch.testing.assert_close(x_b.grad, grad_b)


def test_printed_eq15_16_are_wrong():
    """Eq. 15 as printed cannot be evaluated; with the transpose fixed, Eq. 16's sign is off."""
    x_a, x_b = features(6, 8, 3), features(7, 8, 3)
    n, d = x_a.shape
    diff = F.covariance(x_a) - F.covariance(x_b)
    printed_left = x_a.T - (x_a.sum(0, keepdim=True).T @ torch.ones(1, n, dtype=f64)) / n
    with pytest.raises(RuntimeError):
        printed_left @ diff  # (d x N) @ (d x d): shapes do not match
    _, grad_b = F.covariance_alignment_grad(x_a, x_b)
    printed_b = (x_b - x_b.mean(0)) @ diff / (d * d * (n - 1))
    torch.testing.assert_close(printed_b, -grad_b)


@pytest.mark.parametrize(("n_a", "n_b", "d"), [(3, 4, 64), (16, 9, 512), (2, 2, 5)])
def test_gram_path_equals_covariance_path(n_a, n_b, d):
    """N_a + N_b < d takes the Gram path; covariance_distance always forms d×d matrices."""
    x_a = features(40, n_a, d, scale=2.0, shift=3.0).requires_grad_()
    x_b = features(41, n_b, d).requires_grad_()
    gram = F.covariance_alignment_loss(x_a, x_b)
    gram.backward()
    grads = x_a.grad.clone(), x_b.grad.clone()
    x_a.grad = x_b.grad = None
    dense = F.covariance_distance(F.covariance(x_a), F.covariance(x_b))
    dense.backward()
    torch.testing.assert_close(gram, dense)
    torch.testing.assert_close(grads[0], x_a.grad)
    torch.testing.assert_close(grads[1], x_b.grad)
    torch.testing.assert_close(grads, F.covariance_alignment_grad(x_a, x_b))


def test_gram_path_gradcheck_and_low_precision():
    x_a, x_b = features(42, 3, 9).requires_grad_(), features(43, 4, 9).requires_grad_()
    assert torch.autograd.gradcheck(F.covariance_alignment_loss, (x_a, x_b))
    half = F.covariance_alignment_loss(x_a.detach().half(), x_b.detach().half())
    assert half.dtype == torch.float32
    exact = F.covariance_alignment_loss(x_a.detach().half().double(), x_b.detach().half().double())
    assert half.item() == pytest.approx(exact.item(), rel=1e-5)


def test_gram_path_reports_nan_of_the_right_input():
    x_a, x_b = torch.randn(3, 40), torch.randn(3, 40)
    x_b[1, 7] = math.nan
    with pytest.raises(ValueError, match="x_b: expected finite"):
        F.covariance_alignment_loss(x_a, x_b)


def test_gradcheck_float64():
    x_a, x_b = features(8, 6, 3).requires_grad_(), features(9, 5, 3).requires_grad_()
    assert torch.autograd.gradcheck(F.covariance_alignment_loss, (x_a, x_b))


def test_grad_does_not_track_autograd():
    x_a, x_b = features(10, 5, 2).requires_grad_(), features(11, 5, 2)
    grad_a, _ = F.covariance_alignment_grad(x_a, x_b)
    assert not grad_a.requires_grad


@pytest.mark.parametrize("n", [12, 3])  # the fused d×d kernel, and the Gram form (3 + 4 < 8)
def test_gradient_of_one_input_when_the_other_is_fixed(n):
    x_a, x_b = features(1, n, 8).requires_grad_(), features(2, n + 1, 8)
    (grad_a,) = torch.autograd.grad(F.covariance_alignment_loss(x_a, x_b), (x_a,))
    torch.testing.assert_close(grad_a, F.covariance_alignment_grad(x_a, x_b)[0])


@pytest.mark.parametrize("method", ["dense", "gram"])
def test_value_without_gradient_equals_the_autograd_path(method):
    x = {name: features(i, 9, 4) for i, name in enumerate("abc")}
    pairs = [("a", "b"), ("c", "b"), ("a", "c")]
    plain = F.pairwise_alignment_losses(x, pairs, method=method)
    tracked = F.pairwise_alignment_losses(
        {name: v.clone().requires_grad_() for name, v in x.items()}, pairs, method=method
    )
    assert not any(v.requires_grad for v in plain)
    assert all(v.requires_grad for v in tracked)
    torch.testing.assert_close(torch.stack(plain), torch.stack(tracked).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["dense", "gram"])
def test_gradgradcheck_several_pairs_with_one_input_fixed(method):
    fixed = features(3, 4, 9)
    pairs = [("a", "b"), ("c", "b"), ("a", "c")]

    def weighted(x_a, x_c):  # a different incoming gradient per pair
        losses = F.pairwise_alignment_losses({"a": x_a, "b": fixed, "c": x_c}, pairs, method=method)
        return losses[0] + 2 * losses[1] - 0.5 * losses[2]

    inputs = (features(4, 4, 9).requires_grad_(), features(5, 3, 9).requires_grad_())
    dense = torch.autograd.grad(weighted(*inputs), inputs)
    reference = [  # per input, the sum over its pairs of the analytic gradient (Eq. 15-16)
        F.covariance_alignment_grad(inputs[0], fixed)[0]
        - 0.5 * F.covariance_alignment_grad(inputs[0], inputs[1])[0],
        2 * F.covariance_alignment_grad(inputs[1], fixed)[0]
        - 0.5 * F.covariance_alignment_grad(inputs[0], inputs[1])[1],
    ]
    for got, want in zip(dense, reference, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(weighted, inputs)
    assert torch.autograd.gradgradcheck(weighted, inputs)


# ---------------------------------------------------------------- properties


@settings(deadline=None, max_examples=30)
@given(shapes)
def test_zero_for_identical_inputs_and_symmetric(shape):
    n_a, n_b, d, seed = shape
    x_a, x_b = features(seed, n_a, d), features(seed + 1, n_b, d)
    assert F.covariance_alignment_loss(x_a, x_a).item() == 0.0
    torch.testing.assert_close(
        F.covariance_alignment_loss(x_a, x_b), F.covariance_alignment_loss(x_b, x_a)
    )


@settings(deadline=None, max_examples=30)
@given(shapes, st.floats(-50, 50), st.floats(-50, 50))
def test_invariant_to_shift_and_row_permutation(shape, shift_a, shift_b):
    n_a, n_b, d, seed = shape
    x_a, x_b = features(seed, n_a, d), features(seed + 1, n_b, d)
    theta = F.covariance_alignment_loss(x_a, x_b)
    perm = torch.randperm(n_a, generator=torch.Generator().manual_seed(seed))
    moved = F.covariance_alignment_loss(x_a[perm] + shift_a, x_b + shift_b)
    torch.testing.assert_close(moved, theta, rtol=1e-9, atol=1e-12)


@settings(deadline=None, max_examples=30)
@given(shapes, st.floats(0.1, 10))
def test_scaling_gives_fourth_power(shape, s):
    n_a, n_b, d, seed = shape
    x_a, x_b = features(seed, n_a, d), features(seed + 1, n_b, d)
    scaled = F.covariance_alignment_loss(s * x_a, s * x_b)
    torch.testing.assert_close(scaled, s**4 * F.covariance_alignment_loss(x_a, x_b))


@settings(deadline=None, max_examples=30)
@given(shapes)
def test_invariant_to_a_shared_rotation(shape):
    n_a, n_b, d, seed = shape
    x_a, x_b = features(seed, n_a, d), features(seed + 1, n_b, d)
    q = torch.linalg.qr(features(seed + 2, d, d)).Q
    torch.testing.assert_close(
        F.covariance_alignment_loss(x_a @ q, x_b @ q), F.covariance_alignment_loss(x_a, x_b)
    )


# ---------------------------------------------------------------- dtypes, accuracy, devices


@pytest.mark.parametrize(
    ("dtype", "result"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_result_dtype_and_gradient_dtype(dtype, result):
    x_a = features(12, 8, 3).to(dtype).requires_grad_()
    x_b = features(13, 8, 3).to(dtype)
    theta = F.covariance_alignment_loss(x_a, x_b)
    assert theta.dtype == result
    assert F.covariance(x_a).dtype == result
    theta.backward()
    assert x_a.grad.dtype == dtype


def test_mixed_dtypes_promote():
    theta = F.covariance_alignment_loss(features(0, 5, 2, torch.float32), features(1, 5, 2))
    assert theta.dtype == torch.float64


def test_float32_with_large_mean_matches_float64():
    x_a = features(14, 64, 16, torch.float32, shift=1e4)
    x_b = features(15, 64, 16, torch.float32, scale=1.5, shift=-1e4)
    exact = F.covariance_alignment_loss(x_a.double(), x_b.double())
    ours = F.covariance_alignment_loss(x_a, x_b)
    assert abs(ours.item() / exact.item() - 1) < 1e-3
    naive = one_pass_theta(x_a, x_b)  # the one-pass form loses everything here
    assert abs(naive.item() / exact.item() - 1) > 1e-1


def test_float16_of_magnitude_300_does_not_overflow():
    x_a = features(16, 256, 8, torch.float32, scale=30, shift=300).half()
    x_b = features(17, 256, 8, torch.float32, scale=20, shift=-300).half()
    assert not torch.isfinite((x_a.T @ x_a).float()).all()  # fp16 MᵀM overflows
    theta = F.covariance_alignment_loss(x_a, x_b)
    exact = F.covariance_alignment_loss(x_a.double(), x_b.double())
    assert theta.dtype == torch.float32
    assert theta.item() == pytest.approx(exact.item(), rel=1e-4)


def test_autocast_computes_statistics_in_float32():
    x_a = features(18, 32, 4, torch.float32, shift=100)
    x_b = features(19, 32, 4, torch.float32, scale=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theta = F.covariance_alignment_loss(x_a, x_b)
        c = F.covariance(x_a)
    assert theta.dtype == torch.float32
    assert c.dtype == torch.float32
    exact = F.covariance_alignment_loss(x_a.double(), x_b.double())
    assert theta.item() == pytest.approx(exact.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("x_a", "x_b", "error", "match"),
    [
        (torch.ones(1, 3), torch.ones(4, 3), ValueError, "x_a: expected at least 2 rows"),
        (torch.ones(4, 3), torch.ones(4), ValueError, "x_b: expected a 2-D tensor"),
        (torch.ones(4, 3), torch.ones(4, 2), ValueError, "x_b: expected the width of x_a"),
        (torch.ones(4, 3), torch.ones(4, 3, device="meta"), ValueError, "one device"),
        (torch.ones(4, 3), 3.0, TypeError, "x_b: expected a torch.Tensor"),
        (torch.full((4, 3), math.nan), torch.ones(4, 3), ValueError, "x_a: expected finite"),
        (torch.ones(4, 3), torch.full((4, 3), -math.inf), ValueError, "x_b: expected finite"),
    ],
)
def test_loss_and_grad_errors(x_a, x_b, error, match):
    with pytest.raises(error, match=match):
        F.covariance_alignment_loss(x_a, x_b)
    with pytest.raises(error, match=match):
        F.covariance_alignment_grad(x_a, x_b)


def test_covariance_distance_errors():
    with pytest.raises(ValueError, match="c_b: expected shape"):
        F.covariance_distance(torch.eye(3), torch.eye(2))
    with pytest.raises(ValueError, match="c_a: expected a 2-D"):
        F.covariance_distance(torch.ones(3), torch.eye(3))


def test_works_under_torch_compile():
    compiled = torch.compile(F.covariance_alignment_loss, backend="aot_eager")
    x_a = features(20, 10, 4, torch.float32).requires_grad_()
    x_b = features(21, 12, 4, torch.float32)
    theta = compiled(x_a, x_b)
    theta.backward()
    torch.testing.assert_close(theta, F.covariance_alignment_loss(x_a, x_b))
    torch.testing.assert_close(x_a.grad, F.covariance_alignment_grad(x_a, x_b)[0])


@pytest.mark.slow
def test_works_under_torch_compile_inductor():
    compiled = torch.compile(F.covariance_alignment_loss)
    x_a = features(22, 10, 4, torch.float32).requires_grad_()
    x_b = features(23, 12, 4, torch.float32)
    compiled(x_a, x_b).backward()
    torch.testing.assert_close(x_a.grad, F.covariance_alignment_grad(x_a, x_b)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_stays_on_device():
    x_a = features(24, 64, 8, torch.float32).cuda().requires_grad_()
    x_b = features(25, 48, 8, torch.float32).cuda()
    theta = F.covariance_alignment_loss(x_a, x_b)
    theta.backward()
    assert theta.device.type == "cuda"
    assert x_a.grad.device.type == "cuda"
    torch.testing.assert_close(theta.cpu(), F.covariance_alignment_loss(x_a.cpu(), x_b.cpu()))
    with torch.autocast("cuda", dtype=torch.float16):
        assert F.covariance_alignment_loss(x_a, x_b).dtype == torch.float32
