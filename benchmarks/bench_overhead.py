"""Where a small plug-in loss call spends its time: the autograd Function's style and outputs.

Forward only, two (N, d) float32 inputs that require a gradient, the plug-in loss of one pair.
The same computation (deepalign's ``_pair_parts``: centring, covariances, difference) is
wrapped five ways:

- ``math``: the computation alone, no autograd node (no input needs a gradient);
- ``ctx_style``: an autograd Function in the ``forward(ctx, ...)`` style, saving the inputs and
  the difference on ``ctx`` (the style of deepalign's first-order-only core; torch.func cannot
  transform it);
- ``setup_context``: the same Function in the ``setup_context`` style that torch.func needs,
  returning only the loss and saving only the inputs (its signature cached, as deepalign's);
- ``kernel``: deepalign's ``PairDistances``, which also returns the difference and the centred
  inputs, so that backward can reuse them (intermediates must be outputs to be saved in this
  style);
- ``unvalidated``: :func:`deepalign.functional.covariance_alignment_loss` with
  ``validate=False``, i.e. ``kernel`` plus the dispatch (option and shape checks, path choice,
  one value per pair);
- ``loss``: the same with validation on (the default): plus the finiteness check's host read.

Differences between neighbours are the cost of each layer. Reported: median time and IQR.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import torch

from deepalign._kernels import PairDistances, _pair_parts
from deepalign.functional import covariance_alignment_loss

CASES = ((32, 16), (256, 128))
QUICK_CASES = ((32, 16),)
VARIANTS = ("math", "ctx_style", "setup_context", "kernel", "unvalidated", "loss")
PAIRS = ((0, 1),)


class CtxStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        _, scaled = _pair_parts(PAIRS, (x_a, x_b))
        ctx.save_for_backward(x_a, x_b, scaled)
        return scaled.square().sum((-2, -1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:
        return None, None  # never called: the benchmark times forward only


class SetupContextStyle(torch.autograd.Function):
    @staticmethod
    def forward(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        return _pair_parts(PAIRS, (x_a, x_b))[1].square().sum((-2, -1))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:
        return None, None  # never called: the benchmark times forward only


# Cached as deepalign's kernels cache theirs: Function.apply binds the arguments to forward's
# signature on every call, and inspect returns a cached __signature__ at once.
SetupContextStyle.forward.__signature__ = inspect.signature(SetupContextStyle.forward)


def run_case(n: int, d: int, args: Any) -> dict[str, Any]:
    generator = common.seed_everything(n * 10_000 + d)
    x_a, x_b = (torch.randn(n, d, generator=generator).to(args.device) for _ in range(2))
    fixed_a, fixed_b = x_a.clone(), x_b.clone()
    x_a.requires_grad_(True)
    x_b.requires_grad_(True)
    variants = {
        "math": lambda: PairDistances.value(PAIRS, (fixed_a, fixed_b)),
        "ctx_style": lambda: CtxStyle.apply(x_a, x_b),
        "setup_context": lambda: SetupContextStyle.apply(x_a, x_b),
        "kernel": lambda: PairDistances.apply(PAIRS, x_a, x_b),
        "unvalidated": lambda: covariance_alignment_loss(x_a, x_b, validate=False),
        "loss": lambda: covariance_alignment_loss(x_a, x_b),
    }
    timings = common.measure(variants, args, memory=False)
    print(
        f"N={n:>5} d={d:>5}: "
        + ", ".join(f"{k} {common.fmt_time(t['median_s'])}" for k, t in timings.items())
    )
    return {"n": n, "d": d, **timings}


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = [
        [f"{r['n']}×{r['d']}"]
        + [
            f"{common.fmt_time(r[v]['median_s'])} ± {common.fmt_time(r[v]['iqr_s'] / 2)}"
            for v in VARIANTS
        ]
        for r in results
    ]
    return {
        "title": "One plug-in loss call, forward: the cost of each wrapping layer",
        "columns": ["N×d", *VARIANTS],
        "rows": rows,
        "note": (
            "Forward only, float32, medians ± half the IQR. math: the computation alone; "
            "ctx_style / setup_context: the same in an autograd Function of that style; "
            "kernel: deepalign's Function, which also returns its saved parts; unvalidated / "
            "loss: covariance_alignment_loss with validate=False / True."
        ),
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = common.subplots(ncols=len(results))
    for ax, r in zip(axes[0], results, strict=True):
        ax.bar(
            list(VARIANTS),
            [r[v]["median_s"] * 1e6 for v in VARIANTS],
            yerr=[r[v]["iqr_s"] * 1e6 / 2 for v in VARIANTS],
        )
        ax.set(title=f"N×d = {r['n']}×{r['d']}", ylabel="forward time (µs)")
        ax.tick_params(axis="x", rotation=30)
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.2, rounds=5)
    cases = QUICK_CASES if args.quick else CASES
    results = [run_case(n, d, args) for n, d in cases]
    if args.plot:
        plot(results, args.plot)
    return common.report(
        "overhead", args, results, summary(results), cases=[list(c) for c in cases]
    )


if __name__ == "__main__":
    main()
