"""deepalign.data: the MMSA loader, its cleaning and validation, collate, and the real MOSI file."""

import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, default_collate

from deepalign.data import (
    LABEL_KEYS,
    DataCleaningWarning,
    DataFormatError,
    collate,
    load_mmsa,
    synthetic_mmsa_dict,
)


def small_raw(preset="mosi", seed=0, **options):
    return synthetic_mmsa_dict(preset, n_train=12, seq_len=7, text_dim=4, seed=seed, **options)


def test_items_have_the_documented_layout():
    splits = load_mmsa(small_raw("sims"), standardize=())
    item = splits["valid"][1]
    assert item["index"] == 1
    assert isinstance(item["id"], str)
    assert isinstance(item["raw_text"], str)
    assert item["text_bert"].shape == (3, 7)
    assert item["text_bert"].dtype == torch.int64
    assert item["text"].shape == (7, 4)
    assert item["audio"].shape == (7, 33)
    assert item["vision"].shape == (7, 709)
    for key in ("text_lengths", "audio_lengths", "vision_lengths"):
        assert item[key].dtype == torch.int64
        assert item[key].dim() == 0
    assert set(item["labels"]) == {"fusion", "text", "audio", "vision"}
    assert splits["train"].dims == {"text": 4, "audio": 33, "vision": 709}
    assert splits["train"][-1]["index"] == len(splits["train"]) - 1


def test_collate_through_a_dataloader():
    splits = load_mmsa(small_raw())
    loader = DataLoader(splits["train"], batch_size=5, shuffle=False, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["index"].dtype == torch.int64
    assert batch["text_bert"].shape == (5, 3, 7)
    assert batch["audio"].shape == (5, 7, 5)
    assert batch["audio"].dtype == torch.float32
    for key in ("text_lengths", "audio_lengths", "vision_lengths"):
        assert batch[key].dtype == torch.int64
        assert batch[key].device.type == "cpu"
        assert batch[key].shape == (5,)
    assert batch["labels"]["fusion"].dtype == torch.float32
    assert batch["labels"]["fusion"].shape == (5,)
    assert len(batch["id"]) == 5
    torch.testing.assert_close(batch["labels"]["fusion"], splits["train"].labels["fusion"][:5])


def test_collate_rejects_empty_and_mixed_items():
    splits = load_mmsa(small_raw())
    with pytest.raises(ValueError, match="items: expected at least one item"):
        collate([])
    item = splits["train"][0]
    with pytest.raises(ValueError, match=r"items\[1\]: expected the keys"):
        collate([item, {k: v for k, v in item.items() if k != "text"}])


def _variant_raw(variant):
    raw = small_raw("sims" if variant == "sims" else "mosi", seed=5)
    for split in raw.values():
        if variant == "aligned":
            del split["audio_lengths"], split["vision_lengths"]
        elif variant == "no_text_bert":
            del split["text_bert"]
        elif variant == "no_text":
            del split["text"]
    return raw


_VARIANTS = ("mosi", "sims", "aligned", "no_text_bert", "no_text")
_VARIANT_SPLITS = {}


def _variant_split(variant, split):
    if variant not in _VARIANT_SPLITS:
        _VARIANT_SPLITS[variant] = load_mmsa(_variant_raw(variant))
    return _VARIANT_SPLITS[variant][split]


def _assert_identical(got, expected, where="batch"):
    assert type(got) is type(expected), where
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            _assert_identical(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        assert (got.dtype, got.shape, got.device) == (
            expected.dtype,
            expected.shape,
            expected.device,
        )
        assert torch.equal(got, expected), where
    else:
        assert got == expected, where


@settings(max_examples=60, deadline=None)
@given(
    variant=st.sampled_from(_VARIANTS),
    split=st.sampled_from(["train", "valid", "test"]),
    data=st.data(),
)
def test_collate_returns_exactly_what_default_collate_returns(variant, split, data):
    dataset = _variant_split(variant, split)
    indices = data.draw(
        st.lists(st.integers(0, len(dataset) - 1), min_size=1, max_size=9), label="indices"
    )
    items = [dataset[i] for i in indices]
    _assert_identical(collate(items), default_collate(items))
    batch = collate(items)  # and the documented layout, independently of default_collate
    assert batch["index"].tolist() == [range(len(dataset))[i] for i in indices]
    assert batch["id"] == [dataset.ids[i] for i in indices]
    for key, tensor in dataset.tensors.items():
        torch.testing.assert_close(batch[key], tensor[indices], rtol=0, atol=0)
    for key, labels in dataset.labels.items():
        torch.testing.assert_close(batch["labels"][key], labels[indices], rtol=0, atol=0)


def test_collate_names_the_first_item_whose_nested_keys_differ():
    dataset = _variant_split("sims", "train")
    first, second = dataset[0], dataset[1]
    second["labels"] = {k: v for k, v in second["labels"].items() if k != "audio"}
    with pytest.raises(ValueError, match=r"items\[1\]\['labels'\]: expected the keys"):
        collate([first, second])


def test_values_match_the_raw_dict():
    raw = small_raw("sims", seed=3)
    splits = load_mmsa(raw, standardize=())
    test = splits["test"]
    np.testing.assert_array_equal(test.tensors["audio"].numpy(), raw["test"]["audio"])
    np.testing.assert_array_equal(test.tensors["text_bert"].numpy(), raw["test"]["text_bert"])
    # Labels are keyed by head name; MMSA's pickle keys written out here from its layout.
    mmsa = {
        "fusion": "regression_labels",
        "text": "regression_labels_T",
        "audio": "regression_labels_A",
        "vision": "regression_labels_V",
    }
    assert mmsa == LABEL_KEYS
    assert list(test.labels) == list(mmsa)
    columns = [raw["test"][key] for key in mmsa.values()]
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(columns, 2))
    for name, key in mmsa.items():
        np.testing.assert_array_equal(test.labels[name].numpy(), raw["test"][key])
    assert test.ids == list(raw["test"]["id"])
    assert test.tensors["text_lengths"].tolist() == raw["test"]["text_bert"][:, 1].sum(1).tolist()


def test_pickle_file_and_dict_load_identically(tmp_path):
    raw = small_raw(seed=1)
    path = tmp_path / "unaligned.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=4))
    from_file, from_dict = load_mmsa(path), load_mmsa(raw)
    for split in ("train", "valid", "test"):
        for key, tensor in from_dict[split].tensors.items():
            torch.testing.assert_close(from_file[split].tensors[key], tensor)


def test_float_token_ids_become_int64():
    raw = small_raw()
    expected = raw["train"]["text_bert"].copy()
    raw["train"]["text_bert"] = expected.astype(np.float32)
    ids = load_mmsa(raw)["train"].tensors["text_bert"]
    assert ids.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), expected)


def test_aligned_files_take_lengths_from_the_attention_mask():
    raw = small_raw()
    for split in raw.values():
        del split["audio_lengths"], split["vision_lengths"]
    train = load_mmsa(raw)["train"]
    mask_lengths = torch.from_numpy(raw["train"]["text_bert"][:, 1].sum(1))
    torch.testing.assert_close(train.tensors["audio_lengths"], mask_lengths)
    torch.testing.assert_close(train.tensors["vision_lengths"], mask_lengths)


def _cleaning_warnings(raw, **options):
    """Load ``raw`` and return (splits, the DataCleaningWarnings it emitted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_mmsa(raw, standardize=(), **options)
    return splits, [w.message for w in caught if issubclass(w.category, DataCleaningWarning)]


def test_non_finite_features_are_zeroed_and_reported_once_per_split_and_key():
    raw = small_raw()
    raw["train"]["audio"][0, 0, 0] = np.nan
    raw["train"]["audio"][1, 0, :2] = -np.inf
    raw["test"]["audio"][0, 2, 1] = np.nan
    raw["test"]["vision"][2, 1, 3] = np.inf
    raw["valid"]["text"][1, 0, :3] = np.nan
    splits, caught = _cleaning_warnings(raw)
    assert len(caught) == 1
    assert caught[0].counts == {
        ("train", "audio", "non-finite"): 3,
        ("valid", "text", "non-finite"): 3,
        ("test", "audio", "non-finite"): 1,
        ("test", "vision", "non-finite"): 1,
    }
    message = str(caught[0])
    assert "split 'train', key 'audio': 3 non-finite values set to 0" in message
    assert "split 'test', key 'audio': 1 non-finite value set to 0" in message
    assert "split 'test', key 'vision': 1 non-finite value set to 0" in message
    assert "split 'valid', key 'text': 3 non-finite values set to 0" in message
    assert splits["train"].tensors["audio"][0, 0, 0] == 0
    assert torch.all(splits["train"].tensors["audio"][1, 0, :2] == 0)
    assert splits["test"].tensors["vision"][2, 1, 3] == 0
    assert torch.all(splits["valid"].tensors["text"][1, 0, :3] == 0)
    for split in ("train", "valid", "test"):
        for key in ("text", "audio", "vision"):
            assert torch.isfinite(splits[split].tensors[key]).all()


@pytest.mark.parametrize(
    ("split", "key", "value", "steps"),
    [
        ("train", "audio_lengths", 8, 7),  # one step beyond the 7 stored
        ("valid", "vision_lengths", 99, 7),
        ("test", "audio_lengths", 0, 7),
        ("train", "vision_lengths", -2, 7),
    ],
)
def test_lengths_outside_the_stored_sequence_are_errors(split, key, value, steps):
    raw = small_raw()
    raw[split][key][1] = value
    pattern = (
        rf"split '{split}', key '{key}': expected lengths in \[1, {steps}\] .*found 1 outside "
        rf"\(the first at sample 1: {value}\); pass clip_lengths=True"
    )
    with pytest.raises(DataFormatError, match=pattern):
        load_mmsa(raw)


def test_clip_lengths_clips_and_reports_each_split_and_key():
    raw = small_raw()
    raw["train"]["audio_lengths"][3] = 99
    raw["train"]["audio_lengths"][4] = 8
    raw["valid"]["vision_lengths"][0] = 0
    splits, caught = _cleaning_warnings(raw, clip_lengths=True)
    assert len(caught) == 1
    assert caught[0].counts == {
        ("train", "audio_lengths", "clipped"): 2,
        ("valid", "vision_lengths", "clipped"): 1,
    }
    assert "split 'train', key 'audio_lengths': 2 lengths clipped to [1, 7]" in str(caught[0])
    assert splits["train"].tensors["audio_lengths"][3] == 7
    assert splits["train"].tensors["audio_lengths"][4] == 7
    assert splits["valid"].tensors["vision_lengths"][0] == 1
    expected = np.clip(raw["test"]["audio_lengths"], 1, 7)  # untouched where in range
    np.testing.assert_array_equal(splits["test"].tensors["audio_lengths"].numpy(), expected)


def test_lengths_must_be_whole_numbers_even_when_clipping():
    raw = small_raw()
    raw["test"]["audio_lengths"] = np.asarray(raw["test"]["audio_lengths"], dtype=np.float64)
    raw["test"]["audio_lengths"][0] = 2.5
    with pytest.raises(DataFormatError, match=r"'test', key 'audio_lengths': expected whole"):
        load_mmsa(raw, clip_lengths=True)


def test_aligned_files_check_the_lengths_they_borrow_from_the_mask():
    raw = small_raw()
    for split in raw.values():
        del split["audio_lengths"], split["vision_lengths"]
    raw["valid"]["audio"] = raw["valid"]["audio"][:, :2]  # shorter than the token sequences
    with pytest.raises(DataFormatError, match=r"'valid', key 'audio_lengths'.*from text_lengths"):
        load_mmsa(raw)


@pytest.mark.parametrize(
    ("preset", "key", "value", "label_range", "shown"),
    [
        ("mosi", "regression_labels", 3.2, None, r"\[-3, 3\]"),
        ("mosi", "regression_labels", -7.0, None, r"\[-3, 3\]"),
        ("sims", "regression_labels_A", 1.4, (-1, 1), r"\[-1, 1\]"),
        ("sims", "regression_labels", -1.2, (-1.0, 1.0), r"\[-1, 1\]"),
    ],
)
def test_labels_outside_the_range_are_errors(preset, key, value, label_range, shown):
    raw = small_raw(preset)
    raw["valid"][key][1] = value
    options = {} if label_range is None else {"label_range": label_range}
    pattern = (
        rf"split 'valid', key '{key}': expected labels in label_range {shown}, found 1 "
        rf"outside \(the first at sample 1: {value:g}\)"
    )
    with pytest.raises(DataFormatError, match=pattern):
        load_mmsa(raw, **options)


def test_default_label_range_holds_sims_and_none_checks_nothing():
    raw = small_raw("sims")
    load_mmsa(raw)  # [-1, 1] lies in the default [-3, 3]
    raw["train"]["regression_labels"][0] = 250.0
    assert load_mmsa(raw, label_range=None)["train"].labels["fusion"][0] == 250.0


def test_clip_labels_clips_and_reports_each_split_and_key():
    raw = small_raw("sims")
    raw["train"]["regression_labels"][:2] = [1.5, -4.0]
    raw["test"]["regression_labels_T"][0] = 1.01
    splits, caught = _cleaning_warnings(raw, label_range=(-1, 1), clip_labels=True)
    assert len(caught) == 1
    assert caught[0].counts == {
        ("train", "regression_labels", "clipped"): 2,
        ("test", "regression_labels_T", "clipped"): 1,
    }
    assert "key 'regression_labels': 2 labels clipped to [-1, 1]" in str(caught[0])
    assert splits["train"].labels["fusion"][:2].tolist() == [1.0, -1.0]
    assert splits["test"].labels["text"][0] == 1.0


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"label_range": 3}, TypeError, "label_range: expected None or a pair"),
        ({"label_range": (-3, 3, 4)}, TypeError, "label_range: expected None or a pair"),
        ({"label_range": (True, 3)}, TypeError, "label_range: expected None or a pair"),
        ({"label_range": (3, -3)}, ValueError, "label_range: expected finite low < high"),
        ({"label_range": (-np.inf, 3)}, ValueError, "label_range: expected finite low < high"),
        ({"clip_lengths": 1}, TypeError, "clip_lengths: expected True or False, got int"),
        ({"clip_labels": "yes"}, TypeError, "clip_labels: expected True or False, got str"),
        ({"clip_labels": True, "label_range": None}, ValueError, "clip_labels: needs a"),
    ],
)
def test_bad_options_name_the_argument(options, error, pattern):
    with pytest.raises(error, match=pattern):
        load_mmsa(small_raw(), **options)


def test_bad_source_type_names_the_argument():
    with pytest.raises(TypeError, match="source: expected a path or a dict of splits, got int"):
        load_mmsa(3)


def test_loading_leaves_the_input_dict_unchanged():
    raw = small_raw()
    raw["train"]["audio"][0, 0, 0] = np.nan
    raw["train"]["audio_lengths"][0] = 99
    before = {s: {k: np.array(v, copy=True) for k, v in d.items()} for s, d in raw.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataCleaningWarning)
        load_mmsa(raw, clip_lengths=True)
    for split, data in raw.items():
        for key, value in data.items():
            np.testing.assert_array_equal(np.asarray(value), before[split][key])


def test_clean_data_loads_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mmsa(small_raw())


def test_standardisation_is_fitted_on_valid_train_steps_and_applied_to_all_splits():
    raw = small_raw(seed=2)
    for split in raw.values():  # an offset and scale that standardisation must remove
        split["audio"] = np.where(split["audio"] != 0, 50.0 + 3.0 * split["audio"], 0.0)
    splits = load_mmsa(raw, standardize=("audio",))
    train_raw = raw["train"]
    valid_steps = np.arange(7)[None, :] < np.asarray(train_raw["audio_lengths"])[:, None]
    values = train_raw["audio"][valid_steps]  # (valid steps, d_a), by numpy boolean indexing
    mean, std = values.mean(0), values.std(0)
    for split in ("train", "test"):
        lengths = np.asarray(raw[split]["audio_lengths"])
        mask = np.arange(7)[None, :, None] < lengths[:, None, None]
        expected = np.where(mask, (raw[split]["audio"] - mean) / std, 0.0)
        np.testing.assert_allclose(
            splits[split].tensors["audio"].numpy(), expected, rtol=1e-4, atol=1e-4
        )
    # vision was not asked for and is untouched
    np.testing.assert_array_equal(splits["train"].tensors["vision"].numpy(), raw["train"]["vision"])


def test_constant_features_do_not_divide_by_zero():
    raw = small_raw()
    for split in raw.values():
        split["vision"][..., 0] = 5.0
    splits = load_mmsa(raw, standardize=("vision",))
    assert torch.isfinite(splits["test"].tensors["vision"]).all()


def test_unknown_standardize_modality_raises():
    with pytest.raises(ValueError, match="standardize: expected one of"):
        load_mmsa(small_raw(), standardize=("video",))


def _drop(split, key):
    def edit(raw):
        del raw[split][key]

    return edit


def _set(split, key, value):
    def edit(raw):
        raw[split][key] = value(raw[split][key])

    return edit


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda raw: raw.pop("valid"),
            r"expected the split 'valid', found only \['test', 'train'\]",
        ),
        (_drop("test", "audio"), r"split 'test': expected the keys \['audio'\], found only"),
        (
            _drop("train", "regression_labels"),
            r"split 'train': expected the keys \['regression_labels'\]",
        ),
        (
            _set("valid", "vision", lambda v: v[:, :, 0]),
            r"split 'valid', key 'vision': expected shape \(2, \*, \*\) .*found shape \(2, 7\)",
        ),
        (
            _set("train", "audio", lambda v: v[:-1]),
            r"split 'train', key 'audio': expected shape \(12, \*, \*\) .*found shape \(11, 7, 5\)",
        ),
        (
            _set("train", "text_bert", lambda v: v[:, :2]),
            r"'train', key 'text_bert': expected shape \(12, 3, \*\) .*found shape \(12, 2, 7\)",
        ),
        (
            _set("test", "audio_lengths", lambda v: v[:-1]),
            r"split 'test', key 'audio_lengths': expected shape \(6,\) .*found shape \(5,\)",
        ),
        (
            _set("test", "id", lambda v: v[:-1]),
            r"split 'test', key 'id': expected 6 entries .*found 5",
        ),
        (
            _set("test", "audio", lambda v: v[..., :3]),
            r"split 'test', key 'audio': expected the width of split 'train', 5, .*found 3",
        ),
        (
            _set("valid", "regression_labels", lambda v: np.stack([v, v], 1)),
            r"split 'valid', key 'regression_labels': expected shape \(N,\) or \(N, 1\)",
        ),
        (
            _set(
                "test", "regression_labels", lambda v: np.where(np.arange(len(v)) == 2, np.nan, v)
            ),
            r"split 'test', key 'regression_labels': expected finite labels, found 1 NaN or Inf "
            r"\(the first at sample 2: nan\)",
        ),
        (
            lambda raw: raw.update(valid={k: v[:0] for k, v in raw["valid"].items()}),
            r"split 'valid', key 'regression_labels': expected at least one sample, found an empty",
        ),
        (
            _set("train", "audio", lambda v: v[:, :0]),
            r"split 'train', key 'audio': expected shape \(12, \*, \*\) .*every \* at least 1\), "
            r"found shape \(12, 0, 5\)",
        ),
        (
            _set("train", "audio", lambda v: v.astype(object)),
            r"split 'train', key 'audio': expected a numeric .* array, found dtype object",
        ),
        (
            _set("valid", "vision", lambda v: [list(row) for row in v[:, 0]] + [[1.0]]),
            r"split 'valid', key 'vision': expected a rectangular numeric array, found a list",
        ),
        (
            _set("test", "id", lambda v: [*v[:-1], 7]),
            r"split 'test', key 'id': expected strings, found a int at position 5",
        ),
        (
            _set("test", "id", lambda v: "abcdef"),
            r"split 'test', key 'id': expected a list of 6 strings, found str",
        ),
        (
            _set("train", "raw_text", lambda v: np.array(v, dtype=bytes)),
            r"split 'train', key 'raw_text': expected strings, found a bytes_ at position 0",
        ),
        (
            _set("train", "text_bert", lambda v: np.where(v == 101, -1, v)),
            r"split 'train', key 'text_bert': expected ids in \[0, 2\^31\), found 12 outside",
        ),
        (
            _set("valid", "text_bert", lambda v: v + 0.5),
            r"split 'valid', key 'text_bert': expected whole-number token ids",
        ),
        (
            _set("valid", "text_bert", lambda v: v * 2),
            r"split 'valid', key 'text_bert': expected an attention mask \(row 1\) of 0s and 1s",
        ),
        (
            _drop("valid", "text"),
            r"key 'text': present in the splits \['train', 'test'\] but missing in \['valid'\]",
        ),
        (
            lambda raw: raw["train"].update(regression_labels_T=raw["train"]["regression_labels"]),
            r"key 'regression_labels_T': present in the splits \['train'\] but missing in "
            r"\['valid', 'test'\]",
        ),
    ],
)
def test_bad_files_name_split_key_expected_and_found(edit, pattern):
    raw = small_raw()
    edit(raw)
    with pytest.raises(DataFormatError, match=pattern):
        load_mmsa(raw)


def test_standardising_a_modality_the_file_lacks_names_split_and_key():
    raw = small_raw()
    for split in raw.values():
        del split["text"]
    with pytest.raises(DataFormatError, match=r"split 'train', key 'text': standardize asks"):
        load_mmsa(raw, standardize=("text",))


def test_standardising_to_values_beyond_float32_is_an_error():
    raw = small_raw()
    raw["train"]["audio"] = raw["train"]["audio"] * 1e-3  # train std about 1e-3
    raw["test"]["audio"][0, 0, 0] = 3e38  # finite in float32, beyond it once standardised
    with pytest.raises(DataFormatError, match=r"split 'test', key 'audio': standardising"):
        load_mmsa(raw, standardize=("audio",))


def test_float64_features_beyond_float32_count_as_non_finite():
    raw = small_raw()
    raw["valid"]["vision"] = raw["valid"]["vision"].astype(np.float64)
    raw["valid"]["vision"][1, 0, 0] = -1e300
    splits, caught = _cleaning_warnings(raw)
    assert caught[0].counts == {("valid", "vision", "non-finite"): 1}
    assert splits["valid"].tensors["vision"][1, 0, 0] == 0


def test_a_file_holding_no_dict_raises_a_format_error(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataFormatError, match=r"list\.pkl: expected a dict with the splits .*list"):
        load_mmsa(path)


def test_missing_file_raises():
    with pytest.raises(FileNotFoundError):
        load_mmsa("/nonexistent/deepalign/unaligned_50.pkl")


def test_real_mosi_loads_with_the_readme_layout(real_mosi_path):
    splits = load_mmsa(real_mosi_path)
    assert {name: len(ds) for name, ds in splits.items()} == {
        "train": 1252,
        "valid": 195,
        "test": 752,
    }
    train = splits["train"]
    assert train.dims == {"text": 100, "audio": 73, "vision": 100}
    assert train.seq_lens == {"text": 1, "audio": 1, "vision": 1, "text_bert": 50}
    assert torch.all(train.tensors["audio_lengths"] == 1)
    assert train.tensors["text_bert"][:, 0, 0].eq(101).all()
    assert train.labels["fusion"].abs().max() <= 3
    audio = train.tensors["audio"][:, 0]
    torch.testing.assert_close(audio.mean(0), torch.zeros(73), atol=1e-4, rtol=0)
    assert splits["test"].tensors["audio"].abs().max() < 100  # raw values reach ~376


def test_real_mosi_text_ridge_reproduces_the_readme_floor(real_mosi_path):
    """The README's floor (text CNN: MAE 0.955, Corr 0.606) was measured independently."""
    from sklearn.linear_model import RidgeCV

    from deepalign.metrics import msa_metrics

    splits = load_mmsa(real_mosi_path, standardize=("text",))
    train, test = splits["train"], splits["test"]
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(
        train.tensors["text"][:, 0], train.labels["fusion"]
    )
    metrics = msa_metrics(model.predict(test.tensors["text"][:, 0]), test.labels["fusion"])
    assert metrics["MAE"] == pytest.approx(0.955, abs=0.02)
    assert metrics["Corr"] == pytest.approx(0.606, abs=0.02)
