"""Run every benchmark, collect the JSON results and regenerate the summary tables and plots.

Each ``bench_*.py`` script runs in its own process (so thread counts and seeds never leak from
one to the next) and writes ``benchmarks/results/<name>.json`` and
``docs/_static/benchmarks/<name>.png``. The tables are then rewritten between the marker comments
of ``benchmarks/README.md`` (Markdown) and ``docs/benchmarks.rst`` (reStructuredText, with the
plots and the environment of each run).

Usage::

    python benchmarks/run_all.py            # full run, a few minutes on 2 cores
    python benchmarks/run_all.py --quick    # smoke run of every script
    python benchmarks/run_all.py --no-run   # only regenerate the tables from the JSONs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PLOTS = ROOT / "docs" / "_static" / "benchmarks"
README = HERE / "README.md"
DOCS_PAGE = ROOT / "docs" / "benchmarks.rst"
BENCHMARKS = ("loss", "wide", "spec", "overhead", "ulgm", "train_step")
MARKDOWN_MARKERS = ("<!-- benchmarks:start -->", "<!-- benchmarks:end -->")
RST_MARKERS = (".. benchmarks:start", ".. benchmarks:end")


def run_benchmark(name: str, args: argparse.Namespace) -> None:
    command = [
        sys.executable,
        str(HERE / f"bench_{name}.py"),
        "--out",
        str(RESULTS / f"{name}.json"),
        "--plot",
        str(PLOTS / f"{name}.png"),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.quick:
        command.append("--quick")
    print(f"== bench_{name}.py", flush=True)
    subprocess.run(command, check=True)


def load_reports() -> list[dict[str, Any]]:
    """The reports of every benchmark, then compare_versions.py's when it exists."""
    paths = (RESULTS / f"{name}.json" for name in (*BENCHMARKS, "versions"))
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def describe_environment(report: dict[str, Any]) -> str:
    env = report["environment"]
    quick = " (quick run: smoke sizes, not representative)" if report["quick"] else ""
    return (
        f"{env['device_name']} ({env['device']}, {env['cpu_count']} logical CPUs), "
        f"PyTorch {env['torch']}, {env['num_threads']} thread(s), {env['date'][:10]}{quick}"
    )


def markdown_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(summary["columns"]) + " |"]
    lines.append("|" + "---|" * len(summary["columns"]))
    lines += ["| " + " | ".join(row) + " |" for row in summary["rows"]]
    return lines


def markdown_section(report: dict[str, Any]) -> list[str]:
    summary = report["summary"]
    return [
        f"### {summary['title']}",
        "",
        f"`bench_{report['benchmark']}.py` on {describe_environment(report)}.",
        "",
        *markdown_table(summary),
        "",
        summary["note"],
        "",
    ]


def rst_section(report: dict[str, Any]) -> list[str]:
    summary, name = report["summary"], report["benchmark"]
    title = summary["title"]
    lines = [title, "-" * len(title), ""]
    lines += [f"``benchmarks/bench_{name}.py`` on {describe_environment(report)}.", ""]
    lines += [".. list-table::", "   :header-rows: 1", ""]
    for row in [summary["columns"], *summary["rows"]]:
        lines += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
    lines += ["", summary["note"], ""]
    if (PLOTS / f"{name}.png").exists():
        lines += [f".. image:: _static/benchmarks/{name}.png", f"   :alt: {title}", ""]
    return lines


def replace_between(path: Path, markers: tuple[str, str], body: list[str]) -> None:
    """Rewrite the lines strictly between the two marker lines of ``path``."""
    text = path.read_text()
    start, end = (text.index(marker) for marker in markers)
    head = text[: start + len(markers[0])]
    path.write_text("\n".join([head, "", *body, text[end:]]))


def render(reports: Sequence[dict[str, Any]]) -> None:
    markdown = [line for report in reports for line in markdown_section(report)]
    replace_between(README, MARKDOWN_MARKERS, markdown)
    rst = [line for report in reports for line in rst_section(report)]
    replace_between(DOCS_PAGE, RST_MARKERS, rst)
    print(f"updated {README.relative_to(ROOT)} and {DOCS_PAGE.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes for every script")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--no-run", action="store_true", help="only regenerate the tables from the JSON results"
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, help="run these benchmarks only (default: all)"
    )
    args = parser.parse_args(argv)
    if not args.no_run:
        for name in args.only or BENCHMARKS:
            run_benchmark(name, args)
    render(load_reports())


if __name__ == "__main__":
    main()
