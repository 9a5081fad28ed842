"""Reproduce the paper's Table II: every alignment spec (V-A, T+A, T-V/T-A/A-V, ...) on MOSI.

Each spec is one row, trained with the same seeds; the paper's MAE and Corr stand beside this
run's. Use --dataset mosei for the MOSEI half and --private negated for the paper's unbounded
"+" terms. Without a dataset it runs on synthetic data and says so.

    python examples/ablation_table2.py --quick
    python examples/ablation_table2.py --data unaligned_50.pkl --seeds 1111 1112 1113
"""

import argparse
import sys

from deepalign.experiments import TABLE_II, main

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", choices=("mosi", "mosei"), default="mosi")
    known, rest = pre.parse_known_args(sys.argv[1:])
    main(rest, dataset=known.dataset, description=__doc__.splitlines()[0], specs=list(TABLE_II))
