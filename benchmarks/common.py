"""The methodology shared by every benchmark script: timing, peak memory, environment, CLI, JSON.

Timing
    :class:`torch.utils.benchmark.Timer` with ``blocked_autorange``: each call of the measured
    function is repeated in blocks until ``min_run_time`` has passed, and a block's mean is one
    sample. The variants of one case are measured in interleaved *rounds* (variant 1, 2, ...,
    then again), so that a change of load on a shared machine hits all of them alike; the
    samples of all rounds are pooled and summarised by their median and interquartile range
    (IQR). Every variant is warmed up by two calls before its first round. A variant whose first
    call alone outlasts ``min_run_time`` (the 16384-wide d×d loss takes seconds) is warmed up by
    that one call and then timed one call per round, so full runs stay short without dropping
    sizes. On CUDA the Timer synchronises the device around each block.

Peak memory
    The most bytes allocated at once during one call, above what was allocated before it (the
    inputs, made outside the call, do not count). CUDA: :func:`torch.cuda.max_memory_allocated`
    after :func:`torch.cuda.reset_peak_memory_stats`. CPU: there is no allocator statistic, so
    the call runs once under :func:`torch.profiler.profile` with ``profile_memory=True``; every
    allocation and free of the CPU allocator is then a ``[memory]`` event with a signed byte
    count, and the peak is the maximum of their running sum in time order. The events are read
    from the profiler's raw Kineto results, since the aggregated ``events()`` list attributes
    allocations to operators and drops their timing.

Reproducibility
    Fixed seeds (:func:`seed_everything`) before every case, the thread count set with
    :func:`torch.set_num_threads` and passed to the Timer (default 1: stable on a shared CPU),
    and an environment record (machine, CPU, device, PyTorch version, threads, date) in every
    JSON report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils import benchmark

Timing = dict[str, float | int]


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed torch's global generators (CPU and CUDA); return a CPU generator seeded alike."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def time_variants(
    variants: Mapping[str, Callable[[], object]],
    *,
    min_run_time: float,
    rounds: int,
    threads: int,
) -> dict[str, Timing]:
    """Median and IQR of each variant's call time, measured in interleaved rounds.

    Args:
        variants: name -> a function of no argument that does one complete unit of work.
        min_run_time: seconds of measurement per variant and round.
        rounds: how many times each variant is measured, in turn with the others.
        threads: torch threads the Timer runs with.

    Returns:
        name -> ``{"median_s", "iqr_s", "samples", "runs_per_sample"}`` where a sample is the
        mean time of one block of ``runs_per_sample`` calls.
    """
    timers, slow = {}, set()
    for name, fn in variants.items():
        timers[name] = benchmark.Timer(
            stmt="fn()", globals={"fn": fn}, num_threads=threads, description=name
        )
        if timers[name].timeit(number=1).median > min_run_time:
            slow.add(name)
        else:
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    runs = {name: 1 for name in variants}
    for _ in range(rounds):
        for name, timer in timers.items():
            if name in slow:
                measurement = timer.timeit(number=1)
            else:
                measurement = timer.blocked_autorange(min_run_time=min_run_time)
            samples[name].extend(measurement.times)
            runs[name] = measurement.number_per_run
    return {name: _summary(times, runs[name]) for name, times in samples.items()}


def _summary(times: Sequence[float], runs_per_sample: int) -> Timing:
    if len(times) > 1:
        quartiles = statistics.quantiles(times, n=4, method="inclusive")
        iqr = quartiles[2] - quartiles[0]
    else:
        iqr = 0.0
    return {
        "median_s": statistics.median(times),
        "iqr_s": iqr,
        "samples": len(times),
        "runs_per_sample": runs_per_sample,
    }


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call of ``fn`` above those live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure(
    variants: Mapping[str, Callable[[], object]], args: argparse.Namespace, *, memory: bool = True
) -> dict[str, dict[str, Any]]:
    """Time every variant (and measure its peak memory) with the settings of ``args``."""
    timings = time_variants(
        variants, min_run_time=args.min_run_time, rounds=args.rounds, threads=args.threads
    )
    if memory:
        for name, fn in variants.items():
            timings[name]["peak_bytes"] = peak_memory(fn, args.device)
    return timings


def ratios(
    timings: Mapping[str, Mapping[str, Any]], reference: str, key: str = "median_s"
) -> dict[str, float]:
    """``timings[name][key] / timings[reference][key]`` for every name."""
    base = timings[reference][key]
    return {name: t[key] / base if base else float("nan") for name, t in timings.items()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    cuda = device.type == "cuda"
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "num_threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def parent_parser() -> argparse.ArgumentParser:
    """The options every benchmark script takes (use it as a ``parents=`` entry)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings (smoke)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: stable on shared CPUs)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON to this path")
    parser.add_argument("--plot", type=Path, help="save a plot of the results to this PNG")
    return parser


def parse_args(
    doc: str, argv: Sequence[str] | None, *, min_run_time: float, rounds: int
) -> argparse.Namespace:
    """Parse the common options of a script whose module docstring is ``doc``.

    Sets the torch thread count, turns ``--device`` into a :class:`torch.device`, and adds
    ``min_run_time`` and ``rounds`` (the given full-run values, or short ones with ``--quick``).
    """
    parser = argparse.ArgumentParser(
        description=doc,
        parents=[parent_parser()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    args.min_run_time, args.rounds = (0.005, 1) if args.quick else (min_run_time, rounds)
    torch.set_num_threads(args.threads)
    return args


def report(
    name: str,
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    summary: Mapping[str, Any],
    **settings: Any,
) -> dict[str, Any]:
    """Build a benchmark's JSON report, and write it (``--out``) and plot it (``--plot``).

    Args:
        name: the benchmark's name (the script's stem without ``bench_``).
        args: the parsed options.
        results: one dict per measured case.
        summary: the table for the README and the docs: ``{"title", "columns", "rows",
            "note"}``, rows being lists of strings.
        **settings: the fixed parameters of the run (sizes, widths, ...).
    """
    data = {
        "benchmark": name,
        "quick": args.quick,
        "environment": environment(args.device, args.threads),
        "timing": {"min_run_time_s": args.min_run_time, "rounds": args.rounds},
        "settings": settings,
        "results": results,
        "summary": dict(summary),
    }
    if args.out:
        write_json(data, args.out)
    return data


def write_json(data: Mapping[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG (creating the directory) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def subplots(ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A non-interactive matplotlib figure (Agg backend) with ``ncols`` axes side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False, **kwargs)


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit: ``'12.3 µs'``, ``'4.56 ms'``, ``'1.23 s'``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_bytes(count: float) -> str:
    """A byte count with a binary unit: ``'512 B'``, ``'1.5 MiB'``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.0f} B"
