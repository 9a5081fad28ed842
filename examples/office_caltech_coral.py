"""Closed-form CORAL on Office-Caltech10 (SURF) by the CORAL authors' protocol.

A thin entry point to the ``office-caltech`` job of the ``deepalign`` application
(:mod:`deepalign.cli.office_caltech`): the same options, e.g.

    python examples/office_caltech_coral.py --data DIR/office_caltech10_surf.npz
    python examples/office_caltech_coral.py --help

Deep CORAL on the same data is the ``deep-coral`` job (deepalign/cli/deep_coral.py).
Needs scikit-learn (deepalign[dev]).
"""

from deepalign.cli import office_caltech

if __name__ == "__main__":
    raise SystemExit(office_caltech.main())
