"""MSA datasets in the MMSA processed-pickle layout: a safe loader, a synthetic generator, collate.

:func:`load_mmsa` reads the ``.pkl`` files of the MMSA toolkit ([Mao2022]_) for CMU-MOSI
([Zadeh2016]_), CMU-MOSEI ([Zadeh2018]_) and CH-SIMS ([Yu2020]_) with a restricted unpickler;
:func:`make_synthetic` builds data of the same layout with planted structure. Both return one
:class:`MMSADataset` per split, whose items :func:`collate` batches for a
:class:`torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepalign._checks import check_choice
from deepalign._safe_pickle import SafeUnpickler, UnsafePickleError, safe_load
from deepalign._synthetic import PRESETS, synthetic_mmsa_dict

__all__ = [
    "PRESETS",
    "DataCleaningWarning",
    "MMSADataset",
    "SafeUnpickler",
    "UnsafePickleError",
    "collate",
    "load_mmsa",
    "make_synthetic",
    "synthetic_mmsa_dict",
]

SPLITS = ("train", "valid", "test")
FEATURE_MODALITIES = ("text", "audio", "vision")
UNIMODAL_LABEL_KEYS = {
    "T": "regression_labels_T",
    "A": "regression_labels_A",
    "V": "regression_labels_V",
}
_STD_FLOOR = 1e-6


class DataCleaningWarning(UserWarning):
    """Non-finite feature values were zeroed or lengths clipped while loading a dataset."""


class MMSADataset(Dataset):
    """One split of an MSA dataset: padded feature sequences, lengths, labels and ids.

    Items are dicts (see :func:`collate` for the batched layout):

    - ``index`` (int): position within the split, the key of the ULGM's label memory.
    - ``id`` (str, ``"video$_$clip"``) and ``raw_text`` (str, ``""`` when the file has none).
    - ``text_bert`` (int64, ``(3, L)``): ``[input_ids, attention_mask, token_type_ids]``,
      when the file has token ids.
    - ``text`` (float32, ``(L_f, d_t)``): pre-extracted text features, when the file has them.
    - ``text_lengths`` (int64 scalar): number of valid tokens (attention-mask sum, or ``L_f``
      without token ids).
    - ``audio`` (float32, ``(T_a, d_a)``), ``audio_lengths`` (int64 scalar in ``[1, T_a]``),
      ``vision`` (float32, ``(T_v, d_v)``), ``vision_lengths`` (int64 scalar in ``[1, T_v]``).
    - ``labels`` (dict of float32 scalars): ``M`` (multimodal), plus ``T``, ``A``, ``V`` when
      the file has unimodal labels (CH-SIMS).

    Args:
        split: the split's name, for messages.
        tensors: per-sample tensors with samples on dimension 0, keyed as the items are.
        labels: label name -> float32 tensor of shape ``(N,)``.
        ids: the sample ids.
        raw_text: the transcripts.

    Raises:
        ValueError: if the tensors, labels, ids and texts disagree on the number of samples.
    """

    def __init__(
        self,
        split: str,
        tensors: Mapping[str, torch.Tensor],
        labels: Mapping[str, torch.Tensor],
        ids: Sequence[str],
        raw_text: Sequence[str],
    ) -> None:
        self.split = split
        self.tensors = dict(tensors)
        self.labels = dict(labels)
        self.ids = list(ids)
        self.raw_text = list(raw_text)
        sizes = {f"tensors[{k!r}]": v.shape[0] for k, v in self.tensors.items()}
        sizes |= {f"labels[{k!r}]": v.shape[0] for k, v in self.labels.items()}
        sizes |= {"ids": len(self.ids), "raw_text": len(self.raw_text)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"split {split!r}: expected one number of samples, got {sizes}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        item: dict[str, Any] = {
            "index": index,
            "id": self.ids[index],
            "raw_text": self.raw_text[index],
        }
        item |= {key: value[index] for key, value in self.tensors.items()}
        item["labels"] = {key: value[index] for key, value in self.labels.items()}
        return item

    @property
    def dims(self) -> dict[str, int]:
        """Feature width of each modality that has features, e.g. ``{"audio": 5, ...}``."""
        return {m: self.tensors[m].shape[2] for m in FEATURE_MODALITIES if m in self.tensors}

    @property
    def seq_lens(self) -> dict[str, int]:
        """Padded length of each sequence: ``text`` (features), ``text_bert``, audio, vision."""
        lens = {m: self.tensors[m].shape[1] for m in FEATURE_MODALITIES if m in self.tensors}
        if "text_bert" in self.tensors:
            lens["text_bert"] = self.tensors["text_bert"].shape[2]
        return lens

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors.items())
        labels = list(self.labels)
        return f"MMSADataset(split={self.split!r}, n={len(self)}, {shapes}, labels={labels})"


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`MMSADataset` (the ``collate_fn`` of a DataLoader).

    Tensors are stacked; ``index`` becomes an int64 tensor; ``id`` and ``raw_text`` stay lists.

    Shape:
        - ``index``, ``*_lengths``: ``(B,)``, int64 on the CPU.
        - ``text_bert``: ``(B, 3, L)`` int64; ``text``: ``(B, L_f, d_t)``;
          ``audio``: ``(B, T_a, d_a)``; ``vision``: ``(B, T_v, d_v)``, float32.
        - ``labels[k]``: ``(B,)`` float32 for each label key ``k``.

    Args:
        items: dataset items, all with the same keys.

    Returns:
        The batch dict, with the keys of the items.

    Raises:
        ValueError: if ``items`` is empty or the items have different keys.

    Example:
        >>> splits = make_synthetic("mosi", n_train=8, seq_len=6, text_dim=4, seed=0)
        >>> batch = collate([splits["train"][i] for i in range(4)])
        >>> batch["audio"].shape, batch["audio_lengths"].dtype, batch["labels"]["M"].shape
        (torch.Size([4, 6, 5]), torch.int64, torch.Size([4]))
        >>> batch["index"].tolist()
        [0, 1, 2, 3]
    """
    if len(items) == 0:
        raise ValueError("items: expected at least one item, got an empty sequence")
    keys = list(items[0])
    for position, item in enumerate(items):
        if list(item) != keys:
            raise ValueError(f"items[{position}]: expected the keys {keys}, got {list(item)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        if key == "labels":
            batch[key] = {k: torch.stack([v[k] for v in values]).float() for k in values[0]}
        elif key == "index":
            batch[key] = torch.tensor(values, dtype=torch.int64)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def load_mmsa(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    standardize: Sequence[str] = ("audio", "vision"),
) -> dict[str, MMSADataset]:
    """Load an MMSA processed pickle (or an in-memory dict of that layout), one dataset per split.

    The file is read with :class:`SafeUnpickler`: only numpy arrays, dtypes and scalars and
    builtin containers are reconstructed, so a tampered file raises instead of running code.
    Non-finite audio, vision and text-feature values become 0 and lengths are clipped to
    ``[1, T]``; both are counted and reported in one :class:`DataCleaningWarning`. Files
    without ``audio_lengths``/``vision_lengths`` (the aligned ones) take the lengths from the
    ``text_bert`` attention mask.

    Standardisation fits a per-feature mean and standard deviation on the valid (unpadded) time
    steps of the train split and applies them to every split; padding stays 0:

    .. math::

        x_{n,t,j} \\leftarrow \\frac{x_{n,t,j} - \\mu_j}{\\max(\\sigma_j, 10^{-6})}
        \\quad \\text{for } t < \\ell_n, \\qquad
        \\mu_j, \\sigma_j \\text{ over } \\{(n, t) : n \\in \\text{train}, t < \\ell_n\\}.

    Shape:
        See :class:`MMSADataset` for the items.

    Args:
        source: path of the ``.pkl`` file, or the dict it holds.
        standardize: feature modalities to standardise, a subset of ``("text", "audio",
            "vision")``. Default ``("audio", "vision")``; ``()`` keeps MMSA's raw features.

    Returns:
        ``{"train": MMSADataset, "valid": MMSADataset, "test": MMSADataset}``.

    Raises:
        UnsafePickleError: if the file references anything but numpy and builtin types.
        ValueError: if a split or key is missing, an array has the wrong number of dimensions,
            the splits disagree on a feature width, or the number of samples differs across the
            keys of a split; the message names the split, the key, what was expected and found.
        TypeError: if ``source`` holds something other than a dict of splits.

    Example:
        >>> raw = synthetic_mmsa_dict("sims", n_train=6, seq_len=5, text_dim=3, seed=1)
        >>> splits = load_mmsa(raw)
        >>> {name: len(ds) for name, ds in splits.items()}
        {'train': 6, 'valid': 2, 'test': 2}
        >>> sorted(splits["train"][0]["labels"])
        ['A', 'M', 'T', 'V']
    """
    for modality in standardize:
        check_choice(modality, "standardize", FEATURE_MODALITIES)
    if isinstance(source, Mapping):
        raw, name = source, "<dict>"
    else:
        raw, name = safe_load(source), os.fspath(source)
    return _splits_from_raw(raw, source=name, standardize=tuple(standardize))


def make_synthetic(
    preset: str = "mosi",
    *,
    n_train: int | None = None,
    seed: int = 0,
    standardize: Sequence[str] = (),
    **options: Any,
) -> dict[str, MMSADataset]:
    """Synthetic MSA data in a real preset's layout, with planted structure (see :doc:`/data`).

    Builds the raw dict with :func:`synthetic_mmsa_dict` and passes it through
    :func:`load_mmsa`, so it has exactly the structure of loaded data.

    Shape:
        As the preset (see :data:`PRESETS`), e.g. MOSI: text ids ``(3, 50)``, text features
        ``(50, 768)``, audio ``(375, 5)``, vision ``(500, 20)`` per item.

    Args:
        preset: ``"mosi"``, ``"mosei"`` or ``"sims"``.
        n_train: train size; valid and test keep the preset's proportions. Default: the
            preset's real train size.
        seed: the random seed; the same arguments give the same data.
        standardize: as in :func:`load_mmsa`; default ``()`` (the features are already
            roughly unit scale).
        **options: the knobs of :func:`synthetic_mmsa_dict` (``seq_len``, ``text_dim``,
            ``text_signal``, ``shared_weight``, ...).

    Returns:
        ``{"train": MMSADataset, "valid": MMSADataset, "test": MMSADataset}``.

    Raises:
        ValueError: if ``preset`` is unknown or a knob is out of range.

    Example:
        >>> splits = make_synthetic("mosi", n_train=20, seq_len=8, text_dim=6, seed=0)
        >>> splits["train"]
        MMSADataset(split='train', n=20, text_bert=(20, 3, 8), text=(20, 8, 6), text_lengths=(20,), audio=(20, 8, 5), audio_lengths=(20,), vision=(20, 8, 20), vision_lengths=(20,), labels=['M'])
    """  # noqa: E501
    raw = synthetic_mmsa_dict(preset, n_train=n_train, seed=seed, **options)
    return load_mmsa(raw, standardize=standardize)


def _splits_from_raw(
    raw: object, *, source: str, standardize: tuple[str, ...]
) -> dict[str, MMSADataset]:
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{source}: expected a dict with the splits {list(SPLITS)}, got {type(raw).__name__}"
        )
    report = _CleaningReport()
    parsed = {split: _parse_split(raw, split, source, report) for split in SPLITS}
    _check_widths_agree(parsed, source)
    report.warn_once(source)
    for modality in standardize:
        _standardize(parsed, modality, source)
    return {
        split: MMSADataset(
            split, fields["tensors"], fields["labels"], fields["ids"], fields["raw_text"]
        )
        for split, fields in parsed.items()
    }


class _CleaningReport:
    """Counts of the repairs made while parsing, reported in one warning."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str, count: int) -> None:
        if count:
            self.counts[what] = self.counts.get(what, 0) + count

    def warn_once(self, source: str) -> None:
        if self.counts:
            listed = "; ".join(f"{what}: {count}" for what, count in self.counts.items())
            warnings.warn(
                f"{source}: cleaned the data ({listed})", DataCleaningWarning, stacklevel=4
            )


def _parse_split(
    raw: Mapping[str, Any], split: str, source: str, report: _CleaningReport
) -> dict[str, Any]:
    if split not in raw:
        raise ValueError(f"{source}: expected the split {split!r}, found only {sorted(raw)}")
    data = raw[split]
    where = f"{source}: split {split!r}"
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: expected a dict of arrays, got {type(data).__name__}")
    required = ["id", "audio", "vision", "regression_labels"]
    missing = [key for key in required if key not in data]
    if "text" not in data and "text_bert" not in data:
        missing.append("text or text_bert")
    if missing:
        raise ValueError(f"{where}: expected the keys {missing}, found only {sorted(data)}")

    labels = {"M": _labels(data, "regression_labels", where)}
    labels |= {
        k: _labels(data, key, where) for k, key in UNIMODAL_LABEL_KEYS.items() if key in data
    }
    n = labels["M"].shape[0]
    ids = _strings(data, "id", where, n)
    raw_text = _strings(data, "raw_text", where, n) if "raw_text" in data else [""] * n

    tensors: dict[str, torch.Tensor] = {}
    if "text_bert" in data:
        text_bert = _array(data, "text_bert", where, shape=(n, 3, None))
        tensors["text_bert"] = torch.from_numpy(np.rint(text_bert).astype(np.int64))
        mask_lengths = tensors["text_bert"][:, 1].sum(dim=1)
    if "text" in data:
        tensors["text"] = _features(data, "text", where, n, report)
    text_len = tensors["text_bert"].shape[2] if "text_bert" in data else tensors["text"].shape[1]
    text_lengths = mask_lengths if "text_bert" in data else torch.full((n,), text_len)
    tensors["text_lengths"] = _clip_lengths(text_lengths, text_len, "text_lengths", report)
    for modality in ("audio", "vision"):
        tensors[modality] = _features(data, modality, where, n, report)
        key = f"{modality}_lengths"
        lengths = (
            torch.from_numpy(_array(data, key, where, shape=(n,)).astype(np.int64))
            if key in data
            else tensors["text_lengths"]
        )
        tensors[key] = _clip_lengths(lengths, tensors[modality].shape[1], key, report)
    return {"tensors": tensors, "labels": labels, "ids": ids, "raw_text": raw_text}


def _array(
    data: Mapping[str, Any], key: str, where: str, *, shape: tuple[int | None, ...]
) -> np.ndarray:
    """``data[key]`` as a numeric array; ints in ``shape`` must match, ``None`` matches any size."""
    try:
        array = np.asarray(data[key])
    except ValueError as error:  # ragged nested lists
        raise ValueError(
            f"{where}, key {key!r}: expected a rectangular array, found {error}"
        ) from None
    sizes = ", ".join("*" if s is None else str(s) for s in shape)
    pattern = f"({sizes},)" if len(shape) == 1 else f"({sizes})"
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}, key {key!r}: expected a numeric array, found dtype {array.dtype}"
        )
    if array.ndim != len(shape) or any(
        want is not None and size != want for size, want in zip(array.shape, shape, strict=False)
    ):
        raise ValueError(
            f"{where}, key {key!r}: expected shape {pattern} (N = {shape[0]} samples from "
            f"regression_labels), found shape {array.shape}"
        )
    return array


def _labels(data: Mapping[str, Any], key: str, where: str) -> torch.Tensor:
    array = np.asarray(data[key], dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"{where}, key {key!r}: expected shape (N,) or (N, 1), found {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{where}, key {key!r}: expected finite labels, found NaN or Inf")
    return torch.from_numpy(array.astype(np.float32))


def _strings(data: Mapping[str, Any], key: str, where: str, n: int) -> list[str]:
    values = [str(value) for value in data[key]]
    if len(values) != n:
        raise ValueError(
            f"{where}, key {key!r}: expected {n} entries (N from regression_labels), "
            f"found {len(values)}"
        )
    return values


def _features(
    data: Mapping[str, Any], key: str, where: str, n: int, report: _CleaningReport
) -> torch.Tensor:
    array = _array(data, key, where, shape=(n, None, None)).astype(np.float32)
    non_finite = ~np.isfinite(array)
    report.add(f"non-finite {key} values set to 0", int(non_finite.sum()))
    array[non_finite] = 0.0
    return torch.from_numpy(array)


def _clip_lengths(
    lengths: torch.Tensor, max_len: int, key: str, report: _CleaningReport
) -> torch.Tensor:
    clipped = lengths.to(torch.int64).clamp(1, max_len)
    report.add(f"{key} clipped to [1, T]", int((clipped != lengths).sum()))
    return clipped


def _check_widths_agree(parsed: Mapping[str, Mapping[str, Any]], source: str) -> None:
    reference = parsed["train"]["tensors"]
    for split, fields in parsed.items():
        for key, tensor in fields["tensors"].items():
            if key not in reference:
                raise ValueError(f"{source}: split {split!r} has the key {key!r} that train lacks")
            if tensor.dim() == 3 and tensor.shape[2] != reference[key].shape[2]:
                raise ValueError(
                    f"{source}: split {split!r}, key {key!r}: expected the train split's width "
                    f"{reference[key].shape[2]} on the last dimension, found {tensor.shape[2]}"
                )


def _valid_steps(tensors: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
    """``(N, T)`` bool mask of the unpadded time steps of ``tensors[modality]``."""
    steps = tensors[modality].shape[1]
    lengths = tensors[f"{modality}_lengths"].clamp(max=steps)
    return torch.arange(steps) < lengths[:, None]


def _standardize(parsed: Mapping[str, dict[str, Any]], modality: str, source: str) -> None:
    train = parsed["train"]["tensors"]
    if modality not in train:
        raise ValueError(f"standardize: {source} has no {modality!r} features to standardise")
    values = train[modality][_valid_steps(train, modality)].double()
    mean = values.mean(dim=0)
    std = values.std(dim=0, correction=0).clamp(min=_STD_FLOOR)
    for fields in parsed.values():
        tensors = fields["tensors"]
        scaled = ((tensors[modality].double() - mean) / std).float()
        tensors[modality] = torch.where(_valid_steps(tensors, modality)[..., None], scaled, 0.0)
