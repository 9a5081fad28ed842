"""``deepalign ablation``: the paper's Table II, every alignment spec against none.

Each spec is one row, trained on the same seeds as the reference row without alignment; the
table gives the paper's MAE and Corr beside this run's and, for every spec, the paired
difference to the reference (mean over seeds, 95 % interval, seeds on which it is better),
with a CSV of every seed's metrics and a plot of the differences. ``--estimator plugin
unbiased`` runs every spec with both estimators of the loss; ``--private negated`` gives the
paper's unbounded "+" terms. One folder per run: ``--resume`` continues an interrupted
ablation. Without a dataset file it runs on synthetic data and says so.
"""

from __future__ import annotations

import argparse

from deepalign.cli.experiment import EPILOG, add_options, execute
from deepalign.cli.reproduce import _describe, _Formatter
from deepalign.metrics import DATASETS

__all__ = ["register", "run"]

EXAMPLES = """examples:
  deepalign ablation --quick
  deepalign ablation --data mosi.pkl --bert minilm --no-finetune-text \\
      --seeds 1111..1120 --estimator plugin unbiased
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ablation`` subcommand."""
    parser = subparsers.add_parser(
        "ablation",
        help="the paper's Table II: every alignment spec against no alignment",
        description=_describe(__doc__),
        epilog=f"{EPILOG}\n\n{EXAMPLES}",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, default="mosi", help="the dataset (its presets and metrics)"
    )
    add_options(parser, ablation=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``deepalign ablation``; returns the exit status."""
    execute(args, job="ablation_table2", dataset=args.dataset, ablation=True)
    return 0
