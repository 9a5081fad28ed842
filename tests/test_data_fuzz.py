"""Fuzzing load_mmsa: seeded mutations of a valid MMSA file, each checked against an oracle.

Every case starts from a small valid file (one of five layouts: MOSI-like, CH-SIMS-like with
unimodal labels, aligned without lengths, without token ids, without text features) and
mutates it one way. Each case either loads, and then the result is checked (the oracle's
values where the mutation determines them, and the loader's invariants always), or raises one
of the loader's documented errors, DataFormatError, UnsafePickleError or CorruptPickleError,
whose message names the split and the key (the file, for the byte stream). Any other
exception, a stray warning, a case that runs past CASE_SECONDS, a file written or a variable
set by a payload, or a module imported by one fails the test.

The fast suite runs every mutation class at scale 1 (about 750 cases in a few seconds); the
slow one at scale 10. Each test adds its counts to a table that is printed at the end of the
module (``pytest -s``) and, with ``DEEPALIGN_FUZZ_REPORT=path.json``, written as JSON: these are
the numbers of docs/reliability.rst.
"""

from __future__ import annotations

import contextlib
import copyreg
import json
import os
import pickle
import pickletools
import signal
import struct
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from deepalign.data import (
    CorruptPickleError,
    DataCleaningWarning,
    DataFormatError,
    UnsafePickleError,
    collate,
    load_mmsa,
    synthetic_mmsa_dict,
)

DOCUMENTED = (DataFormatError, UnsafePickleError, CorruptPickleError)
CASE_SECONDS = 10.0  # generous: a case takes milliseconds; a hang takes forever
SPLITS = ("train", "valid", "test")
FEATURES = ("text", "audio", "vision")
# MMSA's label keys -> the names the loaded labels carry.
LABEL_NAMES = {"regression_labels": "fusion", "regression_labels_T": "text"}
LABEL_NAMES |= {"regression_labels_A": "audio", "regression_labels_V": "vision"}
LABEL_KEYS = tuple(LABEL_NAMES)
VARIANTS = ("mosi", "sims", "aligned", "no_text_bert", "no_text")
ENV_SENTINEL = "DEEPALIGN_FUZZ_PAYLOAD_RAN"
SCALES = [pytest.param(1, id="fast"), pytest.param(10, id="slow", marks=pytest.mark.slow)]

TALLY: dict[str, dict[str, Counter]] = {}


# ----------------------------------------------------------------------------- the valid files

_BASES: dict[str, dict[str, dict[str, Any]]] = {}


def base(variant: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of the valid raw dict of ``variant``."""
    if variant not in _BASES:
        preset, n_train = ("sims", 8) if variant == "sims" else ("mosi", 10)
        raw = synthetic_mmsa_dict(preset, n_train=n_train, seq_len=4, text_dim=3, seed=11)
        for split in raw.values():
            split["audio_lengths"] = np.asarray(split["audio_lengths"])
            split["vision_lengths"] = np.asarray(split["vision_lengths"])
            if variant == "aligned":
                del split["audio_lengths"], split["vision_lengths"]
            elif variant == "no_text_bert":
                del split["text_bert"]
            elif variant == "no_text":
                del split["text"]
        _BASES[variant] = raw
    return clone(_BASES[variant])


def clone(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        split: {
            key: value.copy() if isinstance(value, np.ndarray) else list(value)
            for key, value in data.items()
        }
        for split, data in raw.items()
    }


def label_range(variant: str) -> tuple[float, float]:
    return (-1.0, 1.0) if variant == "sims" else (-3.0, 3.0)


def n_of(raw: dict[str, Any], split: str) -> int:
    return len(raw[split]["regression_labels"])


def steps_of(raw: dict[str, Any], split: str, modality: str) -> int:
    return np.asarray(raw[split][modality]).shape[1]


def lengths_used(raw: dict[str, Any], split: str, modality: str) -> np.ndarray:
    """The lengths the loader reads for ``modality`` (the aligned layout borrows the text's)."""
    data = raw[split]
    if modality != "text" and f"{modality}_lengths" in data:
        return np.asarray(data[f"{modality}_lengths"])
    if "text_bert" in data:
        return np.asarray(data["text_bert"])[:, 1].sum(1)
    return np.full(n_of(raw, split), steps_of(raw, split, "text"))


def write(tmp_path, raw: Any, protocol: int) -> str:
    path = tmp_path / f"case_p{protocol}.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    return str(path)


# ----------------------------------------------------------------------- running one case


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException, so the loader's ``except Exception`` lets it by."""


@contextlib.contextmanager
def deadline(case: str):
    alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if alarm:

        def on_alarm(signum, frame):
            raise CaseTimeout(f"{case}: still running after {CASE_SECONDS} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    start = time.monotonic()
    try:
        yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    assert elapsed < CASE_SECONDS, f"{case}: took {elapsed:.1f} s"


@dataclass
class Outcome:
    case: str
    splits: dict[str, Any] | None = None
    error: BaseException | None = None
    cleaning: list[DataCleaningWarning] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "loaded" if self.error is None else type(self.error).__name__


def attempt(case: str, source: Any, tally: Counter, **options: Any) -> Outcome:
    """Load ``source``; return the outcome, failing on anything undocumented."""
    options.setdefault("standardize", ())
    outcome = Outcome(case)
    with warnings.catch_warnings(record=True) as caught, deadline(case):
        warnings.simplefilter("always")
        try:
            outcome.splits = load_mmsa(source, **options)
        except DOCUMENTED as error:
            outcome.error = error
        except Exception as error:
            raise AssertionError(f"{case}: undocumented {type(error).__name__}: {error}") from error
    outcome.cleaning = [w.message for w in caught if issubclass(w.category, DataCleaningWarning)]
    stray = [
        f"{w.category.__name__}: {w.message}" for w in caught if w.message not in outcome.cleaning
    ]
    assert not stray, f"{case}: stray warnings {stray}"
    assert len(outcome.cleaning) <= 1, f"{case}: {len(outcome.cleaning)} cleaning warnings"
    if outcome.error is None:
        assert_valid(outcome.splits, options.get("label_range", (-3.0, 3.0)), case)
    tally["cases"] += 1
    tally[outcome.name] += 1
    return outcome


def expect_error(outcome: Outcome, kinds=(DataFormatError,), names=()) -> None:
    """The case raised one of ``kinds`` whose message contains every one of ``names``."""
    assert outcome.error is not None, f"{outcome.case}: loaded, expected {kinds}"
    assert isinstance(outcome.error, kinds), f"{outcome.case}: {outcome.name}: {outcome.error}"
    message = str(outcome.error)
    for name in names:
        assert name in message, f"{outcome.case}: the message does not name {name}: {message}"


def expect_loaded(outcome: Outcome) -> dict[str, Any]:
    assert outcome.error is None, f"{outcome.case}: {outcome.name}: {outcome.error}"
    return outcome.splits


def assert_valid(splits: dict[str, Any], bounds: tuple[float, float] | None, case: str) -> None:
    """The invariants of every successful load, whatever the file held."""
    assert list(splits) == list(SPLITS), case
    train = splits["train"]
    for split, dataset in splits.items():
        n = len(dataset)
        where = f"{case}: {split}"
        assert n >= 1, where
        assert set(dataset.tensors) == set(train.tensors), where
        assert set(dataset.labels) == set(train.labels), where
        assert len(dataset.ids) == n, where
        assert all(type(i) is str for i in dataset.ids), where
        assert len(dataset.raw_text) == n, where
        assert all(type(t) is str for t in dataset.raw_text), where
        tensors = dataset.tensors
        for key, tensor in tensors.items():
            assert tensor.shape[0] == n, f"{where}: {key}"
        if "text_bert" in tensors:
            ids = tensors["text_bert"]
            assert (ids.dtype, ids.dim(), ids.shape[1]) == (torch.int64, 3, 3), where
            assert ids.min() >= 0, where
            assert ((ids[:, 1] == 0) | (ids[:, 1] == 1)).all(), where
        for key in FEATURES:
            if key in tensors:
                x = tensors[key]
                assert (x.dtype, x.dim()) == (torch.float32, 3), where
                assert x.shape[1] >= 1, where
                assert torch.isfinite(x).all(), f"{where}: {key} not finite"
                assert x.shape[2] == train.tensors[key].shape[2] >= 1, where
        text_steps = tensors["text_bert"].shape[2] if "text_bert" in tensors else None
        for key, steps in (
            ("text_lengths", text_steps or tensors["text"].shape[1]),
            ("audio_lengths", tensors["audio"].shape[1]),
            ("vision_lengths", tensors["vision"].shape[1]),
        ):
            lengths = tensors[key]
            assert (lengths.dtype, lengths.shape) == (torch.int64, (n,)), f"{where}: {key}"
            assert lengths.min() >= 1, f"{where}: {key}"
            assert lengths.max() <= steps, f"{where}: {key}"
        for labels in dataset.labels.values():
            assert (labels.dtype, labels.shape) == (torch.float32, (n,)), where
            assert torch.isfinite(labels).all(), where
            if bounds is not None:
                assert labels.min() >= bounds[0], where
                assert labels.max() <= bounds[1], where
        batch = collate([dataset[0], dataset[n - 1]])
        assert batch["audio"].shape[0] == 2, where


def assert_same(got: dict[str, Any], expected: dict[str, Any], case: str) -> None:
    for split in SPLITS:
        a, b = got[split], expected[split]
        assert a.ids == b.ids, case
        assert a.raw_text == b.raw_text, case
        assert a.tensors.keys() == b.tensors.keys(), case
        assert a.labels.keys() == b.labels.keys(), case
        for key in b.tensors:
            assert torch.equal(a.tensors[key], b.tensors[key]), f"{case}: {split} {key}"
        for key in b.labels:
            assert torch.equal(a.labels[key], b.labels[key]), f"{case}: {split} {key}"


_REFERENCES: dict[str, dict[str, Any]] = {}


def reference(variant: str) -> dict[str, Any]:
    if variant not in _REFERENCES:
        _REFERENCES[variant] = load_mmsa(
            base(variant), standardize=(), label_range=label_range(variant)
        )
    return _REFERENCES[variant]


@pytest.fixture(scope="module")
def tallies():
    yield TALLY
    if not TALLY:
        return
    lines = [f"{'class':<22}{'scale':>6}{'cases':>7}  outcomes"]
    for name, counts in sorted(TALLY.items()):
        cls, scale = name.rsplit("@", 1)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "cases")
        lines.append(f"{cls:<22}{scale:>6}{counts['cases']:>7}  {outcomes}")
    print("\nload_mmsa fuzz cases\n" + "\n".join(lines))
    path = os.environ.get("DEEPALIGN_FUZZ_REPORT")
    if path:
        with open(path, "w") as file:
            json.dump({k: dict(v) for k, v in sorted(TALLY.items())}, file, indent=1)


def tally_for(tallies, cls: str, scale: int) -> Counter:
    return tallies.setdefault(f"{cls}@{scale}", Counter())


def rng_for(cls: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, cls)), seed])


def source_for(rng, tmp_path, raw, in_memory_share=0.7):
    """The raw dict itself, or (30 %) a pickle file of it at a random protocol."""
    if rng.random() < in_memory_share:
        return raw
    return write(tmp_path, raw, int(rng.choice([2, 3, 4, 5])))


# --------------------------------------------------------------------------- content mutations

REQUIRED = ("id", "audio", "vision", "regression_labels")


@pytest.mark.parametrize("scale", SCALES)
def test_dropped_keys(scale, tmp_path, tallies):
    tally = tally_for(tallies, "dropped key", scale)
    for seed in range(60 * scale):
        rng = rng_for("drop", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        split = str(rng.choice(SPLITS))
        keys = [*sorted(raw[split]), "<the split>"]
        key = str(rng.choice(keys))
        if key == "<the split>":
            del raw[split]
        else:
            del raw[split][key]
        source = source_for(rng, tmp_path, raw)
        case = f"dropped key[{seed}: {variant}, {split}, {key}]"
        outcome = attempt(case, source, tally, label_range=label_range(variant))
        other_text = {"text": "text_bert", "text_bert": "text"}
        if key == "<the split>":
            expect_error(outcome, names=(f"expected the split '{split}'",))
        elif key in REQUIRED:
            expect_error(outcome, names=(f"split '{split}'", f"'{key}'"))
        elif key in other_text and other_text[key] not in raw[split]:
            expect_error(outcome, names=(f"split '{split}'", "text or text_bert"))
        elif key in other_text or key in LABEL_KEYS:
            expect_error(outcome, names=(f"'{split}'", f"key '{key}'", "missing in"))
        else:
            splits = expect_loaded(outcome)
            expected = reference(variant)
            if key == "raw_text":
                assert splits[split].raw_text == [""] * n_of(raw, split), case
            elif key in ("audio_lengths", "vision_lengths"):
                modality = key.split("_")[0]
                lengths = splits[split].tensors[key].numpy()
                np.testing.assert_array_equal(lengths, lengths_used(raw, split, modality))
            else:  # classification_labels: unused
                assert_same(splits, expected, case)
    assert tally["cases"] == 60 * scale


_DTYPES = ["float16", "float32", "float64", ">f8", "int8", "int16", "int32", "int64", "uint8"]
_DTYPES += ["uint16", "bool", "complex64", "object", "str", "bytes"]


def _cast(value: Any, dtype: str) -> np.ndarray:
    array = np.asarray(value)
    with np.errstate(all="ignore"):
        if dtype == "str":
            return array.astype(str)
        if dtype == "bytes":
            return np.char.encode(array.astype(str), "utf-8")
        if dtype == "object":
            return array.astype(object)
        try:
            return array.astype(dtype)
        except ValueError:  # e.g. ids that are no numbers
            return np.arange(array.size).reshape(array.shape).astype(dtype)


def _valid_cast(key: str, cast: np.ndarray, raw: dict[str, Any], split: str, bounds) -> bool:
    """Whether the loader must accept ``cast`` under ``key`` (a plain restatement of the layout)."""
    if key == "classification_labels":
        return True  # not read
    if key in ("id", "raw_text"):
        return cast.dtype.kind == "U" or (
            cast.dtype == object and all(isinstance(v, str) for v in cast)
        )
    if cast.dtype.kind not in "biuf":
        return False
    values = cast.astype(np.float64)
    if not np.isfinite(values).all():
        return key in FEATURES  # zeroed (a cast of these small values never makes any)
    if key in LABEL_KEYS:
        return bool(((values >= bounds[0]) & (values <= bounds[1])).all())
    whole = bool((values == np.rint(values)).all())
    if key == "text_bert":
        mask = values[:, 1]
        return whole and values.min() >= 0 and bool(((mask == 0) | (mask == 1)).all())
    if key.endswith("_lengths"):
        steps = steps_of(raw, split, key.split("_")[0])
        return whole and values.min() >= 1 and values.max() <= steps
    return True  # features


@pytest.mark.parametrize("scale", SCALES)
def test_changed_dtypes(scale, tmp_path, tallies):
    tally = tally_for(tallies, "changed dtype", scale)
    for seed in range(80 * scale):
        rng = rng_for("dtype", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        split = str(rng.choice(SPLITS))
        key = str(rng.choice(sorted(raw[split])))
        dtype = str(rng.choice(_DTYPES))
        cast = _cast(raw[split][key], dtype)
        raw[split][key] = cast
        source = source_for(rng, tmp_path, raw)
        case = f"changed dtype[{seed}: {variant}, {split}, {key} -> {dtype}]"
        bounds = label_range(variant)
        outcome = attempt(case, source, tally, label_range=bounds)
        if not _valid_cast(key, cast, raw, split, bounds):
            expect_error(outcome, names=(f"split '{split}'", f"key '{key}'"))
            continue
        splits = expect_loaded(outcome)
        dataset = splits[split]
        if key in FEATURES:
            expected = cast.astype(np.float32)
            np.testing.assert_array_equal(dataset.tensors[key].numpy(), expected, err_msg=case)
        elif key == "text_bert" or key.endswith("_lengths"):
            np.testing.assert_array_equal(dataset.tensors[key].numpy(), cast.astype(np.int64))
        elif key in LABEL_KEYS:
            expected = cast.astype(np.float32)
            np.testing.assert_array_equal(dataset.labels[LABEL_NAMES[key]].numpy(), expected)
        elif key in ("id", "raw_text"):
            assert getattr(dataset, "ids" if key == "id" else key) == [str(v) for v in cast]
    assert tally["cases"] == 80 * scale


_PER_SAMPLE = ("id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths")
_PER_SAMPLE += ("vision_lengths", *LABEL_KEYS)


@pytest.mark.parametrize("scale", SCALES)
def test_disagreeing_shapes(scale, tmp_path, tallies):
    tally = tally_for(tallies, "shape or length", scale)
    operations = ("drop sample", "add axis", "swap axes", "shorten time", "extend time")
    operations += ("change width",)
    for seed in range(70 * scale):
        rng = rng_for("shape", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        split = str(rng.choice(SPLITS))
        operation = str(rng.choice(operations))
        clip = bool(rng.random() < 0.3)
        n = n_of(raw, split)
        names: tuple[str, ...] = (f"'{split}'",)
        if operation in ("drop sample", "add axis"):
            key = str(rng.choice([k for k in _PER_SAMPLE if k in raw[split]]))
            value = raw[split][key]
            if operation == "drop sample":
                raw[split][key] = value[:-1]
                valid = False
                names += (key,) if key != "regression_labels" else ("regression_labels",)
            else:
                raw[split][key] = np.asarray(value)[..., None]
                valid = key in LABEL_KEYS  # (N, 1) labels are accepted
                names += (f"key '{key}'",)
        else:
            key = str(rng.choice([m for m in FEATURES if m in raw[split]]))
            value = raw[split][key]
            steps, width = value.shape[1], value.shape[2]
            lengths_key = f"{key}_lengths" if key != "text" else None
            if operation == "swap axes":
                raw[split][key] = value.transpose(0, 2, 1)
                valid = False  # every width differs from the time steps here
                names += (f"key '{key}'",)
            elif operation == "shorten time":
                keep = int(rng.integers(0, steps))
                raw[split][key] = value[:, :keep]
                too_long = int((lengths_used(raw, split, key) > keep).sum())
                if keep == 0:
                    valid, names = False, (*names, f"key '{key}'")
                elif key == "text" and "text_bert" in raw[split]:
                    valid = True  # text_lengths count tokens of text_bert, not text steps
                elif key == "text":
                    valid = True  # the lengths are the (new) number of steps
                else:
                    valid = too_long == 0 or clip
                    names += (f"key '{lengths_key}'", "pass clip_lengths=True")
            elif operation == "extend time":
                extra = int(rng.integers(1, 4))
                raw[split][key] = np.concatenate(
                    [value, np.zeros((n, extra, width), value.dtype)], axis=1
                )
                valid = True
            else:  # change width
                narrower = int(rng.integers(0, width))
                raw[split][key] = value[..., :narrower]
                valid = False
                names += (f"key '{key}'",)
        source = source_for(rng, tmp_path, raw)
        case = f"shape[{seed}: {variant}, {split}, {operation} {key}, clip={clip}]"
        outcome = attempt(case, source, tally, label_range=label_range(variant), clip_lengths=clip)
        if not valid:
            expect_error(outcome, names=names)
            continue
        splits = expect_loaded(outcome)
        if operation == "extend time":
            got = splits[split].tensors[key][:, : value.shape[1]].numpy()
            np.testing.assert_array_equal(got, value.astype(np.float32), err_msg=case)
            assert not splits[split].tensors[key][:, value.shape[1] :].any(), case
        elif operation == "shorten time" and key != "text":
            expected = np.clip(lengths_used(base(variant), split, key), 1, keep)
            got = splits[split].tensors[f"{key}_lengths"].numpy()
            np.testing.assert_array_equal(got, expected, err_msg=case)
            counts = outcome.cleaning[0].counts if outcome.cleaning else {}
            assert counts.get((split, f"{key}_lengths", "clipped"), 0) == too_long, case
    assert tally["cases"] == 70 * scale


@pytest.mark.parametrize("scale", SCALES)
def test_bad_lengths(scale, tmp_path, tallies):
    tally = tally_for(tallies, "bad lengths", scale)
    for seed in range(50 * scale):
        rng = rng_for("lengths", seed)
        variant = str(rng.choice(["mosi", "sims", "no_text_bert", "no_text", "mask"]))
        raw = base("mosi" if variant == "mask" else variant)
        split = str(rng.choice(SPLITS))
        n = n_of(raw, split)
        positions = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        clip = bool(rng.random() < 0.5)
        if variant == "mask":  # an all-zero attention mask: text_lengths 0
            key, steps, integral = "text_lengths", steps_of(raw, split, "text"), True
            raw[split]["text_bert"][positions, 1] = 0
            outside = len(positions)
            new = np.zeros(len(positions))
        else:
            modality = str(rng.choice(["audio", "vision"]))
            key, steps = f"{modality}_lengths", steps_of(raw, split, modality)
            kind = str(rng.choice(["beyond", "zero", "negative", "huge", "fraction", "nan"]))
            count = len(positions)
            if kind == "beyond":
                new = steps + rng.integers(1, 100, count)
            elif kind == "zero":
                new = np.zeros(count, dtype=np.int64)
            elif kind == "negative":
                new = -rng.integers(1, 100, count)
            elif kind == "huge":
                new = np.full(count, 10**15)
            elif kind == "fraction":
                new = rng.integers(1, steps, count) + 0.5
            else:
                new = np.full(count, np.nan)
            integral = kind not in ("fraction", "nan")
            lengths = raw[split][key].astype(np.float64 if not integral else np.int64)
            lengths[positions] = new
            raw[split][key] = lengths
            outside = len(positions)
        source = source_for(rng, tmp_path, raw)
        case = f"bad lengths[{seed}: {variant}, {split}, {key} at {positions} = {new}, clip={clip}]"
        outcome = attempt(case, source, tally, label_range=label_range(variant), clip_lengths=clip)
        if not integral:
            expect_error(outcome, names=(f"split '{split}'", f"key '{key}'", "whole-number"))
        elif not clip:
            expect_error(
                outcome,
                names=(f"split '{split}'", f"key '{key}'", f"found {outside} outside"),
            )
        else:
            splits = expect_loaded(outcome)
            got = splits[split].tensors[key].numpy()
            expected = np.clip(new, 1, steps)
            np.testing.assert_array_equal(got[positions], expected, err_msg=case)
            counts = outcome.cleaning[0].counts
            assert counts[(split, key, "clipped")] == outside, case
    assert tally["cases"] == 50 * scale


@pytest.mark.parametrize("scale", SCALES)
def test_non_finite_values(scale, tmp_path, tallies):
    tally = tally_for(tallies, "NaN/Inf", scale)
    for seed in range(50 * scale):
        rng = rng_for("nonfinite", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        target = str(rng.choice(["labels", "features", "features", "text_bert"]))
        if target == "text_bert" and "text_bert" not in raw["train"]:
            target = "features"
        planted: Counter = Counter()
        for _ in range(int(rng.integers(1, 4))):
            split = str(rng.choice(SPLITS))
            value = float(rng.choice([np.nan, np.inf, -np.inf]))
            if target == "labels":
                key = str(rng.choice([k for k in LABEL_KEYS if k in raw[split]]))
                raw[split][key][int(rng.integers(n_of(raw, split)))] = value
            else:
                key = str(rng.choice([m for m in FEATURES if m in raw[split]]))
                key = "text_bert" if target == "text_bert" else key
                array = raw[split][key] = raw[split][key].astype(np.float32)
                index = tuple(int(rng.integers(size)) for size in array.shape)
                if np.isfinite(array[index]):
                    planted[split, key, "non-finite"] += 1
                array[index] = value
            first = (split, key)
        source = source_for(rng, tmp_path, raw)
        case = f"NaN/Inf[{seed}: {variant}, {target}, last {first}]"
        bounds = label_range(variant)
        outcome = attempt(case, source, tally, label_range=bounds, clip_labels=True)
        if target != "features":
            expect_error(outcome, names=("split '", "key '", "NaN"))
            continue
        splits = expect_loaded(outcome)
        counts = outcome.cleaning[0].counts
        assert counts == dict(planted), case
        assert str(outcome.cleaning[0]).count("non-finite") == len(planted), case
        for (split, key, _), _count in planted.items():
            original = base(variant)[split][key]
            got = splits[split].tensors[key].numpy()
            changed = ~np.isfinite(raw[split][key])
            assert not got[changed].any(), case
            np.testing.assert_array_equal(got[~changed], original[~changed].astype(np.float32))
    assert tally["cases"] == 50 * scale


@pytest.mark.parametrize("scale", SCALES)
def test_labels_outside_the_range(scale, tmp_path, tallies):
    tally = tally_for(tallies, "label out of range", scale)
    for seed in range(40 * scale):
        rng = rng_for("range", seed)
        variant = str(rng.choice(["mosi", "sims", "aligned"]))
        raw = base(variant)
        bounds = label_range(variant)
        split = str(rng.choice(SPLITS))
        key = str(rng.choice([k for k in LABEL_KEYS if k in raw[split]]))
        n = n_of(raw, split)
        positions = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        on_bound = rng.random() < 0.2  # exactly on a bound: inside
        sides = rng.choice([0, 1], size=len(positions))
        offsets = 0.0 if on_bound else rng.uniform(1e-3, 10, len(positions))
        values = np.where(sides == 0, bounds[0] - offsets, bounds[1] + offsets)
        raw[split][key] = raw[split][key].astype(np.float64)
        raw[split][key][positions] = values
        clip = bool(rng.random() < 0.4)
        source = source_for(rng, tmp_path, raw)
        case = f"label range[{seed}: {variant}, {split}, {key} at {positions}, clip={clip}]"
        outcome = attempt(case, source, tally, label_range=bounds, clip_labels=clip)
        if on_bound or clip:
            splits = expect_loaded(outcome)
            got = splits[split].labels[LABEL_NAMES[key]].numpy()[positions]
            np.testing.assert_array_equal(got, np.where(sides == 0, *bounds).astype(np.float32))
            count = 0 if on_bound else len(positions)
            counts = outcome.cleaning[0].counts if outcome.cleaning else {}
            assert counts.get((split, key, "clipped"), 0) == count, case
        else:
            expect_error(
                outcome,
                names=(f"split '{split}'", f"key '{key}'", f"found {len(positions)} outside"),
            )
    assert tally["cases"] == 40 * scale


@pytest.mark.parametrize("scale", SCALES)
def test_empty_splits(scale, tmp_path, tallies):
    tally = tally_for(tallies, "empty split", scale)
    for seed in range(20 * scale):
        rng = rng_for("empty", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        split = str(rng.choice(SPLITS))
        how = str(rng.choice(["no samples", "no samples", "empty dict", "None", "list"]))
        if how == "no samples":
            raw[split] = {k: v[:0] for k, v in raw[split].items()}
            names = (f"split '{split}'", "key 'regression_labels'", "at least one sample")
        elif how == "empty dict":
            raw[split] = {}
            names = (f"split '{split}'", "expected the keys")
        else:
            raw[split] = None if how == "None" else []
            names = (f"split '{split}'", "expected a dict of arrays")
        source = source_for(rng, tmp_path, raw)
        case = f"empty split[{seed}: {variant}, {split}, {how}]"
        expect_error(attempt(case, source, tally, label_range=label_range(variant)), names=names)
    assert tally["cases"] == 20 * scale


def _id_replacement(rng, n: int, ids: list[str]) -> tuple[Any, bool]:
    """A replacement for a list of ``n`` strings, and whether the loader must accept it."""
    choice = int(rng.integers(12))
    position = int(rng.integers(n))
    odd = [7, None, b"abc", 2.5, ["a"], np.int64(3), ("a",)][int(rng.integers(7))]
    return [
        (list(range(n)), False),
        ([*ids[:position], odd, *ids[position + 1 :]], False),
        (np.char.encode(np.array(ids), "utf-8"), False),
        ("x" * n, False),
        ({i: s for i, s in enumerate(ids)}, False),
        (None, False),
        (np.array([ids, ids]), False),
        (np.arange(n), False),
        (tuple(ids), True),
        (np.array(ids), True),
        (np.array(ids, dtype=object), True),
        ([np.str_(s) for s in ids], True),
    ][choice]


@pytest.mark.parametrize("scale", SCALES)
def test_non_string_ids(scale, tmp_path, tallies):
    tally = tally_for(tallies, "non-string ids", scale)
    for seed in range(40 * scale):
        rng = rng_for("ids", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        split = str(rng.choice(SPLITS))
        key = str(rng.choice(["id", "raw_text"]))
        replacement, valid = _id_replacement(rng, n_of(raw, split), list(raw[split][key]))
        raw[split][key] = replacement
        source = source_for(rng, tmp_path, raw)
        case = f"ids[{seed}: {variant}, {split}, {key} = {type(replacement).__name__}]"
        outcome = attempt(case, source, tally, label_range=label_range(variant))
        if valid:
            splits = expect_loaded(outcome)
            got = splits[split].ids if key == "id" else splits[split].raw_text
            assert got == [str(s) for s in replacement], case
        else:
            expect_error(outcome, names=(f"split '{split}'", f"key '{key}'"))
    assert tally["cases"] == 40 * scale


class _Opaque:
    """An object no loader knows (in-memory dicts only)."""


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("scale", SCALES)
def test_extra_unknown_keys(scale, tmp_path, tallies):
    tally = tally_for(tallies, "extra unknown keys", scale)
    for seed in range(40 * scale):
        rng = rng_for("extra", seed)
        variant = str(rng.choice(VARIANTS))
        raw = base(variant)
        in_memory = rng.random() < 0.6
        for _ in range(int(rng.integers(1, 5))):
            where = raw if rng.random() < 0.3 else raw[str(rng.choice(SPLITS))]
            keys = ["meta", "annotations", "regression_labels_X", "audio_raw", 3, (1, "a")]
            keys += [b"text", frozenset({"id"}), None, f"fuzz_{seed}"]
            values = [None, np.arange(5.0), {"nested": {"deeper": [1, 2]}}, "text", 2 + 3j]
            values += [_deep_list(200), {1, 2}, b"\x00\xff", np.array(["a", "b"])]
            values += [_Opaque(), lambda: None] if in_memory else []
            where[keys[int(rng.integers(len(keys)))]] = values[int(rng.integers(len(values)))]
        source = raw if in_memory else write(tmp_path, raw, int(rng.choice([2, 4, 5])))
        case = f"extra keys[{seed}: {variant}, in memory={in_memory}]"
        outcome = attempt(case, source, tally, label_range=label_range(variant))
        assert_same(expect_loaded(outcome), reference(variant), case)
    assert tally["cases"] == 40 * scale


# ------------------------------------------------------------------------- byte-stream mutations


@pytest.mark.parametrize("scale", SCALES)
def test_truncated_files(scale, tmp_path, tallies):
    tally = tally_for(tallies, "truncated file", scale)
    count = 80 * scale
    for seed in range(count):
        rng = rng_for("truncate", seed)
        variant = str(rng.choice(VARIANTS))
        protocol = int(rng.choice([0, 1, 2, 3, 4, 5]))
        blob = pickle.dumps(base(variant), protocol=protocol)
        # anywhere (3 cases in 4), the first 8 bytes (1 in 8), the last 4 bytes (1 in 8)
        offset = int(rng.integers(len(blob)))
        if seed % 8 == 0:
            offset = int(rng.integers(8))
        elif seed % 8 == 4:
            offset = len(blob) - 1 - int(rng.integers(4))
        path = tmp_path / "truncated.pkl"
        path.write_bytes(blob[:offset])
        case = f"truncated[{seed}: {variant}, protocol {protocol}, {offset} of {len(blob)} bytes]"
        outcome = attempt(case, path, tally)
        expect_error(outcome, kinds=(CorruptPickleError,), names=(str(path),))
    assert tally["cases"] == count


@pytest.mark.parametrize("scale", SCALES)
def test_overwritten_bytes(scale, tmp_path, tallies):
    """Random bytes overwritten: loads (and is then valid) or raises a documented error."""
    tally = tally_for(tallies, "overwritten bytes", scale)
    for seed in range(60 * scale):
        rng = rng_for("flip", seed)
        variant = str(rng.choice(VARIANTS))
        protocol = int(rng.choice([0, 2, 4, 5]))
        blob = bytearray(pickle.dumps(base(variant), protocol=protocol))
        where = rng.choice(len(blob), size=int(rng.integers(1, 4)), replace=False)
        for position in where:
            blob[position] = int(rng.integers(256))
        path = tmp_path / "overwritten.pkl"
        path.write_bytes(bytes(blob))
        case = f"overwritten[{seed}: {variant}, protocol {protocol}, bytes {sorted(where)}]"
        outcome = attempt(case, path, tally, label_range=label_range(variant))
        if isinstance(outcome.error, UnsafePickleError | CorruptPickleError):
            assert str(path) in str(outcome.error), case
        elif outcome.error is not None:
            assert "split" in str(outcome.error), case
    assert tally["cases"] == 60 * scale


# ---------------------------------------------------------------------- refused pickle content


def _text(value: str) -> bytes:  # UNICODE, any protocol
    return b"V" + value.encode("raw_unicode_escape") + b"\n"


def _short(value: str) -> bytes:  # SHORT_BINUNICODE
    encoded = value.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stack_global(module: str, name: str) -> bytes:
    return _short(module) + _short(name) + b"\x93"


def _tuple(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded  # LONG1


def _list(*parts: bytes) -> bytes:
    return b"](" + b"".join(parts) + b"e"


REDUCE, BUILD = b"R", b"b"
_EXT_CODE = 0x7E5A  # a code no library registers


def payloads(marker: str, module: str) -> dict[str, tuple[str, bytes, tuple[type, ...]]]:
    """name -> (opcode class, bytes that push one object, the errors allowed)."""
    touch = _tuple(_text(f"touch {marker}"))
    unsafe = (UnsafePickleError,)
    env = f"import os; os.environ[{ENV_SENTINEL!r}] = '1'"
    nested = pickle.dumps(os.getcwd)  # a pickle inside the pickle, for pickle.loads
    huge = 10**12
    return {
        "os.system": ("GLOBAL", _global("os", "system") + touch + REDUCE, unsafe),
        "posix.system": ("GLOBAL", _global("posix", "system") + touch + REDUCE, unsafe),
        "nt.system": ("GLOBAL", _global("nt", "system") + touch + REDUCE, unsafe),
        "builtins.eval": (
            "STACK_GLOBAL",
            _stack_global("builtins", "eval") + _tuple(_text(f"open({marker!r}, 'w')")) + REDUCE,
            unsafe,
        ),
        "builtins.exec": (
            "STACK_GLOBAL",
            _stack_global("builtins", "exec") + _tuple(_text(env)) + REDUCE,
            unsafe,
        ),
        "__builtin__.eval": (
            "GLOBAL",
            _global("__builtin__", "eval") + _tuple(_text(f"open({marker!r}, 'w')")) + REDUCE,
            unsafe,
        ),
        "subprocess.call": (
            "GLOBAL",
            _global("subprocess", "call") + _tuple(_list(_text("touch"), _text(marker))) + REDUCE,
            unsafe,
        ),
        "subprocess.check_output": (
            "STACK_GLOBAL",
            _stack_global("subprocess", "check_output")
            + _tuple(_list(_text("touch"), _text(marker)))
            + REDUCE,
            unsafe,
        ),
        "sentinel module": (
            "GLOBAL",
            _global(module, "run") + touch + REDUCE,
            unsafe,
        ),
        "builtins.getattr": (
            "STACK_GLOBAL",
            _stack_global("builtins", "getattr") + _tuple(_text("x"), _text("y")) + REDUCE,
            unsafe,
        ),
        "builtins.__import__": (
            "GLOBAL",
            _global("builtins", "__import__") + _tuple(_text(module)) + REDUCE,
            unsafe,
        ),
        "pickle.loads": (
            "GLOBAL",
            _global("pickle", "loads") + _tuple(b"C" + bytes([len(nested)]) + nested) + REDUCE,
            unsafe,
        ),
        "numpy.load": ("GLOBAL", _global("numpy", "load") + touch + REDUCE, unsafe),
        "numpy runstring": (
            "GLOBAL",
            _global("numpy.testing._private.utils", "runstring")
            + _tuple(_text(env), b"}")
            + REDUCE,
            unsafe,
        ),
        "torch.load": ("GLOBAL", _global("torch", "load") + touch + REDUCE, unsafe),
        "copyreg._reconstructor": (
            "GLOBAL",
            _global("copyreg", "_reconstructor") + touch + REDUCE,
            unsafe,
        ),
        "dotted name": ("STACK_GLOBAL", _stack_global("builtins", "list.__class__"), unsafe),
        "numpy.core alias": (
            "GLOBAL",
            _global("numpy.core.multiarray", "system") + touch + REDUCE,
            unsafe,
        ),
        "INST": ("INST", b"(" + _text(f"touch {marker}") + b"ios\nsystem\n", unsafe),
        "OBJ": ("OBJ", b"(" + _global("os", "system") + _text(f"touch {marker}") + b"o", unsafe),
        "NEWOBJ": (
            "NEWOBJ",
            _global("__builtin__", "bytearray") + _tuple(_int(huge)) + b"\x81",
            unsafe,
        ),
        "NEWOBJ_EX": (
            "NEWOBJ_EX",
            _global("subprocess", "Popen") + _tuple(touch) + b"}" + b"\x92",
            unsafe,
        ),
        "PERSID": ("PERSID", b"Pos.system\n", unsafe),
        "BINPERSID": ("BINPERSID", _text("os.system") + b"Q", unsafe),
        "EXT1": ("EXT1/2/4", b"\x82" + bytes([_EXT_CODE & 0xFF]), unsafe),
        "EXT2": ("EXT1/2/4", b"\x83" + struct.pack("<H", _EXT_CODE), unsafe),
        "EXT4": ("EXT1/2/4", b"\x84" + struct.pack("<i", _EXT_CODE), unsafe),
        "bytearray(10**12)": (
            "REDUCE of an allowed global",
            _global("__builtin__", "bytearray") + _tuple(_int(huge)) + REDUCE,
            unsafe,
        ),
        "bytes(10**12)": (
            "REDUCE of an allowed global",
            _stack_global("builtins", "bytes") + _tuple(_int(huge)) + REDUCE,
            unsafe,
        ),
        "_codecs.encode(zlib)": (
            "REDUCE of an allowed global",
            _global("_codecs", "encode") + _tuple(_text("x" * 50), _text("zlib")) + REDUCE,
            unsafe,
        ),
        "_reconstruct(huge)": (
            "REDUCE of an allowed global",
            _global("numpy._core.multiarray", "_reconstruct")
            + _tuple(_global("numpy", "ndarray"), _tuple(_int(10**6), _int(10**6)), b"C\x01b")
            + REDUCE,
            unsafe,
        ),
        "ndarray(huge)": (
            "REDUCE of an allowed global",
            _global("numpy", "ndarray") + _tuple(_tuple(_int(10**6), _int(10**6))) + REDUCE,
            unsafe,
        ),
        "BUILD _frombuffer": (
            "BUILD",
            _global("numpy._core.numeric", "_frombuffer")
            + _tuple(b"N", b"}" + _text("__defaults__") + _tuple(_int(1)) + b"s")
            + BUILD,
            unsafe,
        ),
        "BUILD numpy.dtype": (
            "BUILD",
            _global("numpy", "dtype") + b"}" + _text("kind") + _text("O") + b"s" + BUILD,
            unsafe,
        ),
        "BUILD builtins.list": (
            "BUILD",
            _global("builtins", "list") + b"}" + _text("append") + b"N" + b"s" + BUILD,
            (UnsafePickleError, CorruptPickleError),
        ),
        "NEXT_BUFFER": ("out-of-band buffer", b"\x97", (CorruptPickleError,)),
    }


_PLACEHOLDER = "\x00deepalign fuzz placeholder\x00"


def embed(raw: dict[str, Any] | None, split: str, key: str, payload: bytes, protocol: int) -> bytes:
    """The pickle of ``raw`` with ``raw[split][key]`` replaced by ``payload``'s opcodes.

    Frames (protocol 4+) are dropped, as the format allows, since the splice changes sizes.
    ``raw=None`` gives the payload alone as the whole file.
    """
    if raw is None:
        return b"\x80" + bytes([max(protocol, 2)]) + payload + b"."
    raw = clone(raw)
    raw[split][key] = _PLACEHOLDER
    blob = pickle.dumps(raw, protocol=protocol)
    ops = list(pickletools.genops(blob))
    out, found = bytearray(), 0
    for index, (op, arg, position) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(blob)
        if op.name == "FRAME":
            continue
        if arg == _PLACEHOLDER:
            out += payload
            found += 1
        else:
            out += blob[position:end]
    assert found == 1
    return bytes(out)


@pytest.fixture
def sentinel_module(tmp_path, monkeypatch):
    """An importable module whose import would leave a file: proof that nothing was imported."""
    folder = tmp_path / "modules"
    folder.mkdir()
    name = f"deepalign_fuzz_sentinel_{os.getpid()}"
    imported = tmp_path / "sentinel_imported"
    (folder / f"{name}.py").write_text(
        f"open({str(imported)!r}, 'w').close()\n\ndef run(*args):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return name, imported


@pytest.fixture
def registered_extension():
    """``os.system`` in the process-wide extension registry and its cache, as a hostile
    library could leave it; the walk must refuse EXT opcodes before the registry is read."""
    copyreg.add_extension("os", "system", _EXT_CODE)
    pickle.loads(b"\x83" + struct.pack("<H", _EXT_CODE) + b".")  # trusted; fills the cache
    yield
    copyreg.remove_extension("os", "system", _EXT_CODE)


@pytest.mark.parametrize("scale", SCALES)
def test_refused_pickle_content(scale, tmp_path, tallies, sentinel_module, registered_extension):
    module, imported = sentinel_module
    work = tmp_path / "work"
    work.mkdir()
    marker = str(work / "payload_ran")
    table = payloads(marker, module)
    tally = tally_for(tallies, "refused pickle content", scale)
    by_class: Counter = Counter()
    assert os.environ.get(ENV_SENTINEL) is None
    repeats = 4 * scale
    for name, (opcode_class, payload, allowed) in sorted(table.items()):
        for repeat in range(repeats):
            rng = rng_for(f"unsafe {name}", repeat)
            variant = str(rng.choice(VARIANTS))
            raw = base(variant)
            protocol = int(rng.choice([0, 1, 2, 3, 4, 5]))
            whole = repeat == 0  # the payload alone, then hidden inside the layout
            split = str(rng.choice(SPLITS))
            key = str(rng.choice(sorted(raw[split])))
            blob = embed(None if whole else raw, split, key, payload, protocol)
            path = work / "suspect.pkl"
            path.write_bytes(blob)
            case = f"refused[{name}: {variant}, protocol {protocol}, at {split}/{key}]"
            if whole:
                case = f"refused[{name}: the whole file]"
            outcome = attempt(case, path, tally)
            expect_error(outcome, kinds=allowed, names=(str(path),))
            by_class[opcode_class] += 1
            assert sorted(p.name for p in work.iterdir()) == ["suspect.pkl"], case
            assert os.environ.get(ENV_SENTINEL) is None, case
            assert not imported.exists(), case
            assert module not in sys.modules, case
    for opcode_class, count in by_class.items():
        tally[f"  of which {opcode_class}"] = count
    assert tally["cases"] == len(table) * repeats
    assert len(by_class) >= 12
