"""Reproduce the paper's Table II: every alignment spec (V-A, T+A, T-V/T-A/A-V, ...) against none.

Each spec is one row, trained on the same seeds as the reference row without alignment; the
table gives the paper's MAE and Corr beside this run's and, for every spec, the paired
difference to the reference (mean over seeds, 95 % interval, seeds on which it is better),
with a CSV of every seed's metrics and a plot of the differences. --estimator plugin unbiased
runs every spec with both estimators of the loss; --private negated gives the paper's unbounded
"+" terms. One folder per run: --resume continues an interrupted ablation. Without a dataset it
runs on synthetic data and says so.

    python examples/ablation_table2.py --quick
    python examples/ablation_table2.py --data mosi.pkl --bert minilm --no-finetune-text \\
        --seeds 1111..1120 --estimator plugin unbiased
"""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    # The same as the command `deepalign ablation ...` (see `deepalign ablation --help`).
    status = main(["ablation", *sys.argv[1:]])
    if status:
        sys.exit(status)
