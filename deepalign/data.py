"""MSA datasets in the MMSA processed-pickle layout: a safe loader, a synthetic generator, collate.

:func:`load_mmsa` reads the ``.pkl`` files of the MMSA toolkit ([Mao2022]_) for CMU-MOSI
([Zadeh2016]_), CMU-MOSEI ([Zadeh2018]_) and CH-SIMS ([Yu2020]_) with a restricted unpickler;
:func:`make_synthetic` builds data of the same layout with planted structure. Both return one
:class:`MMSADataset` per split, whose items :func:`collate` batches for a
:class:`torch.utils.data.DataLoader`.

The loader repairs nothing silently and raises only its documented errors:
:class:`DataFormatError` for content that does not fit the layout (naming the split and the
key), :class:`UnsafePickleError` and :class:`CorruptPickleError` for the byte stream (naming
the file); :doc:`/reliability` gives the fuzzing that checks it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from deepalign._checks import check_choice
from deepalign._safe_pickle import CorruptPickleError, SafeUnpickler, UnsafePickleError, safe_load
from deepalign._synthetic import LABEL_KEYS, PRESETS, synthetic_mmsa_dict

__all__ = [
    "LABEL_KEYS",
    "LABEL_RANGE",
    "PRESETS",
    "CorruptPickleError",
    "DataCleaningWarning",
    "DataFormatError",
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
LABEL_RANGE = (-3.0, 3.0)
_STD_FLOOR = 1e-6
_MAX_TOKEN_ID = 2**31 - 1
_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floating point


class DataFormatError(ValueError):
    """A dataset's content does not have the MMSA layout (see :doc:`/data`).

    The message names the source, the split and the key, what was expected and what was found.
    A :class:`ValueError`, so code that caught the loader's ValueErrors keeps working.
    """


class DataCleaningWarning(UserWarning):
    """What :func:`load_mmsa` repaired: non-finite features zeroed, values clipped on request.

    One warning per load, listing every repair by split and key.

    Args:
        message: the text of the warning.
        counts: ``{(split, key, repair): count}``, ``repair`` being ``"non-finite"`` (feature
            values set to 0) or ``"clipped"`` (lengths or labels clipped on request).

    Attributes:
        counts: the ``counts`` it was built with, for programs that act on them.

    Example:
        >>> import warnings
        >>> raw = synthetic_mmsa_dict("mosi", n_train=4, seq_len=3, text_dim=2, seed=0)
        >>> raw["valid"]["audio"][0, 0, :2] = float("nan")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = load_mmsa(raw)
        >>> caught[0].message.counts
        {('valid', 'audio', 'non-finite'): 2}
    """

    def __init__(
        self, message: str, counts: Mapping[tuple[str, str, str], int] | None = None
    ) -> None:
        super().__init__(message)
        self.counts = dict(counts or {})


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
    - ``labels`` (dict of float32 scalars), keyed by head name (:data:`LABEL_KEYS`):
      ``fusion`` (the multimodal label), plus ``text``, ``audio``, ``vision`` when the file has
      unimodal labels (CH-SIMS).

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
        """The padded length of each sequence (``text`` features, ``text_bert``, audio, vision)."""
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

    Returns exactly what :func:`torch.utils.data.default_collate` returns (it is called
    inside, so it also allocates in shared memory in worker processes): tensors are stacked,
    ``index`` becomes an int64 tensor, ``id`` and ``raw_text`` stay lists of str, ``labels``
    a dict of stacked tensors. It adds one check: every item has the same keys, at every level
    (:func:`~torch.utils.data.default_collate` takes the first item's keys, silently drops
    other items' extra keys and raises a bare :class:`KeyError` for missing ones).

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
        ValueError: if ``items`` is empty or two items have different keys (the message names
            the first item that differs and the keys of both).

    Example:
        >>> splits = make_synthetic("mosi", n_train=8, seq_len=6, text_dim=4, seed=0)
        >>> batch = collate([splits["train"][i] for i in range(4)])
        >>> batch["audio"].shape, batch["audio_lengths"].dtype, batch["labels"]["fusion"].shape
        (torch.Size([4, 6, 5]), torch.int64, torch.Size([4]))
        >>> batch["index"].tolist()
        [0, 1, 2, 3]
    """
    if len(items) == 0:
        raise ValueError("items: expected at least one item, got an empty sequence")
    for position, item in enumerate(items):
        _check_same_keys(items[0], item, f"items[{position}]")
    return default_collate(list(items))


def _check_same_keys(first: Any, other: Any, where: str) -> None:
    if not (isinstance(first, Mapping) and isinstance(other, Mapping)):
        return
    if list(other) != list(first):
        raise ValueError(
            f"{where}: expected the keys {list(first)} (those of items[0]), got {list(other)}"
        )
    for key in first:
        _check_same_keys(first[key], other[key], f"{where}[{key!r}]")


def load_mmsa(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    standardize: Sequence[str] = ("audio", "vision"),
    label_range: tuple[float, float] | None = LABEL_RANGE,
    clip_labels: bool = False,
    clip_lengths: bool = False,
) -> dict[str, MMSADataset]:
    """Load an MMSA processed pickle (or an in-memory dict of that layout), one dataset per split.

    The file is read with :class:`SafeUnpickler`: only numpy arrays, dtypes and scalars and
    builtin containers are reconstructed, so a tampered file raises instead of running code,
    and a truncated one raises instead of loading part of the data. Every key is then checked
    against the layout of :doc:`/data`; what does not fit raises a :class:`DataFormatError`
    naming the split and the key, and nothing is repaired silently:

    - non-finite audio, vision and text-feature values (MOSEI's audio has :math:`-\\infty`)
      become 0;
    - labels outside ``label_range`` and lengths outside ``[1, T]`` (``T`` the padded length of
      their sequence) are errors; ``clip_labels=True`` and ``clip_lengths=True`` clip them
      instead;
    - every repair is counted per split and key and reported in one
      :class:`DataCleaningWarning`.

    Files without ``audio_lengths``/``vision_lengths`` (the aligned ones) take the lengths from
    the ``text_bert`` attention mask.

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
        label_range: ``(low, high)`` that every label (``regression_labels`` and
            ``regression_labels_T/A/V``) must lie in; default :data:`LABEL_RANGE`,
            ``(-3, 3)`` of CMU-MOSI and CMU-MOSEI, which also holds CH-SIMS's ``(-1, 1)``:
            pass ``(-1, 1)`` to check a CH-SIMS file exactly. ``None`` checks no range.
        clip_labels: clip labels outside ``label_range`` to it (and report how many) instead of
            raising.
        clip_lengths: clip lengths outside ``[1, T]`` to it (and report how many) instead of
            raising.

    Returns:
        ``{"train": MMSADataset, "valid": MMSADataset, "test": MMSADataset}``.

    Raises:
        DataFormatError: if the content does not fit the layout: a missing split or key, an
            empty split, an array that is not numeric or has the wrong shape, sample counts
            that differ across the keys of a split, keys or feature widths that differ across
            splits, ids or texts that are not strings, NaN/Inf or out-of-range labels, lengths
            outside ``[1, T]``, token ids that are not whole numbers in ``[0, 2^31)`` or an
            attention mask that is not 0/1. The message names the split and the key (or, for
            keys that differ across splits, the splits that have and lack the key), what was
            expected and what was found.
        UnsafePickleError: if the file names a global or holds a pickle opcode that
            :class:`SafeUnpickler` refuses (a :class:`pickle.UnpicklingError`).
        CorruptPickleError: if the file is truncated or not a pickle (a
            :class:`pickle.UnpicklingError`); the message names the file and the byte offset.
        FileNotFoundError: if ``source`` is a path that does not exist (other
            :class:`OSError` for files that cannot be read).
        TypeError: if ``source`` is neither a path nor a mapping, or an option has the wrong
            type.
        ValueError: if an option has a wrong value (``standardize``, ``label_range``).

    Example:
        >>> raw = synthetic_mmsa_dict("sims", n_train=6, seq_len=5, text_dim=3, seed=1)
        >>> splits = load_mmsa(raw, label_range=(-1, 1))
        >>> {name: len(ds) for name, ds in splits.items()}
        {'train': 6, 'valid': 2, 'test': 2}
        >>> sorted(splits["train"][0]["labels"])
        ['audio', 'fusion', 'text', 'vision']
        >>> raw["test"]["audio_lengths"][1] = 9  # beyond the 5 stored time steps
        >>> load_mmsa(raw)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deepalign.data.DataFormatError: <dict>: split 'test', key 'audio_lengths': expected ...
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     clipped = load_mmsa(raw, clip_lengths=True)
        >>> clipped["test"][1]["audio_lengths"]
        tensor(5)
        >>> print(caught[0].message)
        <dict>: cleaned the data: split 'test', key 'audio_lengths': 1 length clipped to [1, 5]
    """
    for modality in standardize:
        check_choice(modality, "standardize", FEATURE_MODALITIES)
    options = _Options(
        label_range=_check_label_range(label_range),
        clip_labels=_check_bool(clip_labels, "clip_labels"),
        clip_lengths=_check_bool(clip_lengths, "clip_lengths"),
    )
    if options.clip_labels and options.label_range is None:
        raise ValueError("clip_labels: needs a label_range to clip to, got label_range=None")
    if isinstance(source, Mapping):
        raw, name = source, "<dict>"
    elif isinstance(source, str | os.PathLike):
        raw, name = safe_load(source), os.fspath(source)
    else:
        raise TypeError(f"source: expected a path or a dict of splits, got {type(source).__name__}")
    return _splits_from_raw(raw, source=name, standardize=tuple(standardize), options=options)


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
    :func:`load_mmsa` (with the preset's label range), so it has exactly the structure of
    loaded data.

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
        MMSADataset(split='train', n=20, text_bert=(20, 3, 8), text=(20, 8, 6), text_lengths=(20,), audio=(20, 8, 5), audio_lengths=(20,), vision=(20, 8, 20), vision_lengths=(20,), labels=['fusion'])
    """  # noqa: E501
    raw = synthetic_mmsa_dict(preset, n_train=n_train, seed=seed, **options)
    limit = PRESETS[preset].label_limit
    return load_mmsa(raw, standardize=standardize, label_range=(-limit, limit))


@dataclass(frozen=True)
class _Options:
    label_range: tuple[float, float] | None
    clip_labels: bool
    clip_lengths: bool


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return value


def _check_label_range(label_range: object) -> tuple[float, float] | None:
    if label_range is None:
        return None
    expected = "label_range: expected None or a pair (low, high) of numbers"
    if isinstance(label_range, str | bytes) or not isinstance(label_range, Sequence):
        raise TypeError(f"{expected}, got {type(label_range).__name__}")
    if len(label_range) != 2 or not all(
        isinstance(bound, int | float | np.integer | np.floating) and not isinstance(bound, bool)
        for bound in label_range
    ):
        raise TypeError(f"{expected}, got {label_range!r}")
    low, high = float(label_range[0]), float(label_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"label_range: expected finite low < high, got ({low}, {high})")
    return low, high


def _splits_from_raw(
    raw: object, *, source: str, standardize: tuple[str, ...], options: _Options
) -> dict[str, MMSADataset]:
    if not isinstance(raw, Mapping):
        raise DataFormatError(
            f"{source}: expected a dict with the splits {list(SPLITS)}, found {type(raw).__name__}"
        )
    report = _CleaningReport()
    parsed = {split: _parse_split(raw, split, source, options, report) for split in SPLITS}
    _check_splits_agree(parsed, source)
    for modality in standardize:
        _standardize(parsed, modality, source)
    report.warn_once(source)  # only for a load that succeeds
    return {
        split: MMSADataset(
            split, fields["tensors"], fields["labels"], fields["ids"], fields["raw_text"]
        )
        for split, fields in parsed.items()
    }


class _CleaningReport:
    """Counts of the repairs made while parsing, per split and key, reported in one warning."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.texts: dict[tuple[str, str, str], tuple[str, str]] = {}

    def add(self, split: str, key: str, repair: str, count: int, noun: str, what: str) -> None:
        """Count ``count`` repairs, described as e.g. ``"3 {noun}s {what}"``."""
        if count:
            self.counts[split, key, repair] = self.counts.get((split, key, repair), 0) + count
            self.texts[split, key, repair] = (noun, what)

    def warn_once(self, source: str) -> None:
        if self.counts:
            listed = "; ".join(
                f"split {split!r}, key {key!r}: {_plural(count, noun)} {what}"
                for (split, key, repair), count in self.counts.items()
                for noun, what in [self.texts[split, key, repair]]
            )
            warnings.warn(
                DataCleaningWarning(f"{source}: cleaned the data: {listed}", self.counts),
                stacklevel=4,
            )


class _Split:
    """One split's raw dict with the context that error messages and repairs need."""

    def __init__(
        self,
        data: Mapping[Any, Any],
        split: str,
        source: str,
        options: _Options,
        report: _CleaningReport,
    ) -> None:
        self.data, self.split, self.options, self.report = data, split, options, report
        self.where = f"{source}: split {split!r}"

    def error(self, key: str, message: str) -> DataFormatError:
        return DataFormatError(f"{self.where}, key {key!r}: {message}")

    def numeric(self, key: str) -> np.ndarray:
        """``data[key]`` as a numpy array of bool, integer or floating-point values."""
        value = self.data[key]
        try:
            array = np.asarray(value)
        except Exception as error:  # ragged or unconvertible input: say what numpy said
            raise self.error(
                key,
                f"expected a rectangular numeric array, found a {type(value).__name__} that "
                f"numpy cannot convert ({type(error).__name__}: {_short(error)})",
            ) from None
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise self.error(
                key, f"expected a numeric (bool, int or float) array, found dtype {array.dtype}"
            )
        return array

    def shaped(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        """``numeric(key)`` with ``shape``: ints must match, ``None`` is any size >= 1."""
        array = self.numeric(key)
        sizes = ", ".join("*" if s is None else str(s) for s in shape)
        pattern = f"({sizes},)" if len(shape) == 1 else f"({sizes})"
        if array.ndim != len(shape) or any(
            size != want if want is not None else size < 1
            for size, want in zip(array.shape, shape, strict=False)
        ):
            raise self.error(
                key,
                f"expected shape {pattern} (N = {shape[0]} samples from regression_labels, "
                f"every * at least 1), found shape {array.shape}",
            )
        return array

    def labels(self, key: str, n: int | None) -> torch.Tensor:
        array = self.numeric(key)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise self.error(key, f"expected shape (N,) or (N, 1), found {array.shape}")
        if n is not None and array.shape[0] != n:
            raise self.error(
                key, f"expected {n} labels (N from regression_labels), found {array.shape[0]}"
            )
        if n is None and array.shape[0] == 0:
            raise self.error(key, "expected at least one sample, found an empty split")
        array = array.astype(np.float64)
        finite = np.isfinite(array)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise self.error(
                key,
                f"expected finite labels, found {int((~finite).sum())} NaN or Inf "
                f"(the first at sample {first}: {array[first]})",
            )
        if self.options.label_range is not None:
            array = self.in_range(key, array, self.options.label_range)
        return torch.from_numpy(array.astype(np.float32))

    def in_range(self, key: str, array: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        low, high = bounds
        outside = (array < low) | (array > high)
        count = int(outside.sum())
        if count == 0:
            return array
        shown = f"[{low:g}, {high:g}]"
        if not self.options.clip_labels:
            first = int(np.flatnonzero(outside)[0])
            raise self.error(
                key,
                f"expected labels in label_range {shown}, found {count} outside (the first at "
                f"sample {first}: {array[first]:g}); pass the dataset's label_range, or "
                "clip_labels=True to clip them",
            )
        self.report.add(self.split, key, "clipped", count, "label", f"clipped to {shown}")
        return np.clip(array, low, high)

    def strings(self, key: str, n: int) -> list[str]:
        value = self.data[key]
        if not isinstance(value, list | tuple | np.ndarray) or (
            isinstance(value, np.ndarray) and value.ndim != 1
        ):
            found = f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else None
            raise self.error(
                key, f"expected a list of {n} strings, found {found or type(value).__name__}"
            )
        if len(value) != n:
            raise self.error(
                key, f"expected {n} entries (N from regression_labels), found {len(value)}"
            )
        for position, entry in enumerate(value):
            if not isinstance(entry, str):
                raise self.error(
                    key,
                    f"expected strings, found a {type(entry).__name__} at position {position}",
                )
        return [str(entry) for entry in value]

    def token_ids(self, n: int) -> torch.Tensor:
        key = "text_bert"
        array = self.shaped(key, (n, 3, None))
        if array.dtype.kind == "f":
            array = array.astype(np.float64)  # compare in float64: 2^31 overflows float16
            whole = np.isfinite(array)
            whole[whole] = array[whole] == np.rint(array[whole])
            if not whole.all():
                sample = int(np.argwhere(~whole)[0][0])
                raise self.error(
                    key,
                    "expected whole-number token ids, attention mask and segment ids, found "
                    f"NaN, Inf or a fraction (the first in sample {sample})",
                )
        bad = (array < 0) | (array > _MAX_TOKEN_ID)
        if bad.any():
            sample = int(np.argwhere(bad)[0][0])
            raise self.error(
                key,
                f"expected ids in [0, 2^31), found {int(bad.sum())} outside (the first in "
                f"sample {sample})",
            )
        mask = array[:, 1]
        not_binary = (mask != 0) & (mask != 1)
        if not_binary.any():
            sample = int(np.argwhere(not_binary)[0][0])
            raise self.error(
                key,
                f"expected an attention mask (row 1) of 0s and 1s, found other values (the "
                f"first in sample {sample})",
            )
        return torch.from_numpy(array.astype(np.int64))

    def features(self, key: str, n: int) -> torch.Tensor:
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 -> inf
            array = self.shaped(key, (n, None, None)).astype(np.float32)
        non_finite = ~np.isfinite(array)
        self.report.add(
            self.split, key, "non-finite", int(non_finite.sum()), "non-finite value", "set to 0"
        )
        array[non_finite] = 0.0
        return torch.from_numpy(array)

    def lengths(self, key: str, n: int) -> np.ndarray:
        array = self.shaped(key, (n,))
        if array.dtype.kind == "b":
            return array.astype(np.int64)
        if array.dtype.kind == "f":
            array = array.astype(np.float64)
            if not (np.isfinite(array).all() and (array == np.rint(array)).all()):
                raise self.error(key, "expected whole-number lengths, found NaN, Inf or a fraction")
        return array

    def fit_lengths(self, key: str, lengths: np.ndarray, steps: int, of: str) -> torch.Tensor:
        """``lengths`` in ``[1, steps]`` as int64, clipped on request, else an error."""
        outside = (lengths < 1) | (lengths > steps)
        count = int(outside.sum())
        if count:
            if not self.options.clip_lengths:
                first = int(np.flatnonzero(outside)[0])
                raise self.error(
                    key,
                    f"expected lengths in [1, {steps}] ({of}), found {count} outside (the first "
                    f"at sample {first}: {float(lengths[first]):g}); pass clip_lengths=True to "
                    "clip them",
                )
            lengths = np.clip(lengths, 1, steps)
            self.report.add(self.split, key, "clipped", count, "length", f"clipped to [1, {steps}]")
        return torch.from_numpy(np.asarray(lengths).astype(np.int64))


def _parse_split(
    raw: Mapping[Any, Any], split: str, source: str, options: _Options, report: _CleaningReport
) -> dict[str, Any]:
    if split not in raw:
        raise DataFormatError(
            f"{source}: expected the split {split!r}, found only {_list_keys(raw)}"
        )
    data = raw[split]
    if not isinstance(data, Mapping):
        raise DataFormatError(
            f"{source}: split {split!r}: expected a dict of arrays, found {type(data).__name__}"
        )
    required = ["id", "audio", "vision", "regression_labels"]
    missing = [key for key in required if key not in data]
    if "text" not in data and "text_bert" not in data:
        missing.append("text or text_bert")
    if missing:
        raise DataFormatError(
            f"{source}: split {split!r}: expected the keys {missing}, found only {_list_keys(data)}"
        )
    part = _Split(data, split, source, options, report)
    labels = {"fusion": part.labels(LABEL_KEYS["fusion"], None)}
    n = labels["fusion"].shape[0]
    labels |= {
        name: part.labels(key, n)
        for name, key in LABEL_KEYS.items()
        if name != "fusion" and key in data
    }
    ids = part.strings("id", n)
    raw_text = part.strings("raw_text", n) if "raw_text" in data else [""] * n

    tensors: dict[str, torch.Tensor] = {}
    if "text_bert" in data:
        tensors["text_bert"] = part.token_ids(n)
        text_lengths = tensors["text_bert"][:, 1].sum(dim=1).numpy()
        text_steps, text_of = tensors["text_bert"].shape[2], "the text_bert attention mask"
    if "text" in data:
        tensors["text"] = part.features("text", n)
    if "text_bert" not in data:
        text_steps, text_of = tensors["text"].shape[1], "the time steps of 'text'"
        text_lengths = np.full(n, text_steps)
    tensors["text_lengths"] = part.fit_lengths(
        "text_lengths", text_lengths, text_steps, f"{text_of}, {text_steps} positions"
    )
    for modality in ("audio", "vision"):
        tensors[modality] = part.features(modality, n)
        key, steps = f"{modality}_lengths", tensors[modality].shape[1]
        of = f"the {steps} time steps of {modality!r}"
        if key in data:
            lengths = part.lengths(key, n)
        else:  # aligned files: the text's lengths
            lengths = tensors["text_lengths"].numpy()
            of += "; the key is absent, so the lengths come from text_lengths"
        tensors[key] = part.fit_lengths(key, lengths, steps, of)
    return {
        "split": split,
        "tensors": tensors,
        "labels": labels,
        "ids": ids,
        "raw_text": raw_text,
    }


def _list_keys(mapping: Mapping[Any, Any]) -> str:
    """The string keys of ``mapping``, sorted (other keys are counted, never printed)."""
    names = sorted(key for key in mapping if isinstance(key, str))
    others = len(mapping) - len(names)
    return f"{names}" + (f" and {others} non-string keys" if others else "")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _short(error: BaseException, limit: int = 200) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_splits_agree(parsed: Mapping[str, Mapping[str, Any]], source: str) -> None:
    """Every split has the same tensor and label keys, and the train split's feature widths."""
    for field, names in (
        ("tensors", {}),
        ("labels", LABEL_KEYS),
    ):
        every = {key for fields in parsed.values() for key in fields[field]}
        for key in sorted(every):
            have = [split for split in SPLITS if key in parsed[split][field]]
            if len(have) < len(SPLITS):
                lack = [split for split in SPLITS if split not in have]
                raise DataFormatError(
                    f"{source}: key {names.get(key, key)!r}: present in the splits {have} but "
                    f"missing in {lack}; every split must hold the same keys"
                )
    reference = parsed["train"]["tensors"]
    for split, fields in parsed.items():
        for key, tensor in fields["tensors"].items():
            if key in FEATURE_MODALITIES and tensor.shape[2] != reference[key].shape[2]:
                raise DataFormatError(
                    f"{source}: split {split!r}, key {key!r}: expected the width of split "
                    f"'train', {reference[key].shape[2]}, on the last dimension, found "
                    f"{tensor.shape[2]}"
                )


def _valid_steps(tensors: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
    """``(N, T)`` bool mask of the unpadded time steps of ``tensors[modality]``."""
    steps = tensors[modality].shape[1]
    lengths = tensors[f"{modality}_lengths"].clamp(max=steps)
    return torch.arange(steps) < lengths[:, None]


def _standardize(parsed: Mapping[str, dict[str, Any]], modality: str, source: str) -> None:
    train = parsed["train"]["tensors"]
    if modality not in train:
        raise DataFormatError(
            f"{source}: split 'train', key {modality!r}: standardize asks for {modality!r} "
            "features, which the file does not have"
        )
    values = train[modality][_valid_steps(train, modality)].double()
    mean = values.mean(dim=0)
    std = values.std(dim=0, correction=0).clamp(min=_STD_FLOOR)
    for fields in parsed.values():
        tensors = fields["tensors"]
        scaled = ((tensors[modality].double() - mean) / std).float()
        valid = _valid_steps(tensors, modality)[..., None]
        overflow = valid & ~torch.isfinite(scaled)
        if overflow.any():
            raise DataFormatError(
                f"{source}: split {fields['split']!r}, key {modality!r}: standardising with the "
                f"train split's mean and standard deviation gives {int(overflow.sum())} values "
                "beyond float32; the split's values are far outside the train split's range "
                "(pass standardize=() to keep the raw features)"
            )
        tensors[modality] = torch.where(valid, scaled, 0.0)
