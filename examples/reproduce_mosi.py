"""Reproduce the paper's Table III on CMU-MOSI: MultiTaskMSA with V-A alignment, 5 seeds.

Without a dataset (no --data and no $DEEPALIGN_DATA/MOSI/Processed/unaligned_50.pkl) it runs on
synthetic MOSI-shaped data and says so. --baseline adds Self-MM (no alignment) on the same
seeds, with paired differences. Every field of the configuration: --config FILE.json and
--set field=value. Examples:

    python examples/reproduce_mosi.py                       # embedded default: synthetic data
    python examples/reproduce_mosi.py --quick               # seconds: a smoke run
    python examples/reproduce_mosi.py --data unaligned_50.pkl --baseline
    python examples/reproduce_mosi.py --data unaligned_50.pkl --set lr_text=2e-5 --set patience=4
    torchrun --nproc_per_node=2 examples/reproduce_mosi.py --data unaligned_50.pkl
"""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    # The same as the command `deepalign reproduce mosi ...` (see `deepalign reproduce --help`).
    status = main(["reproduce", "mosi", *sys.argv[1:]])
    if status:
        sys.exit(status)
