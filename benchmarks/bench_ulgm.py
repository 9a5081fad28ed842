"""Step time of deepalign.ULGM against the training-set size, and of a re-scanning step.

deepalign's step updates float64 running class sums from the batch rows only, so its time should
not grow with ``num_samples``; the published algorithm recomputes every centre from the whole
feature bank at each step. The naive timing is deepalign's step followed by that re-scan (masks
and means over all rows of every bank), i.e. the per-step cost of the published bookkeeping.

Timing and the environment record follow ``common.py``; no memory is measured here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

import common
import torch

from deepalign import ULGM

SIZES = (1000, 16326, 100000)
QUICK_SIZES = (1000, 16326)
DIMS = {"fusion": 128, "text": 32, "audio": 16, "vision": 32}
BATCH_SIZE = 32
NUM_BATCHES = 64
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def make_ulgm(num_samples: int, generator: torch.Generator, device: torch.device) -> ULGM:
    ulgm = ULGM(num_samples, DIMS)
    labels = torch.rand(num_samples, generator=generator) * 6 - 3
    ulgm.init_labels(torch.arange(num_samples), labels)
    return ulgm.to(device)


def make_batches(num_samples: int, generator: torch.Generator, device: torch.device) -> list[Batch]:
    batches = []
    for _ in range(NUM_BATCHES):
        indexes = torch.randperm(num_samples, generator=generator)[:BATCH_SIZE]
        features = {m: torch.randn(BATCH_SIZE, d, generator=generator) for m, d in DIMS.items()}
        batches.append(({m: f.to(device) for m, f in features.items()}, indexes.to(device)))
    return batches


def incremental_step(ulgm: ULGM, batches: Iterator[Batch]) -> Callable[[], None]:
    def step() -> None:
        features, indexes = next(batches)
        ulgm.step(features, indexes, epoch=2)

    return step


def rescanning_step(ulgm: ULGM, batches: Iterator[Batch]) -> Callable[[], None]:
    device = ulgm.initialized.device
    feature_banks = {m: torch.zeros(ulgm.num_samples, d, device=device) for m, d in DIMS.items()}
    centers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def step() -> None:
        features, indexes = next(batches)
        ulgm.step(features, indexes, epoch=2)
        for name, bank in feature_banks.items():
            bank[indexes] = features[name]
            labels = ulgm.labels(name)
            centers[name] = (bank[labels > 0].mean(dim=0), bank[labels < 0].mean(dim=0))

    return step


def run_case(num_samples: int, args: Any) -> dict[str, Any]:
    generator = common.seed_everything(num_samples)
    batches = make_batches(num_samples, generator, args.device)
    steps = {
        kind: make_step(make_ulgm(num_samples, generator, args.device), cycle(batches))
        for kind, make_step in (("incremental", incremental_step), ("rescan", rescanning_step))
    }
    timings = common.measure(steps, args, memory=False)
    print(
        f"num_samples={num_samples:>6}: incremental "
        f"{common.fmt_time(timings['incremental']['median_s'])}, "
        f"re-scan {common.fmt_time(timings['rescan']['median_s'])} (medians)"
    )
    return {"num_samples": num_samples, **timings}


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    smallest = results[0]["incremental"]["median_s"]
    rows = [
        [
            str(r["num_samples"]),
            common.fmt_time(r["incremental"]["median_s"]),
            f"{r['incremental']['median_s'] / smallest:.2f}",
            common.fmt_time(r["rescan"]["median_s"]),
        ]
        for r in results
    ]
    return {
        "title": f"ULGM.step against the training-set size (batch {BATCH_SIZE})",
        "columns": ["num_samples", "incremental", "÷ smallest", "re-scanning"],
        "rows": rows,
        "note": "Medians. Incremental: deepalign's O(B·d) step; re-scanning: the same step plus "
        "the published per-step recomputation of every centre from the whole bank.",
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = common.subplots()
    ax = axes[0][0]
    sizes = [r["num_samples"] for r in results]
    for kind in ("incremental", "rescan"):
        ax.plot(sizes, [r[kind]["median_s"] for r in results], marker="o", label=kind)
    ax.set(xscale="log", yscale="log", xlabel="num_samples", ylabel="step time (s)")
    ax.legend()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.3, rounds=3)
    sizes = QUICK_SIZES if args.quick else SIZES
    results = [run_case(num_samples, args) for num_samples in sizes]
    if args.plot:
        plot(results, args.plot)
    incremental = [r["incremental"]["median_s"] for r in results]
    return common.report(
        "ulgm",
        args,
        results,
        summary(results),
        batch_size=BATCH_SIZE,
        dims=DIMS,
        sizes=list(sizes),
        incremental_largest_over_smallest=incremental[-1] / incremental[0],
    )


if __name__ == "__main__":
    main()
