"""Step time of deepalign.ULGM against the training-set size, and of a re-scanning step.

deepalign's step updates float64 running class sums from the batch rows only, so its time should
not grow with ``num_samples``; the published algorithm recomputes every centre from the whole
feature bank at each step. The naive timing is deepalign's step followed by that re-scan (masks
and means over all rows of every bank), i.e. the per-step cost of the published bookkeeping.

Usage::

    python benchmarks/bench_ulgm.py [--quick] [--out results.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import cycle

import torch
from torch.utils import benchmark

from deepalign import ULGM

SIZES = (1000, 16326, 100000)
QUICK_SIZES = (1000, 16326)
DIMS = {"fusion": 128, "text": 32, "audio": 16, "vision": 32}
BATCH_SIZE = 32
NUM_BATCHES = 64
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def make_ulgm(num_samples: int, generator: torch.Generator) -> ULGM:
    ulgm = ULGM(num_samples, DIMS)
    labels = torch.rand(num_samples, generator=generator) * 6 - 3
    ulgm.init_labels(torch.arange(num_samples), labels)
    return ulgm


def make_batches(num_samples: int, generator: torch.Generator) -> list[Batch]:
    batches = []
    for _ in range(NUM_BATCHES):
        indexes = torch.randperm(num_samples, generator=generator)[:BATCH_SIZE]
        features = {m: torch.randn(BATCH_SIZE, d, generator=generator) for m, d in DIMS.items()}
        batches.append((features, indexes))
    return batches


def incremental_step(ulgm: ULGM, batches: Iterator[Batch]) -> Callable[[], None]:
    def step() -> None:
        features, indexes = next(batches)
        ulgm.step(features, indexes, epoch=2)

    return step


def rescanning_step(ulgm: ULGM, batches: Iterator[Batch]) -> Callable[[], None]:
    feature_banks = {m: torch.zeros(ulgm.num_samples, d) for m, d in DIMS.items()}
    centers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def step() -> None:
        features, indexes = next(batches)
        ulgm.step(features, indexes, epoch=2)
        for name, bank in feature_banks.items():
            bank[indexes] = features[name]
            labels = ulgm.labels(name)
            centers[name] = (bank[labels > 0].mean(dim=0), bank[labels < 0].mean(dim=0))

    return step


def measure(step: Callable[[], None], min_run_time: float, threads: int) -> dict[str, float | int]:
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    step()  # warm-up: first-call allocations are not part of the steady state
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "median_s": measurement.median,
        "iqr_s": measurement.iqr,
        "blocks": len(measurement.times),
        "runs_per_block": measurement.number_per_run,
    }


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def run(sizes: Sequence[int], min_run_time: float, threads: int) -> list[dict[str, object]]:
    results = []
    for num_samples in sizes:
        generator = torch.Generator().manual_seed(num_samples)
        batches = make_batches(num_samples, generator)
        timings = {}
        for kind, make_step in (("incremental", incremental_step), ("rescan", rescanning_step)):
            ulgm = make_ulgm(num_samples, generator)
            timings[kind] = measure(make_step(ulgm, cycle(batches)), min_run_time, threads)
        results.append({"num_samples": num_samples, **timings})
        print(
            f"num_samples={num_samples:>6}: incremental "
            f"{timings['incremental']['median_s'] * 1e6:8.1f} us, "
            f"re-scan {timings['rescan']['median_s'] * 1e6:8.1f} us (medians)"
        )
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, short timings (smoke)")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: stable on shared CPUs)"
    )
    args = parser.parse_args(argv)
    sizes, min_run_time = (QUICK_SIZES, 0.01) if args.quick else (SIZES, 1.0)
    results = run(sizes, min_run_time, args.threads)
    incremental = [r["incremental"]["median_s"] for r in results]
    report = {
        "benchmark": "ULGM.step",
        "quick": args.quick,
        "machine": machine(),
        "torch_version": torch.__version__,
        "num_threads": args.threads,
        "batch_size": BATCH_SIZE,
        "dims": DIMS,
        "results": results,
        "incremental_largest_over_smallest": incremental[-1] / incremental[0],
    }
    if args.out:
        with open(args.out, "w") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
