"""Wide features (d ≫ N): the loss's automatic Gram path against its d×d covariance path.

Two (N, d) float32 inputs with N = 64 rows each, so N_a + N_b < d for every width d measured
(256 to 16384): :func:`deepalign.functional.covariance_alignment_loss` then takes its Gram path
(N×N Gram matrices, O((N_a + N_b)² d) time, no d×d memory). The d×d path is forced with
``method="dense"``; ``gram_unbiased`` is the Gram path of ``estimator="unbiased"`` (paired
rows, the default for equal row counts). One call is forward + backward
(``torch.autograd.grad`` with respect to both inputs). Reported: median time and IQR, and peak
memory (see ``common.py``), against d; ``--plot`` draws both curves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import torch

from deepalign.functional import covariance_alignment_loss

ROWS = 64
WIDTHS = (256, 1024, 4096, 8192, 16384)
QUICK_WIDTHS = (256, 1024)
VARIANTS = ("gram", "gram_unbiased", "dxd")


def dxd_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return covariance_alignment_loss(x_a, x_b, method="dense")


def gram_unbiased_loss(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    return covariance_alignment_loss(x_a, x_b, estimator="unbiased", method="gram")


LOSSES = {"gram": covariance_alignment_loss, "gram_unbiased": gram_unbiased_loss, "dxd": dxd_loss}


def forward_backward(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_a: torch.Tensor, x_b: torch.Tensor
) -> Callable[[], object]:
    def step() -> object:
        return torch.autograd.grad(loss(x_a, x_b), (x_a, x_b))

    return step


def run_case(d: int, args: Any) -> dict[str, Any]:
    generator = common.seed_everything(d)
    x_a, x_b = (torch.randn(ROWS, d, generator=generator).to(args.device) for _ in range(2))
    x_a.requires_grad_(True)
    x_b.requires_grad_(True)
    timings = common.measure(
        {name: forward_backward(loss, x_a, x_b) for name, loss in LOSSES.items()}, args
    )
    result = {
        "d": d,
        **timings,
        "dxd_over_gram_time": timings["dxd"]["median_s"] / timings["gram"]["median_s"],
        "dxd_over_gram_memory": timings["dxd"]["peak_bytes"] / timings["gram"]["peak_bytes"],
    }
    print(
        f"d={d:>6}: gram {common.fmt_time(timings['gram']['median_s'])} "
        f"({common.fmt_bytes(timings['gram']['peak_bytes'])}), d×d "
        f"{common.fmt_time(timings['dxd']['median_s'])} "
        f"({common.fmt_bytes(timings['dxd']['peak_bytes'])})"
    )
    return result


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = [
        [
            str(r["d"]),
            common.fmt_time(r["gram"]["median_s"]),
            common.fmt_time(r["dxd"]["median_s"]),
            f"{r['dxd_over_gram_time']:.1f}",
            common.fmt_bytes(r["gram"]["peak_bytes"]),
            common.fmt_bytes(r["dxd"]["peak_bytes"]),
            f"{r['dxd_over_gram_memory']:.1f}",
            f"{r['gram_unbiased']['median_s'] / r['gram']['median_s']:.2f}",
        ]
        for r in results
    ]
    return {
        "title": f"Wide features: Gram path against the d×d path (N = {ROWS} per input)",
        "columns": [
            "d",
            "Gram time",
            "d×d time",
            "speed-up",
            "Gram mem",
            "d×d mem",
            "mem ratio",
            "unbiased ÷ plug-in (Gram)",
        ],
        "rows": rows,
        "note": "Forward + backward, float32, medians; speed-up and memory ratio are d×d ÷ Gram.",
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = common.subplots(2)
    widths = [r["d"] for r in results]
    for ax, key, label in (
        (axes[0][0], "median_s", "forward + backward time (s)"),
        (axes[0][1], "peak_bytes", "peak memory (bytes)"),
    ):
        for name in VARIANTS:
            ax.plot(widths, [r[name][key] for r in results], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="d (N = 64 per input)", ylabel=label)
        ax.legend()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.2, rounds=3)
    widths = QUICK_WIDTHS if args.quick else WIDTHS
    results = [run_case(d, args) for d in widths]
    if args.plot:
        plot(results, args.plot)
    return common.report("wide", args, results, summary(results), rows=ROWS, widths=list(widths))


if __name__ == "__main__":
    main()
