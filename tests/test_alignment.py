"""deepalign.CovarianceAlignmentLoss, deepalign.ModalityAlignment and the Table II notation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deepalign
from deepalign import CovarianceAlignmentLoss, FixedProjection, ModalityAlignment, parse_spec
from deepalign import _kernels as K
from deepalign import functional as F

NAMES = ["text", "audio", "vision"]
TABLE_II = [
    "V-A", "T-A", "T-V", "V+A", "T+A", "T+V", "T-V/T-A", "T+V/T+A", "T+V/T-A", "T-V/T+A",
    "T-A/V-A", "T-V/V+A", "T-A/V+A", "T-V/T-A/A-V", "T+A/T+V/A+V", "T-A/T-V/V+A",
]  # fmt: skip
LETTER = {"T": "text", "A": "audio", "V": "vision"}


def batch(seed: int, n: int = 12, widths=(4, 4, 4), dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(n, w, generator=g, dtype=dtype) * (i + 1)
        for i, (name, w) in enumerate(zip(NAMES, widths, strict=True))
    }


# ---------------------------------------------------------------- parse_spec


@pytest.mark.parametrize("spec", TABLE_II)
def test_every_table_ii_row_parses(spec):
    terms = parse_spec(spec, NAMES)
    written = spec.split("/")
    assert len(terms) == len(written)
    for term, text in zip(terms, written, strict=True):
        assert term.private == ("+" in text)
        assert (term.first, term.second) == (LETTER[text[0]], LETTER[text[2]])


def test_full_names_and_custom_aliases():
    assert str(parse_spec("audio-vision", NAMES)[0]) == "audio-vision"
    terms = parse_spec("F-A", ["fusion", "audio"], aliases={"F": "fusion", "A": "audio"})
    assert (terms[0].first, terms[0].second) == ("fusion", "audio")


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("V-", ValueError, "expected terms like"),
        ("", ValueError, "expected terms like"),
        ("V-A/", ValueError, "expected terms like"),
        ("VA", ValueError, "expected terms like"),
        ("V*A", ValueError, "expected terms like"),
        ("V-A-T", ValueError, "expected terms like"),
        ("V-V", ValueError, "pairs 'vision' with itself"),
        ("V-X", ValueError, "unknown modality 'X'"),
        ("v-a", ValueError, "unknown modality 'v'"),
        ("V-A/A-V", ValueError, "appears twice"),
        ("V-A/V+A", ValueError, "appears twice"),
        (3, TypeError, "spec: expected a str"),
    ],
)
def test_malformed_specs(spec, error, match):
    with pytest.raises(error, match=match):
        parse_spec(spec, NAMES)


# ---------------------------------------------------------------- CovarianceAlignmentLoss


def test_loss_module_equals_functional_times_weight():
    x = batch(0)
    module = CovarianceAlignmentLoss(weight=2.5)
    expected = 2.5 * F.covariance_alignment_loss(x["audio"], x["vision"])
    torch.testing.assert_close(module(x["audio"], x["vision"]), expected)
    assert CovarianceAlignmentLoss()(x["audio"], x["audio"]).item() == 0.0


def test_loss_module_gradcheck():
    x_a, x_b = batch(1)["audio"].requires_grad_(), batch(2)["vision"].requires_grad_()
    assert torch.autograd.gradcheck(CovarianceAlignmentLoss(weight=0.5), (x_a, x_b))


def test_fixed_projection_is_orthonormal_buffer_not_parameter():
    module = CovarianceAlignmentLoss(in_dims=(5, 20), proj_dim=8)
    assert list(module.parameters()) == []
    narrow, wide = module.projections["x_a"].weight, module.projections["x_b"].weight
    assert narrow.shape == (5, 8)
    assert wide.shape == (20, 8)
    torch.testing.assert_close(narrow @ narrow.T, torch.eye(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide.T @ wide, torch.eye(8), atol=1e-6, rtol=0)
    assert set(module.state_dict()) == {"projections.x_a.weight", "projections.x_b.weight"}


def test_projected_loss_equals_functional_on_projected_inputs():
    module = CovarianceAlignmentLoss(in_dims=(5, 20), proj_dim=8, seed=3)
    x_a, x_b = torch.randn(16, 5), torch.randn(16, 20)
    expected = F.covariance_alignment_loss(
        x_a @ module.projections["x_a"].weight, x_b @ module.projections["x_b"].weight
    )
    torch.testing.assert_close(module(x_a, x_b), expected)


def test_fixed_projection_is_deterministic_and_follows_dtype():
    first, second = FixedProjection(6, 3, seed=7), FixedProjection(6, 3, seed=7)
    torch.testing.assert_close(first.weight, second.weight)
    assert first(torch.randn(4, 6, dtype=torch.float64)).dtype == torch.float64


def test_learned_projection_warns_and_reaches_zero_when_trained_alone():
    with pytest.warns(UserWarning, match="trivial minimum"):
        module = CovarianceAlignmentLoss(in_dims=(6, 6), proj_dim=4, projection="learned")
    optimiser = torch.optim.Adam(module.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(64, 6, generator=g), 3 * torch.randn(64, 6, generator=g)
    for _ in range(300):
        optimiser.zero_grad()
        module(x_a, x_b).backward()
        optimiser.step()
    # The projections alone reach the global minimum 0, so upstream features get no signal;
    # the all-zero maps are such a minimum.
    assert module(x_a, x_b).item() < 1e-6
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    assert module(x_a, x_b).item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": float("nan")}, "weight: expected a finite number"),
        ({"in_dims": (5, 20)}, "expected both or neither"),
        ({"proj_dim": 4}, "expected both or neither"),
        ({"in_dims": (5,), "proj_dim": 4}, r"in_dims: expected \(d_a, d_b\)"),
        ({"in_dims": (5, 0), "proj_dim": 4}, "in_dims\\['x_b'\\]: expected an int >= 1"),
        ({"in_dims": (5, 6), "proj_dim": 4, "projection": "pca"}, "projection: expected one of"),
    ],
)
def test_loss_module_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CovarianceAlignmentLoss(**kwargs)


def test_loss_module_forward_errors():
    module = CovarianceAlignmentLoss(in_dims=(5, 20), proj_dim=8)
    with pytest.raises(ValueError, match=r"x_b: expected shape \(N, 20\)"):
        module(torch.randn(4, 5), torch.randn(4, 19))
    with pytest.raises(ValueError, match="x_b: expected the width of x_a"):
        CovarianceAlignmentLoss()(torch.randn(4, 5), torch.randn(4, 6))


# ---------------------------------------------------------------- ModalityAlignment


@pytest.mark.parametrize("spec", TABLE_II)
@pytest.mark.parametrize("private", ["bounded", "negated"])
def test_modality_alignment_equals_sum_of_functional_terms(spec, private):
    x = batch(3)
    module = ModalityAlignment(spec, dict.fromkeys(NAMES, 4), private=private, weight=0.7)
    total, terms = module(x, return_terms=True)
    expected = {}
    for part in spec.split("/"):
        a, sign, b = LETTER[part[0]], part[1], LETTER[part[2]]
        theta = F.covariance_alignment_loss(x[a], x[b])
        penalty = -theta if private == "negated" else -theta / (1 + theta)
        expected[f"{a}{sign}{b}"] = penalty if sign == "+" else theta
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], 0.7 * value)  # contributions: weighted
    torch.testing.assert_close(total, 0.7 * sum(expected.values()))
    torch.testing.assert_close(sum(terms.values()), total)


@pytest.mark.parametrize("rows", [12, 3])  # 3 + 3 < d = 8: the Gram form
def test_each_modality_statistics_computed_once(monkeypatch, rows):
    calls = []

    def counting(x):  # every path centres each input through this one helper
        calls.append(tuple(x.shape))
        return original(x)

    original = K._subtract_mean
    monkeypatch.setattr(K, "_subtract_mean", counting)
    widths = dict(zip(NAMES, (8, 9, 10), strict=True))
    ModalityAlignment("T-V/T-A/A-V", widths, proj_dim=8)(batch(4, rows, widths=(8, 9, 10)))
    assert sorted(calls) == [(rows, 8)] * 3


def summed_analytic_grads(x: dict, pairs: list) -> dict:
    """Per input, the sum over pairs of covariance_alignment_grad (the reference gradient)."""
    total = dict.fromkeys(x, 0)
    for a, b in pairs:
        g_a, g_b = F.covariance_alignment_grad(x[a], x[b])
        total[a] = total[a] + g_a
        total[b] = total[b] + g_b
    return total


def test_modality_alignment_gradients_match_sum_of_terms():
    x = {k: v.requires_grad_() for k, v in batch(5).items()}
    ModalityAlignment("T-V/T-A/A-V", dict.fromkeys(NAMES, 4))(x).backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    expected = summed_analytic_grads(
        x, [("text", "vision"), ("text", "audio"), ("audio", "vision")]
    )
    for name in NAMES:
        torch.testing.assert_close(grads[name], expected[name])


def test_modality_alignment_gradcheck_with_private_term():
    x = {k: v[:6].requires_grad_() for k, v in batch(6).items()}
    module = ModalityAlignment("T-V/V+A", dict.fromkeys(NAMES, 4))

    def loss(text, audio, vision):
        return module({"text": text, "audio": audio, "vision": vision})

    assert torch.autograd.gradcheck(loss, (x["text"], x["audio"], x["vision"]))


@settings(deadline=None, max_examples=30)
@given(st.floats(1e-3, 1e3), st.integers(0, 1000))
def test_bounded_private_term_cannot_run_away(scale, seed):
    x = batch(seed)
    x["audio"] = x["audio"] * scale
    bounded = ModalityAlignment("T+A", dict.fromkeys(NAMES, 4))(x)
    negated = ModalityAlignment("T+A", dict.fromkeys(NAMES, 4), private="negated")(x)
    assert -1.0 < bounded.item() <= 0.0
    assert negated.item() <= bounded.item()


def test_projection_to_common_width_and_unused_keys_ignored():
    x = batch(7, widths=(8, 5, 20))
    x["labels"] = torch.zeros(12)
    module = ModalityAlignment("V-A", {"text": 8, "audio": 5, "vision": 20}, proj_dim=6)
    assert set(module.projections) == {"vision", "audio"}
    expected = F.covariance_alignment_loss(
        x["vision"] @ module.projections["vision"].weight.double(),
        x["audio"] @ module.projections["audio"].weight.double(),
    )
    torch.testing.assert_close(module(x), expected)


def test_modality_alignment_unequal_batch_sizes():
    x = batch(8)
    x["audio"] = x["audio"][:5]
    expected = F.covariance_alignment_loss(x["vision"], x["audio"])
    torch.testing.assert_close(ModalityAlignment("V-A", dict.fromkeys(NAMES, 4))(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_modality_alignment_dtype_follows_input(dtype):
    x = batch(9, dtype=dtype)
    result = torch.float32 if dtype == torch.bfloat16 else dtype
    assert ModalityAlignment("T-A", dict.fromkeys(NAMES, 4))(x).dtype == result


@pytest.mark.parametrize(
    ("spec", "dims", "kwargs", "match"),
    [
        ("V-A", {"audio": 5, "vision": 20}, {}, "different widths"),
        ("V-A", {"audio": 4, "vision": 4}, {"private": "clipped"}, "private: expected one of"),
        ("V-Q", {"audio": 4, "vision": 4}, {}, "unknown modality 'Q'"),
        ("V-A", {"audio": 4, "vision": 4}, {"weight": -1.0}, "private term"),
        ("V-A", {"audio": 4, "vision": 4}, {"estimator": "mle"}, "estimator: expected one of"),
        ("V-A", {"audio": 4, "vision": 4}, {"method": "fast"}, "method: expected one of"),
        ("V-A", {"audio": 4, "vision-hd": 4}, {}, "spec's syntax"),
        ("V-A", {"audio": 4, "my vision": 4}, {}, "spec's syntax"),
        ("V-A", {"audio": 4, "a/v": 4}, {}, "spec's syntax"),
        ("V-A", {"audio+": 4, "vision": 4}, {}, "spec's syntax"),
    ],
)
def test_modality_alignment_construction_errors(spec, dims, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModalityAlignment(spec, dims, **kwargs)


def test_modality_alignment_forward_errors():
    module = ModalityAlignment("V-A", {"audio": 4, "vision": 4})
    x = batch(10)
    with pytest.raises(ValueError, match=r"missing \['audio'\]"):
        module({"vision": x["vision"]})
    with pytest.raises(ValueError, match=r"audio: expected shape \(N, 4\)"):
        module({"vision": x["vision"], "audio": torch.randn(12, 3)})
    with pytest.raises(ValueError, match="audio: expected finite"):
        module({"vision": x["vision"], "audio": torch.full((12, 4), float("nan"))})
    with pytest.raises(ValueError, match="one device"):
        module({"vision": x["vision"], "audio": torch.ones(12, 4, device="meta")})
    with pytest.raises(TypeError, match="features: expected a mapping"):
        module([x["vision"], x["audio"]])


def test_public_names_exported():
    from deepalign import alignment, model, ulgm

    for name, home in [
        ("CovarianceAlignmentLoss", alignment),
        ("ModalityAlignment", alignment),
        ("FixedProjection", alignment),
        ("parse_spec", alignment),
        ("MultiTaskMSA", model),
        ("ULGM", ulgm),
    ]:
        assert name in deepalign.__all__
        assert getattr(deepalign, name) is getattr(home, name)  # the same object, re-exported
    namespace: dict = {}
    exec("from deepalign import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} | {"__version__"} == set(
        deepalign.__all__
    )


@pytest.mark.parametrize("n", [5, 40])  # 5 + 5 < 64: Gram path; 40 + 40 >= 64: covariances
def test_pairwise_losses_on_both_paths_equal_single_losses(n):
    x = {k: v.requires_grad_() for k, v in batch(11, n=n, widths=(64, 64, 64)).items()}
    pairs = [("text", "vision"), ("text", "audio"), ("audio", "vision")]
    thetas = F.pairwise_alignment_losses(x, pairs)
    torch.stack(thetas).sum().backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    for (a, b), theta in zip(pairs, thetas, strict=True):
        torch.testing.assert_close(theta, F.covariance_alignment_loss(x[a], x[b]))
    expected = summed_analytic_grads(x, pairs)
    for name in NAMES:
        torch.testing.assert_close(grads[name], expected[name])


def test_wide_modality_alignment_gradcheck():
    x = {k: v.requires_grad_() for k, v in batch(12, n=3, widths=(8, 8, 8)).items()}
    module = ModalityAlignment("T-V/V+A", dict.fromkeys(NAMES, 8))

    def loss(text, audio, vision):
        return module({"text": text, "audio": audio, "vision": vision})

    assert torch.autograd.gradcheck(loss, (x["text"], x["audio"], x["vision"]))


def test_fused_pairwise_losses_gradcheck_with_unequal_rows_and_unused_terms():
    g = torch.Generator().manual_seed(14)
    shapes = {"text": (7, 4), "audio": (9, 4), "vision": (6, 4)}  # N >= d: the fused kernel
    x = {k: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for k, s in
         shapes.items()}  # fmt: skip
    pairs = [("text", "vision"), ("audio", "text"), ("audio", "vision")]

    def weighted(text, audio, vision):
        thetas = F.pairwise_alignment_losses(
            {"text": text, "audio": audio, "vision": vision}, pairs
        )
        return 2.0 * thetas[0] - 0.5 * thetas[1]  # the third term gets no gradient at all

    assert torch.autograd.gradcheck(weighted, tuple(x.values()))
    thetas = F.pairwise_alignment_losses(x, pairs)
    for (a, b), theta in zip(pairs, thetas, strict=True):
        torch.testing.assert_close(theta, F.covariance_alignment_loss(x[a], x[b]))


def test_fused_pairwise_losses_of_identical_inputs_are_exactly_zero():
    x = torch.randn(10, 4) * 1e3 + 1e4
    thetas = F.pairwise_alignment_losses(
        {"a": x, "b": x.clone(), "c": x * 2}, [("a", "b"), ("a", "c")]
    )
    assert thetas[0].item() == 0.0
    c = torch.cov(x.double().T)  # θ(x, 2x) = ‖C - 4C‖² / 4d² = 9‖C‖² / 64
    assert thetas[1].item() == pytest.approx((9 * c.square().sum() / 64).item(), rel=1e-4)


def test_pairwise_losses_errors():
    x = batch(13)
    with pytest.raises(ValueError, match="pairs: expected two different names"):
        F.pairwise_alignment_losses(x, [("text", "text")])
    with pytest.raises(ValueError, match=r"missing \['speech'\]"):
        F.pairwise_alignment_losses(x, [("text", "speech")])
    x["audio"] = x["audio"][:, :3]
    with pytest.raises(ValueError, match="expected one width for all paired inputs"):
        F.pairwise_alignment_losses(x, [("text", "audio")])
    x["audio"] = torch.full((12, 4), float("inf"), dtype=torch.float64)
    with pytest.raises(ValueError, match="audio: expected finite"):
        F.pairwise_alignment_losses(x, [("text", "audio")])
