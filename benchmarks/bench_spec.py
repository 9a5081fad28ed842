"""A three-term alignment spec against three independent losses, forward + backward.

``ModalityAlignment("T-V/T-A/A-V", ...)`` computes each modality's covariance once and combines
the three terms; the alternative sums three
:func:`deepalign.functional.covariance_alignment_loss` calls, which compute every covariance
twice (and take the Gram path when 2N < d). Three (N, d) float32 inputs; one call is the loss
and its gradient with respect to the three inputs (``torch.autograd.grad``). Reported: median
time and IQR, peak memory (see ``common.py``), and the spec's time as a fraction of the three
losses'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import common
import torch

from deepalign import ModalityAlignment
from deepalign.functional import covariance_alignment_loss

NAMES = ("text", "audio", "vision")
PAIRS = (("text", "vision"), ("text", "audio"), ("audio", "vision"))
CASES = ((32, 16), (64, 128), (256, 128), (1024, 256), (4096, 128), (128, 1024))
QUICK_CASES = ((32, 16), (64, 128))
VARIANTS = ("spec", "independent")
Features = Mapping[str, torch.Tensor]


def independent_loss(features: Features) -> torch.Tensor:
    return sum(covariance_alignment_loss(features[a], features[b]) for a, b in PAIRS)


def forward_backward(
    loss: Callable[[Features], torch.Tensor], features: Features
) -> Callable[[], object]:
    inputs = tuple(features.values())

    def step() -> object:
        return torch.autograd.grad(loss(features), inputs)

    return step


def run_case(n: int, d: int, args: Any) -> dict[str, Any]:
    generator = common.seed_everything(n * 10_000 + d)
    features = {
        name: torch.randn(n, d, generator=generator).to(args.device).requires_grad_(True)
        for name in NAMES
    }
    spec = ModalityAlignment("T-V/T-A/A-V", dict.fromkeys(NAMES, d)).to(args.device)
    losses = {"spec": spec, "independent": independent_loss}
    timings = common.measure(
        {name: forward_backward(loss, features) for name, loss in losses.items()}, args
    )
    result = {
        "n": n,
        "d": d,
        "independent_path": "gram" if 2 * n < d else "dxd",
        **timings,
        "spec_over_independent": common.ratios(timings, "independent")["spec"],
    }
    print(
        f"N={n:>5} d={d:>5}: spec {common.fmt_time(timings['spec']['median_s'])}, "
        f"independent {common.fmt_time(timings['independent']['median_s'])} "
        f"(x{result['spec_over_independent']:.2f})"
    )
    return result


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = [
        [
            str(r["n"]),
            str(r["d"]),
            common.fmt_time(r["spec"]["median_s"]),
            f"{common.fmt_time(r['independent']['median_s'])} ({r['independent_path']})",
            f"{r['spec_over_independent']:.2f}",
            common.fmt_bytes(r["spec"]["peak_bytes"]),
            common.fmt_bytes(r["independent"]["peak_bytes"]),
        ]
        for r in results
    ]
    return {
        "title": "ModalityAlignment('T-V/T-A/A-V') against three independent losses",
        "columns": ["N", "d", "spec", "3 losses (path)", "ratio", "spec mem", "3 losses mem"],
        "rows": rows,
        "note": "Forward + backward, float32, medians; ratio = spec ÷ three losses.",
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = common.subplots()
    ax = axes[0][0]
    labels = [f"{r['n']}×{r['d']}" for r in results]
    positions = torch.arange(len(results)).tolist()
    for offset, name in zip((-0.2, 0.2), VARIANTS, strict=True):
        times = [r[name]["median_s"] for r in results]
        ax.bar([p + offset for p in positions], times, width=0.4, label=name)
    ax.set_xticks(positions, labels, rotation=30)
    ax.set(yscale="log", xlabel="N × d", ylabel="forward + backward time (s)")
    ax.legend()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.2, rounds=3)
    cases = QUICK_CASES if args.quick else CASES
    results = [run_case(n, d, args) for n, d in cases]
    if args.plot:
        plot(results, args.plot)
    return common.report(
        "spec", args, results, summary(results), spec="T-V/T-A/A-V", cases=[list(c) for c in cases]
    )


if __name__ == "__main__":
    main()
