"""deepalign.data: the MMSA loader, its cleaning and validation, collate, and the real MOSI file."""

import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deepalign.data import DataCleaningWarning, collate, load_mmsa, synthetic_mmsa_dict


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
    assert set(item["labels"]) == {"M", "T", "A", "V"}
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
    assert batch["labels"]["M"].dtype == torch.float32
    assert batch["labels"]["M"].shape == (5,)
    assert len(batch["id"]) == 5
    torch.testing.assert_close(batch["labels"]["M"], splits["train"].labels["M"][:5])


def test_collate_rejects_empty_and_mixed_items():
    splits = load_mmsa(small_raw())
    with pytest.raises(ValueError, match="items: expected at least one item"):
        collate([])
    item = splits["train"][0]
    with pytest.raises(ValueError, match=r"items\[1\]: expected the keys"):
        collate([item, {k: v for k, v in item.items() if k != "text"}])


def test_values_match_the_raw_dict():
    raw = small_raw("sims", seed=3)
    splits = load_mmsa(raw, standardize=())
    test = splits["test"]
    np.testing.assert_array_equal(test.tensors["audio"].numpy(), raw["test"]["audio"])
    np.testing.assert_array_equal(test.tensors["text_bert"].numpy(), raw["test"]["text_bert"])
    np.testing.assert_array_equal(test.labels["T"].numpy(), raw["test"]["regression_labels_T"])
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


def test_non_finite_values_and_bad_lengths_are_cleaned_and_reported_once():
    raw = small_raw()
    raw["train"]["audio"][0, 0, 0] = np.nan
    raw["train"]["audio"][1, 0, :2] = -np.inf
    raw["test"]["vision"][2, 1, 3] = np.inf
    raw["train"]["audio_lengths"][3] = 99
    raw["valid"]["vision_lengths"][0] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_mmsa(raw, standardize=())
    messages = [str(w.message) for w in caught if issubclass(w.category, DataCleaningWarning)]
    assert len(messages) == 1
    assert re.search(r"non-finite audio values set to 0: 3\b", messages[0])
    assert re.search(r"non-finite vision values set to 0: 1\b", messages[0])
    assert re.search(r"audio_lengths clipped to \[1, T\]: 1\b", messages[0])
    assert re.search(r"vision_lengths clipped to \[1, T\]: 1\b", messages[0])
    assert splits["train"].tensors["audio"][0, 0, 0] == 0
    assert torch.all(splits["train"].tensors["audio"][1, 0, :2] == 0)
    assert splits["test"].tensors["vision"][2, 1, 3] == 0
    assert splits["train"].tensors["audio_lengths"][3] == 7
    assert splits["valid"].tensors["vision_lengths"][0] == 1


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
            r"split 'test', key 'audio': expected the train split's width 5 .*found 3",
        ),
        (
            _set("valid", "regression_labels", lambda v: np.stack([v, v], 1)),
            r"expected shape \(N,\) or \(N, 1\)",
        ),
    ],
)
def test_bad_files_name_split_key_expected_and_found(edit, pattern):
    raw = small_raw()
    edit(raw)
    with pytest.raises(ValueError, match=pattern):
        load_mmsa(raw)


def test_a_file_holding_no_dict_raises_type_error(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(TypeError, match=r"list\.pkl: expected a dict with the splits .*got list"):
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
    assert train.labels["M"].abs().max() <= 3
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
        train.tensors["text"][:, 0], train.labels["M"]
    )
    metrics = msa_metrics(model.predict(test.tensors["text"][:, 0]), test.labels["M"])
    assert metrics["MAE"] == pytest.approx(0.955, abs=0.02)
    assert metrics["Corr"] == pytest.approx(0.606, abs=0.02)
