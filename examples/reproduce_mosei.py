"""Reproduce the paper's Table III on CMU-MOSEI: MultiTaskMSA with V-A alignment, 5 seeds.

Without a dataset (no --data and no $DEEPALIGN_DATA/MOSEI/Processed/unaligned_50.pkl) it runs on
synthetic MOSEI-shaped data and says so. --baseline adds Self-MM (no alignment) on the same
seeds, with paired differences. Examples:

    python examples/reproduce_mosei.py                       # embedded default: synthetic data
    python examples/reproduce_mosei.py --quick               # seconds: a smoke run
    python examples/reproduce_mosei.py --data unaligned_50.pkl --baseline
    torchrun --nproc_per_node=2 examples/reproduce_mosei.py --data unaligned_50.pkl
"""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    # The same as the command `deepalign reproduce mosei ...` (see `deepalign reproduce --help`).
    status = main(["reproduce", "mosei", *sys.argv[1:]])
    if status:
        sys.exit(status)
