"""The plug-in alignment loss shrinks features; the unbiased estimator does not.

The alignment loss alone trains a linear map ``W`` (d×d, initialised at the identity) so that
mapped source features ``x @ W`` (rows ~ N(0, I)) match the covariance of target batches (rows
~ N(0, Σ_t), drawn independently each step, so ``paired=False``). The population optimum is any
``W`` with ``WᵀW = Σ_t``. With the plug-in θ the sampling floor of the source side,
``(tr(WᵀW)² + tr((WᵀW)²))/(N-1)``, is part of the objective and its gradient shrinks ``W``: for an
isotropic target the map settles near ``tr(S)/d = 1/(1 + (d+1)/(N-1))`` instead of 1. The
unbiased estimator has no floor.

For every batch size and estimator and seed, after training the script reports the mapped
features' scale ``tr(WᵀW)/d`` relative to the target's ``tr(Σ_t)/d`` and the relative covariance
error ``‖WᵀW − Σ_t‖_F/‖Σ_t‖_F`` (exact: the source rows are N(0, I), so the mapped covariance is
``WᵀW``), averaged over the last quarter of the steps.

    python examples/shrinkage.py                 # d = 16, N in 8 16 32 64, 3 seeds (~1 min)
    python examples/shrinkage.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

import deepalign
from deepalign.functional import ESTIMATORS, covariance_alignment_loss


def target_covariance(d: int, kind: str) -> torch.Tensor:
    if kind == "isotropic":
        return torch.eye(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    return q @ torch.diag(torch.linspace(0.25, 2.0, d, dtype=torch.float64)) @ q.T


def train(
    n: int, d: int, estimator: str, seed: int, sigma: torch.Tensor, steps: int, lr: float
) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    root = torch.linalg.cholesky(sigma)
    w = torch.eye(d, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    scales, errors = [], []
    for step in range(steps):
        source = torch.randn(n, d, generator=g, dtype=torch.float64)
        target = torch.randn(n, d, generator=g, dtype=torch.float64) @ root.T
        loss = covariance_alignment_loss(
            source @ w, target, estimator=estimator, paired=False, validate=False
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= steps * 3 // 4:
            with torch.no_grad():
                mapped = w.T @ w
                scales.append((mapped.trace() / sigma.trace()).item())
                errors.append((torch.linalg.norm(mapped - sigma) / torch.linalg.norm(sigma)).item())
    return {"scale": statistics.fmean(scales), "error": statistics.fmean(errors)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--width", type=int, default=16, help="width d of the features")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64], help="batch sizes to run"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of each batch size"
    )
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per run")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument(
        "--target",
        choices=("isotropic", "anisotropic"),
        default="isotropic",
        help="the target covariance: the identity, or one with unequal eigenvalues",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/shrinkage"), help="output folder")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the figure here")
    parser.add_argument("--quick", action="store_true", help="a smoke run (few steps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seeds, args.steps = [8, 32], [0], 200
    torch.set_num_threads(1)
    d = args.width
    sigma = target_covariance(d, args.target)
    rows = []
    for n in args.batch_sizes:
        for estimator in ESTIMATORS:
            runs = [train(n, d, estimator, s, sigma, args.steps, args.lr) for s in args.seeds]
            row = {"N": n, "estimator": estimator}
            for key in ("scale", "error"):
                values = [r[key] for r in runs]
                row[key] = statistics.fmean(values)
                row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row["predicted_plugin_scale"] = 1 / (1 + (d + 1) / (n - 1))
            rows.append(row)
            print(
                f"N={n:>3} {estimator:>8}: tr(S)/tr(Σ_t) {row['scale']:.3f} ± {row['scale_sd']:.3f}"
                f", relative covariance error {row['error']:.3f}",
                file=sys.stderr,
            )
    report = {
        "command": "python examples/shrinkage.py " + " ".join(argv or sys.argv[1:]),
        "width": d,
        "target": args.target,
        "steps": args.steps,
        "lr": args.lr,
        "seeds": args.seeds,
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, 1 thread",
        "versions": {"torch": torch.__version__, "deepalign": deepalign.__version__},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shrinkage.json").write_text(json.dumps(report, indent=2) + "\n")
    table = [
        "| N | estimator | tr(S) ÷ tr(Σ_t) | plug-in prediction | relative cov. error |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        predicted = f"{r['predicted_plugin_scale']:.3f}" if r["estimator"] == "plugin" else "1"
        table.append(
            f"| {r['N']} | {r['estimator']} | {r['scale']:.3f} ± {r['scale_sd']:.3f} | "
            f"{predicted} | {r['error']:.3f} ± {r['error_sd']:.3f} |"
        )
    (args.out / "shrinkage.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if args.plot:
        draw(rows, args.plot, d)
    print(f"wrote {args.out / 'shrinkage.json'} and {args.out / 'shrinkage.md'}", file=sys.stderr)
    return report


def draw(rows: list[dict], path: Path, d: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for estimator, marker in zip(ESTIMATORS, "os", strict=True):
        mine = [r for r in rows if r["estimator"] == estimator]
        ns = [r["N"] for r in mine]
        axes[0].errorbar(ns, [r["scale"] for r in mine], [r["scale_sd"] for r in mine],
                         marker=marker, label=estimator, capsize=3)  # fmt: skip
        axes[1].errorbar(ns, [r["error"] for r in mine], [r["error_sd"] for r in mine],
                         marker=marker, label=estimator, capsize=3)  # fmt: skip
    ns = sorted({r["N"] for r in rows})
    axes[0].plot(ns, [1 / (1 + (d + 1) / (n - 1)) for n in ns], "k:", label="1/(1+(d+1)/(N-1))")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set(xscale="log", xlabel="batch size N", ylabel="tr(S) / tr(Σ_t)")
    axes[1].set(xscale="log", xlabel="batch size N", ylabel="‖S − Σ_t‖ / ‖Σ_t‖")
    for ax in axes:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    axes[0].legend(fontsize=8)
    fig.suptitle(f"alignment loss alone, linear map, d = {d}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
