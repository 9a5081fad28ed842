"""deepalign: covariance alignment and self-supervised unimodal labels for multimodal sentiment
analysis (Lai et al.; Self-MM, Yu et al. 2021), as drop-in PyTorch components."""

from deepalign import data, functional, metrics
from deepalign._checks import is_validation_enabled, set_validation, validation
from deepalign.alignment import (
    CovarianceAlignmentLoss,
    FixedProjection,
    ModalityAlignment,
    parse_spec,
)
from deepalign.model import MSAConfig, MultiTaskMSA
from deepalign.ulgm import ULGM

__version__ = "0.1.0"

__all__ = [
    "ULGM",
    "CovarianceAlignmentLoss",
    "FixedProjection",
    "MSAConfig",
    "ModalityAlignment",
    "MultiTaskMSA",
    "__version__",
    "data",
    "functional",
    "is_validation_enabled",
    "metrics",
    "parse_spec",
    "set_validation",
    "validation",
]
