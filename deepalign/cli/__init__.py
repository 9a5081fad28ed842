"""The ``deepalign`` command: the application built on the library's public API.

``import deepalign`` does not import this package (nor matplotlib). One module per job, each
with ``register(subparsers)`` (adds its subcommand and sets ``handler=run``) and
``run(args) -> int``; :func:`main` builds the top parser from :data:`JOBS`:

- ``deepalign.cli.reproduce``: ``deepalign reproduce {mosi,mosei,sims}``, the paper's
  Table III / Table I rows;
- ``deepalign.cli.ablation``: ``deepalign ablation``, Table II;
- ``deepalign.cli.floors``: ``deepalign floors``, ridge-regression floors of a dataset;

and the modules they share: :mod:`~deepalign.cli.options` (``--set``, ``--config``),
:mod:`~deepalign.cli.runs` (multi-seed runs and the resume policy, on
:mod:`deepalign.rundir`), :mod:`~deepalign.cli.tables`, :mod:`~deepalign.cli.plots`,
:mod:`~deepalign.cli.data` and :mod:`~deepalign.cli.experiment` (the table jobs' pipeline).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

import deepalign
from deepalign.cli.options import ConfigError

__all__ = ["JOBS", "build_parser", "main"]

JOBS = ("reproduce", "ablation", "floors", "prepare", "office_caltech", "deep_coral")
"""The job modules of :mod:`deepalign.cli`, in ``--help`` order; one absent from the
installation is left out."""


def build_parser() -> argparse.ArgumentParser:
    """The top parser with one subcommand per job module of :data:`JOBS` that exists."""
    parser = argparse.ArgumentParser(
        prog="deepalign",
        description="Reproduce the tables of deepalign (covariance alignment and Self-MM's "
        "ULGM for multimodal sentiment analysis): one subcommand per job; "
        "'deepalign JOB --help' lists its options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"deepalign {deepalign.__version__}",
        help="print the version and exit",
    )  # fmt: skip
    subparsers = parser.add_subparsers(dest="command", metavar="JOB", title="jobs")
    for name in JOBS:
        module = f"{__name__}.{name}"
        if importlib.util.find_spec(module) is None:
            continue  # not part of this installation
        importlib.import_module(module).register(subparsers)
    parser.set_defaults(handler=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deepalign`` command line.

    Args:
        argv: the arguments after the program's name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status (0 on success). A usage error or an option the job cannot use exits
        with status 2 and the reason, as argparse does.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["deepalign", *argv]  # what the records say was run
    if args.handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        job = _subparser(parser, args.command)
        job.error(str(error))  # exits with status 2
    return 2  # pragma: no cover - error() exits


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser
