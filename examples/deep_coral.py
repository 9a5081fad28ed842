"""Deep CORAL: the positive control (two moons, rotated target) and the Office-Caltech10 λ grid
with label-free selection of λ. A thin entry point to :mod:`deepalign.cli.deep_coral`::

    python examples/deep_coral.py control --out runs/deep_coral_control
    python examples/deep_coral.py office-caltech --out runs/deep_coral_office --resume
    python examples/deep_coral.py report --out runs/deep_coral_office

Needs scikit-learn and skada (deepalign[dev]); ``--help`` lists every option.
"""

import sys

from deepalign.cli.deep_coral import main

if __name__ == "__main__":
    sys.exit(main())
