"""The data of the jobs: a file (``--data``, ``$DEEPALIGN_DATA``) or synthetic data."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepalign.cli.options import ConfigError, slug
from deepalign.data import PRESETS as DATA_PRESETS
from deepalign.data import (
    CorruptPickleError,
    DataFormatError,
    MMSADataset,
    UnsafePickleError,
    load_mmsa,
    make_synthetic,
)

__all__ = ["LoadedData", "default_data_path", "load_data", "warn_synthetic"]

SYNTHETIC_TRAIN = 500  # the embedded default: full MOSI shapes, a few minutes on 2 CPU cores
SYNTHETIC_EPOCHS = 8
QUICK_BATCH_SIZE = 8
# --quick: this many batches of training data (of each split of a file): two optimiser steps
# of the presets' accumulation over 4 batches, or one per process under torchrun with 2
QUICK_BATCHES = 8
QUICK_EPOCHS = 2
DATA_FILES = {"mosi": "MOSI", "mosei": "MOSEI", "sims": "SIMS"}

_MIB = 1 << 20


def default_data_path(dataset: str) -> Path:
    """``$DEEPALIGN_DATA/<DATASET>/Processed/unaligned_<50 or 39>.pkl`` (``$DEEPALIGN_DATA``
    defaults to ``data``): where the jobs look for a dataset without ``--data``."""
    root = Path(os.environ.get("DEEPALIGN_DATA", "data"))
    file = "unaligned_39.pkl" if dataset == "sims" else "unaligned_50.pkl"
    return root / DATA_FILES[dataset] / "Processed" / file


@dataclass
class LoadedData:
    """What :func:`load_data` returns.

    Attributes:
        splits: ``{"train": ..., "valid": ..., "test": ...}``.
        synthetic: whether the data is synthetic.
        source: the file's path as given (its name when absolute: no machine path in a
            record), or ``"synthetic data"`` (for titles).
        tag: a short name for folder names (the file's stem, ``"synthetic"``, ...).
        data_id: what identifies the data (for a file: its name, size and the SHA-256 of its
            first MiB; ``quick_head`` with ``--quick``), stored with every run.
    """

    splits: dict[str, MMSADataset]
    synthetic: bool
    source: str
    tag: str
    data_id: dict[str, Any]


def _file_id(path: Path) -> dict[str, Any]:
    """The file's name, size and the SHA-256 of its first MiB (cheap, and enough to tell two
    releases apart; no machine path, so that a moved file still resumes)."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_MIB)).hexdigest()
    return {"file": path.name, "size": path.stat().st_size, "sha256_first_mib": head}


def _head(splits: Mapping[str, MMSADataset], n: int) -> dict[str, MMSADataset]:
    """The first ``n`` samples of every split (``--quick`` on a file)."""
    out = {}
    for name, data in splits.items():
        k = min(n, len(data))
        out[name] = MMSADataset(
            name,
            {key: value[:k] for key, value in data.tensors.items()},
            {key: value[:k] for key, value in data.labels.items()},
            data.ids[:k],
            data.raw_text[:k],
        )
    return out


def load_data(args: argparse.Namespace, dataset: str) -> LoadedData:
    """The data the options ask for.

    ``args.data`` when given (a missing file is an error, never a fallback), else
    ``$DEEPALIGN_DATA/<DATASET>/Processed/unaligned_*.pkl`` when it exists, else synthetic
    data (``args.n_train`` samples of training data). With ``args.quick``, a file is cut to
    its first few batches per split (a smoke test of that file) and synthetic data is tiny.

    Args:
        args: parsed options with ``data``, ``quick`` and ``n_train``.
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (the synthetic layout and the default
            path).

    Returns:
        A :class:`LoadedData`.

    Raises:
        ConfigError: if ``args.data`` is not a file, or ``n_train`` is given with a file.
    """
    if args.data is not None:
        if not args.data.is_file():
            raise ConfigError(f"--data: no such file: {args.data}")
        path: Path | None = args.data
    else:
        default = default_data_path(dataset)
        path = default if default.is_file() else None
    if path is None:
        n_train = (
            QUICK_BATCHES * QUICK_BATCH_SIZE if args.quick else args.n_train or SYNTHETIC_TRAIN
        )
        options = {"seq_len": 6, "text_dim": 16} if args.quick else {}
        splits = make_synthetic(dataset, n_train=n_train, seed=0, **options)
        data_id = {"synthetic": dataset, "n_train": n_train, "seed": 0, **options}
        tag = "synthetic-quick" if args.quick else "synthetic"
        return LoadedData(splits, True, "synthetic data", tag, data_id)
    if args.n_train is not None:
        raise ConfigError("--n-train: sets the size of synthetic data; it has no use with a file")
    limit = DATA_PRESETS[dataset].label_limit
    try:
        splits = load_mmsa(path, label_range=(-limit, limit))
    except (DataFormatError, UnsafePickleError, CorruptPickleError) as error:
        raise ConfigError(f"--data: {error}") from None
    data_id = _file_id(path)
    tag = slug(path.stem)
    if args.quick:
        n = QUICK_BATCHES * QUICK_BATCH_SIZE
        splits = _head(splits, n)
        data_id["quick_head"] = n
        tag += "-quick"
    source = path.name if path.is_absolute() else str(path)
    return LoadedData(splits, False, source, tag, data_id)


def warn_synthetic(what: str) -> None:
    """Say loudly, once, on stderr, that a run uses synthetic data."""
    banner = "=" * 78
    print(
        f"\n{banner}\nNO DATASET FILE: running on SYNTHETIC data ({what}).\nThese numbers say "
        "nothing about the paper's claims. Pass --data PATH to an MMSA pickle or set "
        f"DEEPALIGN_DATA.\n{banner}",
        file=sys.stderr,
    )
