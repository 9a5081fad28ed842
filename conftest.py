"""Test-wide settings."""

import torch

# The tests use small tensors, where intra-op threads cost more than they give, and a shared
# 2-core machine, where oversubscribed threads spin: one thread runs the suite far faster.
torch.set_num_threads(1)
