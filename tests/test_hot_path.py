"""Issue 21, the loss's hot path: one checked record per call, one node per pair for the
unbiased estimator and the diagnostics, the diagnostics from the loss's own computation
(the trainer's one covariance pass per step), the width check, and the core losses on every
available device (CUDA cases marked ``cuda`` and skipped without one)."""

import pytest
import torch

import deepalign
from deepalign import ModalityAlignment, MSAConfig, MultiTaskMSA
from deepalign import functional as F
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

f64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]
PATHS = [(m, p) for m in ("dense", "gram") for p in (True, False)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device the core loss tests run on: the CPU always, CUDA when present."""
    return torch.device(request.param)


def rows(seed: int, n: int, d: int, dtype=f64, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype) * 1.5 + 0.3).to(device)


def reference(a: torch.Tensor, b: torch.Tensor, paired: bool) -> dict[str, float]:
    """The plug-in, unbiased, floor and scales in float64 on the CPU, written from the
    estimators' closed forms (docs/estimators.rst) with torch.cov and einsum: no code shared
    with deepalign's kernels."""
    a, b = a.detach().cpu().to(f64), b.detach().cpu().to(f64)
    d = a.shape[1]
    c_a, c_b = torch.cov(a.T), torch.cov(b.T)
    plugin = ((c_a - c_b) ** 2).sum() / (4 * d * d)
    xa, xb = a - a.mean(0), b - b.mean(0)
    ra, rb = torch.einsum("ij,ij->i", xa, xa), torch.einsum("ij,ij->i", xb, xb)

    def floor(n, c, r):
        q, tr, sq = (r**2).sum(), torch.trace(c), (c**2).sum()
        return (n * q - (n - 1) * tr**2 - (n + 1) * (n - 2) * sq) / (n * (n - 2) * (n - 3))

    if paired:
        n = a.shape[0]
        c_ab = xa.T @ xb / (n - 1)
        s = torch.einsum("ij,ij->i", xa, xb)
        spread = (2 * (c_a * c_b).sum() - 2 * torch.trace(c_ab @ c_ab) + torch.trace(c_a) ** 2
                  + torch.trace(c_b) ** 2 - 2 * torch.trace(c_ab) ** 2)  # fmt: skip
        fourth = (ra**2).sum() + (rb**2).sum() - 2 * (s**2).sum()
        diff = ((c_a - c_b) ** 2).sum()
        unbiased = ((n - 1) ** 2 * (n - 2) * diff + (n - 1) * spread - n * fourth) / (
            n * (n - 2) * (n - 3) * 4 * d * d
        )
    else:
        unbiased = plugin - (floor(a.shape[0], c_a, ra) + floor(b.shape[0], c_b, rb)) / (4 * d * d)
    return {"plugin": float(plugin), "unbiased": float(unbiased),
            "floor": float(plugin - unbiased), "scale_a": float(torch.trace(c_a) / d),
            "scale_b": float(torch.trace(c_b) / d)}  # fmt: skip


# ---------------------------------------------------------------- every device


@pytest.mark.parametrize("estimator", ["plugin", "unbiased"])
@pytest.mark.parametrize(("method", "paired"), PATHS)
def test_loss_value_and_gradient_on_each_device(device, estimator, method, paired):
    dtype = f64 if device.type == "cpu" else torch.float32
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == f64 else {"rtol": 2e-4, "atol": 1e-6}
    a = rows(0, 12, 7 if method == "dense" else 30, dtype, device).requires_grad_()
    b = rows(1, 12, a.shape[1], dtype, device)
    value = F.covariance_alignment_loss(a, b, estimator=estimator, method=method, paired=paired)
    assert value.device.type == device.type
    assert value.dtype == dtype
    want = reference(a, b, paired)[estimator]
    assert value.item() == pytest.approx(want, rel=tol["rtol"] * 10, abs=tol["atol"])
    (grad,) = torch.autograd.grad(value, a)
    a64 = a.detach().cpu().to(f64).requires_grad_()
    b64 = b.cpu().to(f64)
    expect = F.covariance_alignment_loss(a64, b64, estimator=estimator, method="dense",
                                         paired=paired)  # fmt: skip
    (grad64,) = torch.autograd.grad(expect, a64)
    torch.testing.assert_close(grad.cpu().to(f64), grad64, rtol=tol["rtol"] * 100, atol=1e-7)


@pytest.mark.parametrize(("method", "paired"), PATHS)
def test_diagnostics_on_each_device_equal_the_reference(device, method, paired):
    a = rows(2, 10, 6 if method == "dense" else 24, device=device)
    b = rows(3, 10, a.shape[1], device=device)
    diag = F.alignment_diagnostics(a, b, method=method, paired=paired)
    want = reference(a, b, paired)
    for name, value in diag._asdict().items():
        assert value.device.type == device.type
        assert value.item() == pytest.approx(want[name], rel=1e-9, abs=1e-13), name


# ---------------------------------------------------------------- one node, one pass


@pytest.mark.parametrize("estimator", ["plugin", "unbiased"])
@pytest.mark.parametrize(("method", "paired"), PATHS)
def test_return_diagnostics_gives_the_loss_and_todays_diagnostics(estimator, method, paired):
    x = {"t": rows(4, 9, 5), "a": rows(5, 9, 5), "v": rows(6, 9, 5)}
    if method == "gram":
        x = {k: rows(i, 9, 40) for i, k in enumerate(x)}
    pairs = [("t", "a"), ("a", "v")]
    kw = {"method": method, "paired": paired}
    losses, diags = F.pairwise_alignment_losses(x, pairs, estimator=estimator,
                                                return_diagnostics=True, **kw)  # fmt: skip
    plain = F.pairwise_alignment_losses(x, pairs, estimator=estimator, **kw)
    today = F.pairwise_alignment_diagnostics(x, pairs, **kw)
    for loss, same, diag, old, (m, n) in zip(losses, plain, diags, today, pairs, strict=True):
        torch.testing.assert_close(loss, same, rtol=1e-12, atol=1e-15)
        want = reference(x[m], x[n], paired)
        for name, value in diag._asdict().items():
            assert not value.requires_grad
            assert value.item() == pytest.approx(want[name], rel=1e-10, abs=1e-14), name
            torch.testing.assert_close(value, getattr(old, name), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", ["plugin", "unbiased"])
@pytest.mark.parametrize(("method", "paired"), PATHS)
def test_loss_with_diagnostics_is_exactly_twice_differentiable(estimator, method, paired):
    d = 4 if method == "dense" else 14

    def loss(a, b):
        values, _ = F.pairwise_alignment_losses({"a": a, "b": b}, [("a", "b")],
                                                estimator=estimator, method=method,
                                                paired=paired, return_diagnostics=True)  # fmt: skip
        return values[0]

    a, b = rows(7, 6, d).requires_grad_(), rows(8, 6, d).requires_grad_()
    assert torch.autograd.gradcheck(loss, (a, b))
    assert torch.autograd.gradgradcheck(loss, (a, b))


def test_loss_and_diagnostics_under_torch_func_and_compile():
    align = ModalityAlignment("V-A", {"audio": 5, "vision": 5}, estimator="unbiased")
    x = {"audio": rows(9, 8, 5), "vision": rows(10, 8, 5)}

    def loss(audio):
        return align.loss_and_diagnostics({"audio": audio, "vision": x["vision"]})[0]

    grad = torch.func.grad(loss)(x["audio"])
    a = x["audio"].clone().requires_grad_()
    (expect,) = torch.autograd.grad(align({"audio": a, "vision": x["vision"]}), a)
    torch.testing.assert_close(grad, expect)
    compiled = torch.compile(align.loss_and_diagnostics, backend="aot_eager", fullgraph=True)
    total, _, diag = compiled(x)
    torch.testing.assert_close(total, align(x))
    torch.testing.assert_close(diag["vision-audio"].unbiased, total)


def test_return_diagnostics_costs_one_host_read_and_none_without_validation(monkeypatch):
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    x = {"a": rows(11, 8, 6).requires_grad_(), "b": rows(12, 8, 6)}
    losses, _ = F.pairwise_alignment_losses(x, [("a", "b")], return_diagnostics=True)
    losses[0].backward()
    assert len(reads) == 1
    reads.clear()
    losses, _ = F.pairwise_alignment_losses(x, [("a", "b")], return_diagnostics=True,
                                            validate=False)  # fmt: skip
    losses[0].backward()
    assert reads == []


def test_a_non_finite_input_is_named_by_the_one_read():
    bad = rows(13, 8, 3)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="x_b: expected finite values, got 1 NaN/Inf"):
        F.covariance_alignment_loss(rows(14, 8, 3), bad, estimator="unbiased")
    with pytest.raises(ValueError, match="b: expected finite values"):
        F.pairwise_alignment_losses({"a": rows(14, 8, 3), "b": bad}, [("a", "b")],
                                    return_diagnostics=True)  # fmt: skip


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("estimator", ["plugin", "unbiased"])
def test_width_zero_is_a_value_error_naming_the_input(estimator):
    empty = torch.zeros(6, 0)
    with pytest.raises(ValueError, match=r"x_a: expected a feature width d >= 1 .*got 0"):
        F.covariance_alignment_loss(empty, empty, estimator=estimator)
    with pytest.raises(ValueError, match=r"text: expected a feature width d >= 1 .*got 0"):
        F.pairwise_alignment_losses({"text": empty, "audio": empty}, [("text", "audio")],
                                    estimator=estimator)  # fmt: skip
    with pytest.raises(ValueError, match=r"x_a: expected a feature width d >= 1"):
        F.alignment_diagnostics(empty, empty)
    with pytest.raises(ValueError, match=r"c_a: expected a \(d, d\) matrix with d >= 1, got"):
        F.covariance_distance(torch.zeros(0, 0), torch.zeros(0, 0))


def test_return_diagnostics_needs_four_rows_and_a_bool():
    x = {"a": rows(15, 3, 2), "b": rows(16, 3, 2)}
    assert len(F.pairwise_alignment_losses(x, [("a", "b")])) == 1
    with pytest.raises(ValueError, match=r"a: expected at least 4 rows .*for the diagnostics"):
        F.pairwise_alignment_losses(x, [("a", "b")], return_diagnostics=True)
    with pytest.raises(TypeError, match="return_diagnostics: expected True or False"):
        F.pairwise_alignment_losses(x, [("a", "b")], return_diagnostics=1)


# ---------------------------------------------------------------- the trainer


@pytest.mark.parametrize(("estimator", "spec"), [("plugin", "V-A"), ("unbiased", "T-V/T+A")])
def test_trainer_logs_todays_diagnostics_from_its_one_pass(monkeypatch, estimator, spec):
    """The logged θ, floor, unbiased value and scales equal alignment_diagnostics (the
    separate pass the trainer ran before) on the same step's features."""
    splits = make_synthetic("mosi", n_train=32, seed=0)
    config = MSAConfig.preset("mosi", text_mode="features", alignment=spec,
                              align_estimator=estimator)  # fmt: skip
    torch.manual_seed(0)
    model = MultiTaskMSA(config).double()
    trainer = Trainer(
        model, splits, TrainConfig.preset("mosi", max_epochs=1, accumulate_grad_batches=1)
    )
    seen = []
    original = model.alignment_loss_and_diagnostics

    def spy(outputs):
        out = original(outputs)
        seen.append((outputs, out))
        return out

    monkeypatch.setattr(model, "alignment_loss_and_diagnostics", spy)
    batch = next(iter(trainer._ordered_loader(trainer.splits["train"])))
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
             for k, v in batch.items()}  # fmt: skip
    terms = trainer._train_step(batch, epoch=1)
    ((outputs, (loss, _, _)),) = seen
    today = model.alignment_diagnostics(outputs)
    assert today
    for term in model.alignment.terms:
        d = today[str(term)]
        for field in ("plugin", "unbiased", "floor"):
            torch.testing.assert_close(terms[f"align_{term}_{field}"], getattr(d, field),
                                       rtol=1e-12, atol=1e-15)  # fmt: skip
        torch.testing.assert_close(terms[f"scale_{term.first}"], d.scale_a, rtol=1e-12, atol=0)
        torch.testing.assert_close(terms[f"scale_{term.second}"], d.scale_b, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["alignment"], loss.detach())


@pytest.mark.cuda
@CUDA
def test_cuda_training_step_without_validation_never_syncs():
    """A Trainer step (MultiTaskMSA, alignment with diagnostics, ULGM) with validation off runs
    under torch.cuda.set_sync_debug_mode("error"): any host synchronisation raises."""
    splits = make_synthetic("mosi", n_train=32, seed=0)
    config = MSAConfig.preset("mosi", text_mode="features", alignment="T-V/A-V",
                              align_estimator="unbiased")  # fmt: skip
    torch.manual_seed(0)
    train = TrainConfig.preset("mosi", max_epochs=1, accumulate_grad_batches=1)
    trainer = Trainer(MultiTaskMSA(config), splits, train, device="cuda")
    batch = next(iter(trainer._ordered_loader(trainer.splits["train"])))
    trainer._train_step(batch, epoch=1)  # warm-up: lazy initialisation may sync once
    with deepalign.validation(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            terms = trainer._train_step(batch, epoch=1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert all(v.device.type == "cuda" for v in terms.values())
