"""The losses with the rest of PyTorch: higher-order gradients, torch.func, torch.compile,
meta tensors, the validation switch, and the edge cases a new user hit."""

import contextlib

import numpy as np
import pytest
import torch

import deepalign
from deepalign import functional as F
from deepalign.alignment import ModalityAlignment

f64 = torch.float64
TABLE_II = ["V-A", "T-V/T-A", "T-V/T+A", "T+V/T-A", "T+V/T+A", "T-V/T-A/A-V", "T-V/T+A/A+V"]
PATHS = [  # (estimator, method, paired): every local path
    ("plugin", "dense", None),
    ("plugin", "gram", None),
    ("unbiased", "dense", True),
    ("unbiased", "dense", False),
    ("unbiased", "gram", True),
    ("unbiased", "gram", False),
]


def rows(seed: int, n: int, d: int, dtype=f64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


# ---------------------------------------------------------------- exact higher derivatives


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_gradcheck_and_gradgradcheck_on_every_path(estimator, method, paired):
    a, b = rows(0, 6, 5).requires_grad_(), rows(1, 6, 5).requires_grad_()

    def loss(x, y):
        return F.covariance_alignment_loss(x, y, estimator=estimator, method=method, paired=paired)

    assert torch.autograd.gradcheck(loss, (a, b))
    assert torch.autograd.gradgradcheck(loss, (a, b))


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_gradgradcheck_of_several_pairs(estimator, method, paired):
    x = {m: rows(i, 6, 4).requires_grad_() for i, m in enumerate(("text", "audio", "vision"))}
    pairs = [("text", "audio"), ("audio", "vision"), ("text", "vision")]

    def losses(*tensors):
        inputs = dict(zip(x, tensors, strict=True))
        kw = {"estimator": estimator, "method": method, "paired": paired}
        return tuple(F.pairwise_alignment_losses(inputs, pairs, **kw))

    assert torch.autograd.gradcheck(losses, tuple(x.values()))
    assert torch.autograd.gradgradcheck(losses, tuple(x.values()))


def test_gradgradcheck_of_covariance_and_module_with_private_term():
    x = rows(2, 5, 3).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: F.covariance(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: F.covariance(t, correction=0), (x,))
    align = ModalityAlignment("T-V/T+A", dict.fromkeys(("text", "audio", "vision"), 3))
    inputs = tuple(rows(i, 7, 3).requires_grad_() for i in range(3))
    assert torch.autograd.gradgradcheck(
        lambda t, a, v: align({"text": t, "audio": a, "vision": v}), inputs
    )


def gradient_penalty(loss_fn, x_a, x_b):
    """The issue's case: a gradient penalty through the alignment loss (WGAN-GP style)."""
    x_a = x_a.clone().requires_grad_()
    loss = loss_fn(x_a, x_b) + 1e-3 * x_a.square().sum()
    (g,) = torch.autograd.grad(loss, x_a, create_graph=True)
    g.square().sum().backward()
    return x_a.grad


def torch_cov_loss(x_a, x_b):
    d = x_a.shape[1]
    return (torch.cov(x_a.T) - torch.cov(x_b.T)).square().sum() / (4 * d * d)


@pytest.mark.parametrize("method", ["dense", "gram"])
def test_gradient_penalty_equals_torch_cov(method):
    x_a, x_b = rows(3, 12, 7), rows(4, 9, 7)
    expected = gradient_penalty(torch_cov_loss, x_a, x_b)
    ours = gradient_penalty(lambda a, b: F.covariance_alignment_loss(a, b, method=method), x_a, x_b)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_hessian_vector_product_equals_torch_cov():
    x_a, x_b, v = rows(5, 10, 4), rows(6, 10, 4), rows(7, 10, 4)
    _, ours = torch.autograd.functional.hvp(lambda a: F.covariance_alignment_loss(a, x_b), x_a, v)
    _, expected = torch.autograd.functional.hvp(lambda a: torch_cov_loss(a, x_b), x_a, v)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- torch.func


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_torch_func_grad_and_vmap_agree_with_eager(estimator, method, paired):
    kw = {"estimator": estimator, "method": method, "paired": paired}
    a, b = (
        torch.stack([rows(i, 6, 5) for i in range(4)]),
        torch.stack([rows(10 + i, 6, 5) for i in range(4)]),
    )
    batched = torch.func.vmap(lambda x, y: F.covariance_alignment_loss(x, y, **kw))(a, b)
    eager = torch.stack(
        [F.covariance_alignment_loss(x, y, **kw) for x, y in zip(a, b, strict=True)]
    )
    torch.testing.assert_close(batched, eager)
    grads = torch.func.vmap(torch.func.grad(lambda x, y: F.covariance_alignment_loss(x, y, **kw)))(
        a, b
    )
    for i in range(4):
        x = a[i].clone().requires_grad_()
        F.covariance_alignment_loss(x, b[i], **kw).backward()
        torch.testing.assert_close(grads[i], x.grad)
    if estimator == "plugin":
        torch.testing.assert_close(grads[0], F.covariance_alignment_grad(a[0], b[0])[0])


def test_functional_call_of_the_modules():
    loss = deepalign.CovarianceAlignmentLoss(2.0, in_dims=(3, 5), proj_dim=4, projection="fixed")
    a, b = rows(0, 8, 3), rows(1, 8, 5)
    state = {k: v.clone() * 2 for k, v in loss.state_dict().items()}  # other projections
    out = torch.func.functional_call(loss, state, (a, b))
    w_a, w_b = (state[f"projections.{n}.weight"].to(f64) for n in ("x_a", "x_b"))
    expected = 2.0 * F.covariance_alignment_loss(a @ w_a, b @ w_b)
    torch.testing.assert_close(out, expected)
    align = ModalityAlignment("T-V/T+A", dict.fromkeys(("text", "audio", "vision"), 4))
    feats = {m: rows(i, 8, 4) for i, m in enumerate(("text", "audio", "vision"))}
    torch.testing.assert_close(torch.func.functional_call(align, {}, (feats,)), align(feats))


# ---------------------------------------------------------------- torch.compile


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_compile_fullgraph_aot_eager(estimator, method, paired):
    torch._dynamo.reset()
    kw = {"estimator": estimator, "method": method, "paired": paired}

    def step(x, y):
        return F.covariance_alignment_loss(x, y, **kw)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    a, b = rows(0, 8, 6, torch.float32).requires_grad_(), rows(1, 8, 6, torch.float32)
    value = compiled(a, b)
    value.backward()
    torch.testing.assert_close(value, step(a, b))
    a2 = a.detach().clone().requires_grad_()
    step(a2, b).backward()
    torch.testing.assert_close(a.grad, a2.grad)


@pytest.mark.parametrize("n", [9, 3])  # the d×d and the Gram forms (3 + 3 < 8)
@pytest.mark.parametrize("grad", [False, True])
def test_compile_fullgraph_modality_alignment_multi_term(n, grad):
    torch._dynamo.reset()
    d = 8
    align = ModalityAlignment("T-V/T+A/A-V", dict.fromkeys(("text", "audio", "vision"), d))
    feats = {m: rows(i, n, d, torch.float32) for i, m in enumerate(("text", "audio", "vision"))}
    if grad:  # audio fixed: one input of the fused node needs no gradient
        feats = {m: x.requires_grad_(m != "audio") for m, x in feats.items()}
    compiled = torch.compile(align, backend="aot_eager", fullgraph=True)
    value = compiled(feats)
    torch.testing.assert_close(value, align(feats))
    if grad:
        got = torch.autograd.grad(value, (feats["text"], feats["vision"]))
        want = torch.autograd.grad(align(feats), (feats["text"], feats["vision"]))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y: F.covariance_alignment_loss(x, y, estimator="unbiased"), fullgraph=True
    )
    a, b = rows(0, 16, 6, torch.float32), rows(1, 16, 6, torch.float32)
    torch.testing.assert_close(
        compiled(a, b), F.covariance_alignment_loss(a, b, estimator="unbiased")
    )


# ---------------------------------------------------------------- host synchronisations


@contextlib.contextmanager
def count_host_syncs():
    """Count the calls that bring tensor values to the host (item, tolist, bool, int, float)."""
    calls = []
    names = ("item", "tolist", "__bool__", "__int__", "__float__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    for name in names:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_validation_on_costs_one_sync_and_off_costs_none(estimator, method, paired):
    a, b = rows(0, 8, 6).requires_grad_(), rows(1, 8, 6)
    kw = {"estimator": estimator, "method": method, "paired": paired}
    with count_host_syncs() as calls:
        F.covariance_alignment_loss(a, b, **kw).backward()
    assert len(calls) == 1
    with count_host_syncs() as calls:
        F.covariance_alignment_loss(a, b, validate=False, **kw).backward()
    assert calls == []
    with deepalign.validation(False), count_host_syncs() as calls:
        ModalityAlignment("T-V/T+A", dict.fromkeys(("text", "audio", "vision"), 6), **kw)(
            {"text": a, "audio": b, "vision": b * 2}
        ).backward()
    assert calls == []
    assert deepalign.is_validation_enabled()


def test_validation_off_skips_the_nan_check_but_not_shape_checks():
    bad = torch.full((4, 3), float("nan"))
    with pytest.raises(ValueError, match="x_a: expected finite"):
        F.covariance_alignment_loss(bad, torch.ones(4, 3))
    assert F.covariance_alignment_loss(bad, torch.ones(4, 3), validate=False).isnan()
    with deepalign.validation(False), pytest.raises(ValueError, match="x_b: expected the width"):
        F.covariance_alignment_loss(torch.ones(4, 3), torch.ones(4, 2))
    with pytest.raises(TypeError, match="enabled: expected True or False"):
        deepalign.set_validation(1)


# ---------------------------------------------------------------- meta tensors


@pytest.mark.parametrize(("estimator", "method", "paired"), PATHS)
def test_meta_tensors_give_shape_and_dtype(estimator, method, paired):
    a = torch.empty(8, 6, device="meta", dtype=torch.float16)
    b = torch.empty(8, 6, device="meta", dtype=torch.float16)
    kw = {"estimator": estimator, "method": method, "paired": paired}
    value = F.covariance_alignment_loss(a, b, **kw)
    assert (value.shape, value.dtype, value.device.type) == ((), torch.float32, "meta")
    c = F.covariance(torch.empty(5, 3, device="meta", dtype=f64))
    assert (c.shape, c.dtype, c.device.type) == ((3, 3), f64, "meta")
    align = ModalityAlignment("A-V", {"audio": 6, "vision": 6}, estimator=estimator)
    assert align({"audio": a, "vision": b}).device.type == "meta"


# ---------------------------------------------------------------- the bugs a new user hit


LETTERS = {"T": "text", "A": "audio", "V": "vision"}


@pytest.mark.parametrize("spec", TABLE_II)
@pytest.mark.parametrize("keys", ["letters", "names", "own"])
def test_every_table_ii_row_with_letters_names_or_own_keys(spec, keys):
    own = {"T": "words", "A": "voice", "V": "face"}
    key = {"letters": {k: k for k in LETTERS}, "names": LETTERS, "own": own}[keys]
    dims = {key[letter]: 4 for letter in LETTERS}
    aliases = own if keys == "own" else deepalign.alignment.DEFAULT_ALIASES
    align = ModalityAlignment(spec, dims, aliases=aliases)
    feats = {key[letter]: rows(i, 8, 4) for i, letter in enumerate(LETTERS)}
    expected = [
        (key[part[0]], part[1], key[part[2]]) for part in spec.split("/")
    ]  # token -> its own key
    assert [(t.first, "+" if t.private else "-", t.second) for t in align.terms] == expected
    assert torch.isfinite(align(feats))


def test_weight_accepts_numbers_numpy_and_tensors_and_rejects_bools():
    for weight in (2, 2.0, np.float32(2.0), np.int64(2), torch.tensor(2.0)):
        assert deepalign.CovarianceAlignmentLoss(weight).weight == 2.0
    for weight in (True, False, np.bool_(True), "2", torch.ones(2), torch.tensor(True)):
        with pytest.raises(TypeError, match="weight: expected a real number"):
            deepalign.CovarianceAlignmentLoss(weight)
    with pytest.raises(ValueError, match="private term of ModalityAlignment"):
        deepalign.CovarianceAlignmentLoss(-0.1)


def test_one_row_batch_error_suggests_drop_last():
    with pytest.raises(ValueError, match="drop_last=True"):
        F.covariance_alignment_loss(torch.ones(1, 3), torch.ones(4, 3))
    align = ModalityAlignment("A-V", {"audio": 3, "vision": 3})
    with pytest.raises(ValueError, match=r"audio: .*drop_last=True"):
        align({"audio": torch.ones(1, 3), "vision": torch.ones(1, 3)})


def test_extra_repr_shows_every_behaviour_changing_argument():
    loss = deepalign.CovarianceAlignmentLoss(
        0.5, in_dims=(3, 5), proj_dim=4, estimator="unbiased", method="gram", sync_dist=False
    )
    text = repr(loss)
    for part in ("weight=0.5", "estimator='unbiased'", "method='gram'", "in_dims=(3, 5)",
                 "proj_dim=4", "projection='fixed'", "seed=0", "sync_dist=False"):  # fmt: skip
        assert part in text, part
    assert "in_dim=3, out_dim=4, seed=0" in text  # FixedProjection
    align = ModalityAlignment("A-V", {"audio": 3, "vision": 5}, proj_dim=3, private="negated")
    for part in ("spec='A-V'", "private='negated'", "proj_dim=3", "estimator='plugin'"):
        assert part in repr(align), part


# ---------------------------------------------------------------- the ULGM


def ulgm_batch():
    dims = {"fusion": 4, "text": 3, "audio": 2}
    ulgm = deepalign.ULGM(10, dims)
    ulgm.init_labels(torch.arange(10), torch.linspace(-2, 2, 10))
    feats = {n: rows(i, 5, d, torch.float32) for i, (n, d) in enumerate(dims.items())}
    preds = {n: rows(10 + i, 5, 1, torch.float32) for i, n in enumerate(dims)}
    return ulgm, feats, preds, torch.tensor([0, 3, 5, 7, 9])


def test_ulgm_validation_off_runs_without_host_syncs_and_gives_the_same_banks():
    ulgm, feats, preds, index = ulgm_batch()
    checked, _, _, _ = ulgm_batch()
    with count_host_syncs() as calls:
        checked.loss(preds, index)
        checked.step(feats, index, epoch=2)
    assert len(calls) >= 3  # index range, distinctness, initialised, finite features
    with deepalign.validation(False), count_host_syncs() as calls:
        ulgm.loss(preds, index)
        ulgm.step(feats, index, epoch=2)
    assert calls == []
    torch.testing.assert_close(ulgm.state_dict(), checked.state_dict())
    off = deepalign.ULGM(10, {"fusion": 2, "text": 2}, validate=False)
    assert "validate=False" in repr(off)
    with pytest.raises(TypeError, match="indexes: expected an integer tensor"):
        off.loss({"fusion": torch.ones(2), "text": torch.ones(2)}, torch.ones(2))


def test_ulgm_says_it_needs_real_tensors():
    ulgm, _, preds, index = ulgm_batch()
    meta = {n: f.to("meta") for n, f in preds.items()}
    with pytest.raises(ValueError, match="ULGM: expected real tensors, got a meta tensor"):
        ulgm.loss(meta, index.to("meta"))
