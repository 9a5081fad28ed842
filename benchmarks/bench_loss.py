"""Covariance alignment loss, forward + backward in float32: deepalign against the usual forms.

For every batch size N (rows of each input) and width d, one call computes the loss
θ = ‖C_a − C_b‖²_F / (4d²) of two (N, d) inputs and its gradient with respect to both
(``torch.autograd.grad``, so no ``.grad`` accumulation is timed). Variants:

- ``deepalign``: :func:`deepalign.functional.covariance_alignment_loss` (its Gram path when
  2N < d, the centred d×d path with a one-matmul backward otherwise);
- ``onepass`` (a): the literal one-pass Eq. 12 under autograd,
  C = (MᵀM − (1ᵀM)ᵀ(1ᵀM)/N)/(N − 1), as most public CORAL implementations write it;
- ``torch_cov`` (b): ``torch.cov`` under autograd;
- ``unbiased`` and ``unbiased_indep``: the same call with ``estimator="unbiased"``, for paired
  rows (the default with equal row counts: one more ``d×d`` product, the cross-covariance) and
  with ``paired=False`` (independent batches: only row norms more than the plug-in);
- ``floor`` (c): the matrix products alone, on pre-centred inputs and a fixed d×d matrix D:
  X̃ᵀX̃ for both inputs (forward) and X̃·D for both (backward) (on a GPU: the cuBLAS GEMMs);
- ``pytorch_adapt``: ``pytorch_adapt.layers.CORALLoss`` (the one-pass form under autograd),
  when the package is installed (``pip install --no-deps pytorch-adapt
  pytorch-metric-learning``: its own requirements pin another torch); absent, the report says
  so and its column reads ``n/a``.

Besides the grid SIZES × WIDTHS, the cases EXTRA (4096×512: the issue 21 target against
pytorch-adapt at a large batch) run in the full mode.

Reported: median time and IQR, peak memory (see ``common.py``), and each variant's time and
memory as ratios to (a) and to (c).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import torch

from deepalign.functional import covariance_alignment_loss

SIZES = (32, 256, 4096)
WIDTHS = (16, 128, 1024)
QUICK_SIZES = (32, 256)
QUICK_WIDTHS = (16, 128)
EXTRA = ((4096, 512),)
VARIANTS = (
    "deepalign",
    "unbiased",
    "unbiased_indep",
    "onepass",
    "torch_cov",
    "floor",
    "pytorch_adapt",
)
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def onepass_covariance(m: torch.Tensor) -> torch.Tensor:
    """Eq. 12 as printed: C = (MᵀM − (1ᵀM)ᵀ(1ᵀM)/N)/(N − 1)."""
    n = m.shape[0]
    s = m.sum(dim=0, keepdim=True)
    return (m.mT @ m - s.mT @ s / n) / (n - 1)


def distance(c_a: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
    """θ = ‖C_a − C_b‖²_F / (4d²)."""
    d = c_a.shape[0]
    return (c_a - c_b).square().sum() / (4 * d * d)


def onepass_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return distance(onepass_covariance(x_a), onepass_covariance(x_b))


def torch_cov_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return distance(torch.cov(x_a.mT), torch.cov(x_b.mT))


def unbiased_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return covariance_alignment_loss(x_a, x_b, estimator="unbiased")


def unbiased_independent_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return covariance_alignment_loss(x_a, x_b, estimator="unbiased", paired=False)


LOSSES: dict[str, Loss] = {
    "deepalign": covariance_alignment_loss,
    "unbiased": unbiased_loss,
    "unbiased_indep": unbiased_independent_loss,
    "onepass": onepass_loss,
    "torch_cov": torch_cov_loss,
}


def pytorch_adapt_loss() -> Loss | None:
    """pytorch-adapt's ``CORALLoss`` module, or ``None`` when the package is not installed."""
    try:
        from pytorch_adapt.layers import CORALLoss
    except ImportError:
        return None
    return CORALLoss()


def forward_backward(loss: Loss, x_a: torch.Tensor, x_b: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        return torch.autograd.grad(loss(x_a, x_b), (x_a, x_b))

    return step


def matmul_floor(x_a: torch.Tensor, x_b: torch.Tensor) -> Callable[[], object]:
    """The products a covariance loss cannot avoid: X̃ᵀX̃ forward and X̃·D backward, per input."""
    xc_a = (x_a - x_a.mean(dim=0)).detach()
    xc_b = (x_b - x_b.mean(dim=0)).detach()
    d = x_a.shape[1]
    grad = torch.randn(d, d, device=x_a.device)

    def step() -> object:
        return xc_a.mT @ xc_a, xc_b.mT @ xc_b, xc_a @ grad, xc_b @ grad

    return step


def run_case(n: int, d: int, args: Any) -> dict[str, Any]:
    generator = common.seed_everything(n * 10_000 + d)
    x_a, x_b = (torch.randn(n, d, generator=generator).to(args.device) for _ in range(2))
    x_a.requires_grad_(True)
    x_b.requires_grad_(True)
    variants = {name: forward_backward(loss, x_a, x_b) for name, loss in LOSSES.items()}
    variants["floor"] = matmul_floor(x_a, x_b)
    adapt = pytorch_adapt_loss()
    if adapt is not None:
        variants["pytorch_adapt"] = forward_backward(adapt, x_a, x_b)
    timings = common.measure(variants, args)
    result = {
        "n": n,
        "d": d,
        "path": "gram" if 2 * n < d else "dxd",
        **timings,
        "time_vs_onepass": common.ratios(timings, "onepass"),
        "time_vs_floor": common.ratios(timings, "floor"),
        "memory_vs_onepass": common.ratios(timings, "onepass", "peak_bytes"),
        "memory_vs_floor": common.ratios(timings, "floor", "peak_bytes"),
        "pytorch_adapt_over_deepalign": (
            timings["pytorch_adapt"]["median_s"] / timings["deepalign"]["median_s"]
            if "pytorch_adapt" in timings
            else None
        ),
    }
    print(
        f"N={n:>5} d={d:>5} ({result['path']}): deepalign "
        f"{common.fmt_time(timings['deepalign']['median_s'])}, "
        f"x{result['time_vs_onepass']['deepalign']:.2f} of (a), "
        f"x{result['time_vs_floor']['deepalign']:.2f} of the floor"
    )
    return result


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in results:
        time_a, time_c = r["time_vs_onepass"], r["time_vs_floor"]
        rows.append(
            [
                str(r["n"]),
                str(r["d"]),
                r["path"],
                common.fmt_time(r["deepalign"]["median_s"]),
                f"{time_a['deepalign']:.2f}",
                f"{r['deepalign']['median_s'] / r['torch_cov']['median_s']:.2f}",
                f"{time_c['deepalign']:.2f}",
                f"{time_c['onepass']:.2f}",
                common.fmt_bytes(r["deepalign"]["peak_bytes"]),
                f"{r['memory_vs_onepass']['deepalign']:.2f}",
                f"{r['unbiased']['median_s'] / r['deepalign']['median_s']:.2f}",
                f"{r['unbiased_indep']['median_s'] / r['deepalign']['median_s']:.2f}",
                "n/a"
                if r.get("pytorch_adapt_over_deepalign") is None
                else f"{r['pytorch_adapt_over_deepalign']:.2f}",
            ]
        )
    return {
        "title": "Covariance alignment loss, forward + backward (float32)",
        "columns": [
            "N",
            "d",
            "path",
            "deepalign",
            "÷ (a) one-pass",
            "÷ (b) torch.cov",
            "÷ (c) floor",
            "(a) ÷ floor",
            "peak mem",
            "mem ÷ (a)",
            "unbiased ÷ plug-in (paired)",
            "(independent)",
            "pytorch-adapt ÷ deepalign",
        ],
        "rows": rows,
        "note": "Times are medians; ratios below 1 mean deepalign is faster (or smaller). "
        "Targets: ≤ 1 against (a) and (b) everywhere, ≤ 1.5 against the floor for N ≥ 256; "
        "the unbiased estimator ≤ 1.5× the plug-in for N ≥ 256 (issue 21); deepalign ≥ 1.5× "
        "faster than pytorch-adapt's CORALLoss at 256×128 and 4096×512 (n/a: not installed).",
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    widths = sorted({r["d"] for r in results})
    fig, axes = common.subplots(len(widths))
    for ax, d in zip(axes[0], widths, strict=True):
        rows = [r for r in results if r["d"] == d]
        for name in VARIANTS:
            if not all(name in r for r in rows):
                continue
            times = [r[name]["median_s"] for r in rows]
            ax.plot([r["n"] for r in rows], times, marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="N (rows per input)", title=f"d = {d}")
    axes[0][0].set_ylabel("forward + backward time (s)")
    axes[0][0].legend()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.2, rounds=3)
    sizes, widths = (QUICK_SIZES, QUICK_WIDTHS) if args.quick else (SIZES, WIDTHS)
    cases = [(n, d) for d in widths for n in sizes]
    cases += [] if args.quick else [case for case in EXTRA if case not in cases]
    if pytorch_adapt_loss() is None:
        print("pytorch-adapt is not installed: its CORALLoss column reads n/a")
    results = [run_case(n, d, args) for n, d in cases]
    if args.plot:
        plot(results, args.plot)
    return common.report(
        "loss", args, results, summary(results), sizes=list(sizes), widths=list(widths)
    )


if __name__ == "__main__":
    main()
