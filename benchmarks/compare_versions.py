"""Time this version of the loss against an earlier one, on the same machine in the same session.

The timings of two runs on different machines (or days) cannot show a regression of a few tens
of percent; this script runs both versions here, one after the other for each benchmark. The
earlier version (a git commit, default ``e286c0f``: the last core with the first-order-only
fused autograd Functions) is extracted with ``git archive`` into a temporary directory, and
``bench_loss``, ``bench_wide`` and ``bench_spec`` of each version run with that version's own
scripts and package first on ``PYTHONPATH`` (baseline, then current, benchmark by benchmark).

For every case and variant that both versions measure, the report holds the ratio of the
median times (current / baseline) and the noise of that ratio, the two relative interquartile
ranges added in quadrature; a ratio above ``1 + noise`` is marked *slower*, below
``1 - noise`` *faster*, else *same*. Written: ``benchmarks/results/versions.json`` and
``docs/_static/benchmarks/versions.png``.

Usage::

    python benchmarks/compare_versions.py                 # a quarter of an hour on 2 cores
    python benchmarks/compare_versions.py --quick         # smoke sizes
    python benchmarks/compare_versions.py --no-run        # only redo the report from the JSONs
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = RESULTS / "versions"
PLOT = ROOT / "docs" / "_static" / "benchmarks" / "versions.png"
BENCHMARKS = ("loss", "wide", "spec")
#: benchmark -> (the fields that name a case, the variants that time deepalign's own loss)
CASES = {
    "loss": (("n", "d"), ("deepalign",)),
    "wide": (("d",), ("gram", "dxd")),
    "spec": (("n", "d"), ("spec", "independent")),
}


def case_label(benchmark: str, row: Mapping[str, Any]) -> str:
    fields = CASES[benchmark][0]
    if fields == ("d",):
        return f"N=64, d={row['d']}"
    return f"{row['n']}×{row['d']}"


def compare(
    baseline: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per benchmark, case and variant measured by both reports.

    Args:
        baseline, current: benchmark name -> its JSON report (``results`` rows whose variants
            hold ``median_s`` and ``iqr_s``).

    Returns:
        Rows with ``benchmark``, ``case``, ``variant``, both medians, ``ratio`` (current /
        baseline), ``noise`` (the relative IQRs in quadrature) and ``verdict``
        (``"slower"``, ``"faster"`` or ``"same"``).
    """
    rows = []
    for name, (fields, variants) in CASES.items():
        if name not in baseline or name not in current:
            continue
        before = {tuple(r[f] for f in fields): r for r in baseline[name]["results"]}
        for row in current[name]["results"]:
            old = before.get(tuple(row[f] for f in fields))
            if old is None:
                continue
            for variant in variants:
                if variant not in row or variant not in old:
                    continue
                new_t, old_t = row[variant], old[variant]
                ratio = new_t["median_s"] / old_t["median_s"]
                noise = math.hypot(
                    new_t["iqr_s"] / new_t["median_s"], old_t["iqr_s"] / old_t["median_s"]
                )
                verdict = (
                    "slower" if ratio > 1 + noise else "faster" if ratio < 1 - noise else "same"
                )
                rows.append(
                    {
                        "benchmark": name,
                        "case": case_label(name, row),
                        "variant": variant,
                        "baseline_s": old_t["median_s"],
                        "current_s": new_t["median_s"],
                        "ratio": ratio,
                        "noise": noise,
                        "verdict": verdict,
                    }
                )
    return rows


def summary(rows: Sequence[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """The table that ``run_all.py`` renders into the docs and the README."""
    return {
        "title": f"This version against {baseline}, same machine and session",
        "columns": ["benchmark", "variant", "case", f"{baseline}", "this version", "ratio"],
        "rows": [
            [
                r["benchmark"],
                r["variant"],
                r["case"],
                f"{r['baseline_s'] * 1e6:.0f} µs",
                f"{r['current_s'] * 1e6:.0f} µs",
                f"{r['ratio']:.2f} ± {r['noise']:.2f} ({r['verdict']})",
            ]
            for r in rows
        ],
        "note": (
            "Forward + backward, float32, medians; ratio = this version ÷ the baseline, ± the "
            "relative IQRs of both in quadrature; slower/faster: the ratio lies beyond that "
            "noise. benchmarks/compare_versions.py runs both versions' own scripts."
        ),
    }


def extract(commit: str, into: Path) -> Path:
    """The package and benchmarks of ``commit``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "deepalign", "benchmarks"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(tree: Path, name: str, out: Path, args: argparse.Namespace) -> None:
    command = [sys.executable, str(tree / "benchmarks" / f"bench_{name}.py"), "--out", str(out)]
    command += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONPATH=str(tree))
    print(f"== {tree.name}: bench_{name}.py", flush=True)
    subprocess.run(command, check=True, env=env, cwd=tree)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    labels = [f"{r['benchmark']} {r['variant']} {r['case']}" for r in rows]
    y = range(len(rows))
    colors = {"slower": "tab:red", "faster": "tab:green", "same": "tab:gray"}
    for i, r in zip(y, rows, strict=True):
        ax.errorbar(
            r["ratio"], i, xerr=r["noise"] * r["ratio"], fmt="o", color=colors[r["verdict"]]
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8) if t < 2 * max(r["ratio"] for r in rows)]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("time ratio, this version / baseline (bars: noise of the ratio)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="e286c0f", help="git commit to compare with")
    parser.add_argument("--quick", action="store_true", help="smoke sizes for both versions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-run", action="store_true", help="only redo the report")
    parser.add_argument("--out", type=Path, default=RESULTS / "versions.json")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        with tempfile.TemporaryDirectory() as tmp:
            baseline_tree = extract(args.baseline, Path(tmp) / "baseline")
            for name in BENCHMARKS:
                run(baseline_tree, name, RUNS / f"{name}_baseline.json", args)
                run(ROOT, name, RUNS / f"{name}_current.json", args)
    reports = {
        side: {
            name: json.loads((RUNS / f"{name}_{side}.json").read_text())
            for name in BENCHMARKS
            if (RUNS / f"{name}_{side}.json").exists()
        }
        for side in ("baseline", "current")
    }
    if not reports["baseline"] or not reports["current"]:
        raise SystemExit(f"no results of both versions under {RUNS}: run without --no-run first")
    rows = compare(reports["baseline"], reports["current"])
    env = next(iter(reports["current"].values()))["environment"]
    report = {
        "benchmark": "versions",
        "baseline": args.baseline,
        "environment": env,
        "quick": args.quick,
        "rows": rows,
        "summary": summary(rows, args.baseline),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"deepalign vs {args.baseline}: {env['device_name']}, PyTorch {env['torch']}, "
        f"{env['num_threads']} thread(s), {env['date'][:10]}"
    )
    plot(rows, args.plot, title)
    for r in rows:
        print(
            f"{r['benchmark']:5} {r['variant']:12} {r['case']:>16}  {r['ratio']:.2f} "
            f"± {r['noise']:.2f}  {r['verdict']}"
        )
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
