"""Ridge-regression floors of an MSA dataset: what a linear model on pooled features reaches.

For each modality set, a ridge regression on the mean-pooled (over valid time steps),
train-standardised features is fitted on train, its penalty chosen on valid, and scored on test
with the field's metrics. A model worth reporting beats every row. Without --data it uses the
synthetic generator, and says so (the table in the docs' data page comes from this script):

    python examples/ridge_floors.py                   # synthetic MOSI, full size
    python examples/ridge_floors.py --quick           # seconds: a smoke run
    python examples/ridge_floors.py --data ../shared/data/mosi_bclstm/mosi_bclstm.pkl
"""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    # The same as the command `deepalign floors ...` (see `deepalign floors --help`).
    status = main(["floors", *sys.argv[1:]])
    if status:
        sys.exit(status)
