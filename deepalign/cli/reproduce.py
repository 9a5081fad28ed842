"""``deepalign reproduce {mosi,mosei,sims}``: the paper's main table on one dataset.

MultiTaskMSA with the paper's V-A alignment over five seeds (Table III for MOSI and MOSEI,
Table I for SIMS); ``--baseline`` adds Self-MM (no alignment) on the same seeds, with paired
differences. Without a dataset file it runs on synthetic data and says so.
"""

from __future__ import annotations

import argparse
import textwrap

from deepalign.cli.experiment import EPILOG, add_options, execute
from deepalign.metrics import DATASETS

__all__ = ["register", "run"]

EXAMPLES = """examples:
  deepalign reproduce mosi --quick                 # seconds: a smoke run
  deepalign reproduce mosi --data unaligned_50.pkl --baseline
  deepalign reproduce mosi --data unaligned_50.pkl --set lr_text=2e-5 --set patience=4
  torchrun --nproc_per_node=2 -m deepalign reproduce mosi --data unaligned_50.pkl
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand."""
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper's table on MOSI, MOSEI or SIMS (V-A alignment, 5 seeds)",
        description=_describe(__doc__),
        epilog=f"{EPILOG}\n\n{EXAMPLES}",
        formatter_class=_Formatter,
    )
    parser.add_argument("dataset", choices=DATASETS, help="the dataset whose table to reproduce")
    add_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``deepalign reproduce``; returns the exit status."""
    execute(args, job=f"reproduce_{args.dataset}", dataset=args.dataset)
    return 0


def _describe(doc: str | None) -> str:
    """The second paragraph of a module's docstring as a ``--help`` description."""
    text = " ".join((doc or "").split("\n\n")[1].split()).replace("``", "")
    return textwrap.fill(text, 78)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's examples kept as written."""
