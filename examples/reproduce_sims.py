"""Reproduce the paper's Table I on CH-SIMS: MultiTaskMSA with V-A alignment, 5 seeds.

Without a dataset (no --data and no $DEEPALIGN_DATA/SIMS/Processed/unaligned_39.pkl) it runs on
synthetic SIMS-shaped data and says so. The SIMS preset uses bert-base-chinese (pass a local
copy with --bert). --baseline adds Self-MM (no alignment) on the same seeds. Examples:

    python examples/reproduce_sims.py                       # embedded default: synthetic data
    python examples/reproduce_sims.py --quick               # seconds: a smoke run
    python examples/reproduce_sims.py --data unaligned_39.pkl --bert ./bert-base-chinese
"""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    # The same as the command `deepalign reproduce sims ...` (see `deepalign reproduce --help`).
    status = main(["reproduce", "sims", *sys.argv[1:]])
    if status:
        sys.exit(status)
