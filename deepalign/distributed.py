"""Small helpers over :mod:`torch.distributed` shared by the ULGM, the trainer and the examples.

Every function works without a process group too (one process: rank 0 of a world of 1), so the
same code runs under ``python script.py`` and ``torchrun --nproc_per_node=N script.py``. See
:doc:`/distributed` for the mathematics and the commands.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "gather_rows",
    "init_from_env",
    "is_active",
    "is_main",
    "rank",
    "should_sync",
    "unique_first",
    "world_size",
]


def is_active() -> bool:
    """Whether a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def should_sync(sync_dist: bool | None) -> bool:
    """Resolve a ``sync_dist`` option: ``None`` syncs whenever :func:`is_active`.

    Raises:
        TypeError: if ``sync_dist`` is not ``True``, ``False`` or ``None``.
        ValueError: for ``True`` without an initialised process group.
    """
    if sync_dist is None:
        return is_active()
    if not isinstance(sync_dist, bool):
        raise TypeError(f"sync_dist: expected True, False or None, got {sync_dist!r}")
    if sync_dist and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("sync_dist: expected an initialised process group for True, got none")
    return sync_dist


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process logs and writes checkpoints: rank 0."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by ``torchrun``.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them
    (a plain ``python`` launch) nothing happens.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default ``None`` picks nccl when CUDA is available,
            else gloo.

    Returns:
        Whether this call initialised the process group (then the caller should destroy it with
        :func:`torch.distributed.destroy_process_group` when done).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``x``, concatenated in rank order; ranks may hold different counts.

    Without an active process group it returns ``x``. Not differentiable: for statistics,
    banks and metrics.

    Shape:
        - x: :math:`(N_r, *)` on rank :math:`r`, the trailing shape equal on all ranks
        - output: :math:`(\\sum_r N_r, *)`

    Example:
        >>> gather_rows(torch.arange(3)).tolist()  # one process: unchanged
        [0, 1, 2]
    """
    if not is_active():
        return x
    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(c.item() for c in counts))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts, strict=True)])


def unique_first(indexes: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value, in increasing order.

    Used to drop the samples that :class:`~torch.utils.data.DistributedSampler` repeats to
    give every rank the same number of samples.

    Example:
        >>> unique_first(torch.tensor([4, 7, 4, 1, 7])).tolist()
        [0, 1, 3]
    """
    _, inverse = torch.unique(indexes, return_inverse=True)
    positions = torch.arange(len(indexes), device=indexes.device)
    first = torch.full_like(positions[: int(inverse.max()) + 1], len(indexes))
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first.sort().values
