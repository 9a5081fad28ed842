"""Test-wide settings and fixtures."""

import os
from pathlib import Path

import pytest
import torch

# The tests use small tensors, where intra-op threads cost more than they give, and a shared
# 2-core machine, where oversubscribed threads spin: one thread runs the suite far faster.
torch.set_num_threads(1)

SHARED = Path(os.environ.get("DEEPALIGN_SHARED", Path(__file__).parent.parent / "shared"))
MOSI_BCLSTM = SHARED / "data" / "mosi_bclstm" / "mosi_bclstm.pkl"


@pytest.fixture(scope="session")
def real_mosi_path() -> Path:
    """The real CMU-MOSI file of shared/data (see its README); skips when it is absent."""
    if not MOSI_BCLSTM.exists():
        pytest.skip(f"real MOSI file absent: {MOSI_BCLSTM} (set DEEPALIGN_SHARED)")
    return MOSI_BCLSTM
