"""deepalign.data.make_synthetic: layout of each preset, determinism, and the planted structure."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV

from deepalign.data import load_mmsa, make_synthetic, synthetic_mmsa_dict
from deepalign.metrics import msa_metrics

REAL_SHAPES = {  # (text_bert L, audio (T, d), vision (T, d), label limit), from the MMSA files
    "mosi": (50, (375, 5), (500, 20), 3.0),
    "mosei": (50, (500, 74), (500, 35), 3.0),
    "sims": (39, (400, 33), (55, 709), 1.0),
}


@pytest.mark.parametrize("preset", list(REAL_SHAPES))
def test_preset_shapes(preset):
    text_len, audio, vision, _ = REAL_SHAPES[preset]
    train = make_synthetic(preset, n_train=3, text_dim=8, seed=0)["train"]
    assert train.tensors["text_bert"].shape == (3, 3, text_len)
    assert train.tensors["text"].shape == (3, text_len, 8)
    assert train.tensors["audio"].shape == (3, *audio)
    assert train.tensors["vision"].shape == (3, *vision)
    unimodal = {"text", "audio", "vision"} if preset == "sims" else set()
    assert set(train.labels) == {"fusion"} | unimodal


def test_default_text_width_is_bert_base():
    assert make_synthetic("mosi", n_train=1, seed=0)["train"].dims["text"] == 768


def test_split_sizes_follow_the_real_proportions():
    sizes = {
        k: len(v) for k, v in make_synthetic("mosi", n_train=128, seq_len=4, text_dim=2).items()
    }
    # 128 * 229 / 1284 = 22.8 -> 23; 128 * 686 / 1284 = 68.4 -> 68
    assert sizes == {"train": 128, "valid": 23, "test": 68}
    sims = {
        k: len(v) for k, v in make_synthetic("sims", n_train=100, seq_len=4, text_dim=2).items()
    }
    # 100 * 456 / 1368 = 33.3 -> 33; 100 * 457 / 1368 = 33.4 -> 33
    assert sims == {"train": 100, "valid": 33, "test": 33}


def test_deterministic_per_seed():
    a = synthetic_mmsa_dict("sims", n_train=10, seq_len=5, text_dim=3, seed=7)
    b = synthetic_mmsa_dict("sims", n_train=10, seq_len=5, text_dim=3, seed=7)
    c = synthetic_mmsa_dict("sims", n_train=10, seq_len=5, text_dim=3, seed=8)
    for key in ("text", "text_bert", "audio", "vision", "regression_labels_T"):
        np.testing.assert_array_equal(a["test"][key], b["test"][key])
    assert not np.array_equal(a["train"]["audio"], c["train"]["audio"])


@pytest.mark.parametrize(
    ("preset", "limit", "step"), [("mosi", 3.0, 0.2), ("mosei", 3.0, 1 / 3), ("sims", 1.0, 0.2)]
)
def test_labels_lie_on_the_annotation_grid(preset, limit, step):
    raw = synthetic_mmsa_dict(
        preset, n_train=300, seq_len=4, text_dim=2, seed=1, unimodal_labels=True
    )
    for key in (
        "regression_labels",
        "regression_labels_T",
        "regression_labels_A",
        "regression_labels_V",
    ):
        y = raw["train"][key].astype(np.float64)
        assert np.abs(y).max() <= limit + 1e-6
        np.testing.assert_allclose(y / step, np.round(y / step), atol=1e-4)
    assert (raw["train"]["regression_labels"] == 0).any()  # exact zeros, as in the real data


def test_token_ids_are_bert_shaped():
    raw = synthetic_mmsa_dict("mosi", n_train=50, seed=2, text_dim=2)
    ids, mask, types = raw["train"]["text_bert"].transpose(1, 0, 2)
    lengths = mask.sum(1)
    rows = np.arange(len(ids))
    assert (ids[:, 0] == 101).all()
    assert (ids[rows, lengths - 1] == 102).all()
    assert (mask == (np.arange(50)[None] < lengths[:, None])).all()
    assert (ids[mask == 0] == 0).all()
    assert ((ids >= 0) & (ids < 30522)).all()
    assert (types == 0).all()
    assert lengths.min() >= 3


def test_padding_is_zero_and_lengths_vary():
    train = make_synthetic("mosi", n_train=40, seq_len=12, text_dim=3, seed=3)["train"]
    for modality in ("audio", "vision"):
        x, lengths = train.tensors[modality], train.tensors[f"{modality}_lengths"]
        assert lengths.unique().numel() > 3
        pad = torch.arange(12)[None] >= lengths[:, None]
        assert (x[pad] == 0).all()
        assert (x[~pad].abs().sum(-1) > 0).all()


def _pooled(ds, modality):
    x = ds.tensors[modality]
    lengths = ds.tensors[f"{modality}_lengths"].clamp(max=x.shape[1])
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).float()[..., None]
    return ((x * mask).sum(1) / mask.sum(1)).numpy()


def _ridge_corr(splits, modalities, target="fusion", dataset="mosi"):
    """Pearson correlation on test of a ridge regression on mean-pooled features."""

    def features(ds):
        return np.concatenate([_pooled(ds, m) for m in modalities], axis=1)

    train, test = splits["train"], splits["test"]
    model = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(
        features(train), train.labels[target].numpy()
    )
    return msa_metrics(model.predict(features(test)), test.labels[target].numpy(), dataset=dataset)[
        "Corr"
    ]


def _medium(**options):
    return make_synthetic("mosi", n_train=1200, seq_len=10, text_dim=16, seed=11, **options)


def test_text_carries_the_sentiment_most_strongly():
    splits = _medium()
    text, audio, vision = (_ridge_corr(splits, [m]) for m in ("text", "audio", "vision"))
    assert text > audio + 0.15
    assert text > vision + 0.15


def test_audio_and_vision_together_recover_the_shared_latent():
    splits = _medium()
    both = _ridge_corr(splits, ["audio", "vision"])
    assert both > _ridge_corr(splits, ["audio"]) + 0.15
    assert both > _ridge_corr(splits, ["vision"]) + 0.15


def test_shared_mask_knob_controls_the_synergy():
    unmasked = _medium(shared_mask=0.0)
    gain = _ridge_corr(unmasked, ["audio", "vision"]) - _ridge_corr(unmasked, ["audio"])
    assert gain < 0.1


def test_text_signal_knob():
    assert abs(_ridge_corr(_medium(text_signal=0.0, unimodal_offset=0.0), ["text"])) < 0.15


def test_unimodal_offsets_are_carried_by_their_own_modality():
    splits = make_synthetic("sims", n_train=1000, seq_len=8, text_dim=16, seed=5)
    for ds in splits.values():
        for m in ("text", "audio", "vision"):  # the planted offset y_m - y_M as a label
            ds.labels[f"offset_{m}"] = ds.labels[m] - ds.labels["fusion"]
    assert _ridge_corr(splits, ["text"], "offset_text", "sims") > 0.5
    assert _ridge_corr(splits, ["audio"], "offset_audio", "sims") > 0.5
    assert abs(_ridge_corr(splits, ["audio"], "offset_text", "sims")) < 0.15
    assert abs(_ridge_corr(splits, ["text"], "offset_vision", "sims")) < 0.15


def test_nuisance_knob_adds_label_free_variance():
    quiet = make_synthetic("mosi", n_train=400, seq_len=6, text_dim=8, seed=4, nuisance=0.0)
    loud = make_synthetic("mosi", n_train=400, seq_len=6, text_dim=8, seed=4, nuisance=3.0)
    assert (
        _pooled(loud["train"], "vision").var(0).sum()
        > 2 * _pooled(quiet["train"], "vision").var(0).sum()
    )
    torch.testing.assert_close(loud["train"].labels["fusion"], quiet["train"].labels["fusion"])


def test_sentiment_is_recoverable_from_token_ids():
    """Sentiment words (a graded lexicon) let a model fine-tuned on ids find the sentiment."""
    train = make_synthetic("mosi", n_train=800, seq_len=30, text_dim=2, seed=6)["train"]
    ids = train.tensors["text_bert"][:, 0]
    is_lexicon = (ids >= 1000) & (ids < 1112)
    grade = torch.where(is_lexicon, (ids - 1000) // 16 - 3, 0).float()
    mean_grade = grade.sum(1) / is_lexicon.sum(1)
    assert np.corrcoef(mean_grade.numpy(), train.labels["fusion"].numpy())[0, 1] > 0.5


@pytest.mark.parametrize(
    ("option", "value", "error", "match"),
    [
        ("preset", "iemocap", ValueError, "preset: expected one of"),
        ("n_train", 0, ValueError, "n_train: expected an int >= 1"),
        ("n_train", 2.5, TypeError, "n_train: expected an int"),
        ("seq_len", 2, ValueError, "seq_len: expected an int >= 3"),
        ("text_signal", 1.5, ValueError, r"text_signal: expected a number in \[0.0, 1.0\]"),
        ("shared_mask", -1.0, ValueError, "shared_mask: expected a number"),
        ("nuisance", "big", TypeError, "nuisance: expected a real number"),
    ],
)
def test_invalid_options_raise(option, value, error, match):
    options = {"preset": "mosi", "n_train": 4, "seq_len": 4, "text_dim": 2} | {option: value}
    with pytest.raises(error, match=match):
        make_synthetic(**options)


def test_synthetic_goes_through_the_loader():
    raw = synthetic_mmsa_dict("mosi", n_train=6, seq_len=5, text_dim=3, seed=9)
    direct = make_synthetic("mosi", n_train=6, seq_len=5, text_dim=3, seed=9)
    loaded = load_mmsa(raw, standardize=())
    for key, tensor in direct["valid"].tensors.items():
        torch.testing.assert_close(loaded["valid"].tensors[key], tensor)
