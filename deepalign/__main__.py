"""``python -m deepalign``: the ``deepalign`` command (:func:`deepalign.cli.main`)."""

import sys

from deepalign.cli import main

if __name__ == "__main__":
    sys.exit(main())
