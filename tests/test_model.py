"""Tests of deepalign.model: MSAConfig presets and the MultiTaskMSA network (Eq. 1–8)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from deepalign import ModalityAlignment, MSAConfig, MultiTaskMSA
from deepalign.alignment import ESTIMATORS
from deepalign.model import ALIGN_ON, _trim_padding
from deepalign.training import TrainConfig, parameter_groups

# MMSA's published Self-MM configuration, transcribed independently of deepalign.model and
# deepalign.training (the training half is checked in test_training.py).
PUBLISHED = {
    "mosi": {
        "batch_size": 16,
        "lr": (5e-5, 5e-3, 5e-3, 1e-3),
        "weight_decay": (1e-3, 1e-3, 1e-3, 1e-3),
        "hidden": (16, 32),
        "out": (16, 32),
        "post": (128, 32, 16, 32),
        "dropout": (0.0, 0.1, 0.1, 0.0),
        "H": 3.0,
        "dims": (768, 5, 20),
        "bert": "bert-base-uncased",
    },
    "mosei": {
        "batch_size": 32,
        "lr": (5e-5, 5e-3, 1e-4, 1e-3),
        "weight_decay": (1e-3, 0.0, 0.0, 1e-2),
        "hidden": (16, 32),
        "out": (16, 32),
        "post": (128, 32, 16, 32),
        "dropout": (0.1, 0.0, 0.0, 0.0),
        "H": 3.0,
        "dims": (768, 74, 35),
        "bert": "bert-base-uncased",
    },
    "sims": {
        "batch_size": 32,
        "lr": (5e-5, 5e-3, 5e-3, 1e-3),
        "weight_decay": (1e-3, 1e-2, 1e-2, 1e-3),
        "hidden": (16, 64),
        "out": (16, 32),
        "post": (128, 64, 16, 32),
        "dropout": (0.0, 0.1, 0.1, 0.0),
        "H": 1.0,
        "dims": (768, 33, 709),
        "bert": "bert-base-chinese",
    },
}
TEXT_WIDTH = 12
TINY_BERT_WIDTH = 24


def features_config(dataset: str = "mosi", **overrides) -> MSAConfig:
    dims = PUBLISHED[dataset]["dims"]
    return MSAConfig.preset(
        dataset, text_mode="features", feature_dims=(TEXT_WIDTH, *dims[1:]), **overrides
    )


def make_inputs(config: MSAConfig, lengths_a, lengths_v, *, text=None, seq_len=8):
    """Random padded inputs; ``text`` defaults to features for ``config``'s text width."""
    batch = len(lengths_a)
    _, d_a, d_v = config.feature_dims
    if text is None:
        text = torch.randn(batch, 5, config.feature_dims[0])
    return (
        text,
        torch.randn(batch, seq_len, d_a),
        torch.tensor(lengths_a),
        torch.randn(batch, seq_len, d_v),
        torch.tensor(lengths_v),
    )


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=TINY_BERT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


def token_inputs(batch: int, seq_len: int, valid: list[int]) -> torch.Tensor:
    """(B, 3, L) float ids, mask and segment ids, as MMSA stores text_bert."""
    ids = torch.randint(1, 100, (batch, seq_len))
    mask = (torch.arange(seq_len) < torch.tensor(valid)[:, None]).long()
    return torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1).float()


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_presets_match_the_published_configuration(dataset):
    want = PUBLISHED[dataset]
    c = MSAConfig.preset(dataset.upper())
    assert (c.audio_hidden, c.vision_hidden) == want["hidden"]
    assert (c.audio_out, c.vision_out) == want["out"]
    posts = (c.post_fusion_dim, c.post_text_dim, c.post_audio_dim, c.post_vision_dim)
    assert posts == want["post"]
    dropouts = (c.post_fusion_dropout, c.post_text_dropout, c.post_audio_dropout)
    assert (*dropouts, c.post_vision_dropout) == want["dropout"]
    assert (c.feature_dims, c.text_encoder) == (want["dims"], want["bert"])
    assert (c.alignment, c.text_mode, c.finetune_text) == (None, "bert", True)
    assert (c.align_estimator, c.fusion_modality_dropout) == ("plugin", 0.0)
    model_fields = {f.name for f in dataclasses.fields(MSAConfig)}
    assert not model_fields & {"batch_size", "patience", "H", "lr_other", "lr_bert"}


def test_preset_overrides_and_errors():
    assert MSAConfig.preset("mosi", feature_dims=[4, 5, 6]).feature_dims == (4, 5, 6)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        MSAConfig.preset("iemocap")
    with pytest.raises(TypeError, match="unknown MSAConfig fields"):
        MSAConfig.preset("mosi", learning_rate=1.0)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("text_mode", "glove", ValueError),
        ("align_on", "fusion", ValueError),
        ("align_projection", "random", ValueError),
        ("align_private", "clipped", ValueError),
        ("audio_out", 0, ValueError),
        ("post_text_dropout", 1.5, ValueError),
        ("fusion_modality_dropout", -0.1, ValueError),
        ("vision_out", 2.5, TypeError),
        ("align_estimator", "jackknife", ValueError),
        ("feature_dims", (768, 5), ValueError),
        ("feature_dims", 768, TypeError),
        ("alignment", 3, TypeError),
        ("alignment_weight", float("nan"), ValueError),
        ("alignment_weight", True, TypeError),
        ("finetune_text", 1, TypeError),
    ],
)
def test_invalid_config_values(field, value, error):
    with pytest.raises(error, match=field):
        MSAConfig(**{field: value})
    with pytest.raises(error, match=field):  # replace() validates as the constructor does
        dataclasses.replace(MSAConfig(), **{field: value})


def test_config_is_immutable():
    """Issue 13: ``config.align_on = "Encoder"`` used to pass unchecked and fail much later."""
    config = MSAConfig.preset("mosi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.align_on = "Encoder"
    with pytest.raises(ValueError, match="align_on"):
        dataclasses.replace(config, align_on="Encoder")
    changed = dataclasses.replace(config, align_on="post", alignment="V-A")
    assert (changed.align_on, changed.alignment, config.align_on) == ("post", "V-A", "encoder")
    assert hash(changed) != hash(config)  # frozen dataclasses hash by value


@pytest.mark.parametrize("spec", ["V-X", "V-", "T-V/", "V*A"])
def test_malformed_alignment_spec_fails_in_the_config(spec):
    with pytest.raises(ValueError, match=r"^alignment: spec: expected terms|unknown modality"):
        MSAConfig(alignment=spec)


# --- forward --------------------------------------------------------------------------------


def expected_widths(config: MSAConfig, text_width: int) -> dict[str, dict[str, int]]:
    """The output groups, their names and widths, written out from the class docstring."""
    return {
        "predictions": {"fusion": 1, "text": 1, "audio": 1, "vision": 1},
        "post": {
            "fusion": config.post_fusion_dim,
            "text": config.post_text_dim,
            "audio": config.post_audio_dim,
            "vision": config.post_vision_dim,
        },
        "encoder": {"text": text_width, "audio": config.audio_out, "vision": config.vision_out},
    }


def shapes(out: dict) -> dict[str, dict[str, tuple[int, ...]]]:
    """Group -> name -> shape; plain dicts only (an OrderedDict or a tensor fails the test)."""
    assert type(out) is dict
    assert all(type(group) is dict for group in out.values())
    return {g: {k: tuple(v.shape) for k, v in group.items()} for g, group in out.items()}


def flat(out: dict) -> dict[tuple[str, str], torch.Tensor]:
    """``(group, name) -> tensor`` over every output."""
    return {(g, k): v for g, group in out.items() for k, v in group.items()}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_forward_shapes_for_every_preset(dataset):
    config = features_config(dataset)
    out = MultiTaskMSA(config)(*make_inputs(config, [8, 3, 1], [2, 8, 5]))
    expected = {
        g: {k: (3, w) for k, w in group.items()}
        for g, group in expected_widths(config, TEXT_WIDTH).items()
    }
    assert shapes(out) == expected
    assert list(out) == ["predictions", "post", "encoder"]
    assert all(list(out[g]) == list(expected[g]) for g in out)  # the order is fixed too


@pytest.mark.parametrize("align_on", ALIGN_ON)
def test_alignment_reads_the_output_group_named_by_align_on(align_on):
    """The feature groups carry the names of align_on's values; the loss reads that group and
    nothing else, and says so when it is missing."""
    torch.manual_seed(9)
    config = features_config("mosi", alignment="T-V/A-V", align_on=align_on)
    model = MultiTaskMSA(config)
    out = model(*make_inputs(config, [8, 4, 6, 2], [8, 2, 3, 8]))
    expected = {
        "encoder": {"text": TEXT_WIDTH, "audio": 16, "vision": 32},
        "post": {"text": 32, "audio": 16, "vision": 32},
    }[align_on]
    assert model.alignment.dims == expected
    assert {k: v.shape[1] for k, v in out[align_on].items() if k != "fusion"} == expected
    loss = model.alignment_loss(out)
    assert torch.isfinite(loss)
    other = "post" if align_on == "encoder" else "encoder"
    spoiled = {**out, other: {k: torch.full_like(v, float("nan")) for k, v in out[other].items()}}
    torch.testing.assert_close(model.alignment_loss(spoiled), loss, rtol=0, atol=0)
    moved = {**out, align_on: {**out[align_on], "vision": out[align_on]["vision"].flip(1)}}
    assert not torch.equal(model.alignment_loss(moved), loss)
    with pytest.raises(ValueError, match=rf"^outputs: expected .*{align_on!r}"):
        model.alignment_loss({k: v for k, v in out.items() if k != align_on})


def test_bert_mode_reads_the_width_from_the_encoder(tiny_bert_dir):
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir)  # feature_dims[0] stays 768
    model = MultiTaskMSA(config)
    text = token_inputs(2, 6, [6, 3])
    out = model(*make_inputs(config, [8, 4], [8, 2], text=text))
    assert model.text_dim == TINY_BERT_WIDTH
    assert shapes(out) == {
        g: {k: (2, w) for k, w in group.items()}
        for g, group in expected_widths(config, TINY_BERT_WIDTH).items()
    }


@pytest.mark.parametrize("training", [True, False])
def test_batch_of_one(training):
    config = features_config("mosei")
    model = MultiTaskMSA(config).train(training)
    out = model(*make_inputs(config, [3], [0]))
    assert out["predictions"]["fusion"].shape == (1, 1)
    assert out["encoder"]["audio"].shape == (1, config.audio_out)


def lstm_reference(lstm: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Final hidden state of a one-layer LSTM over an unpadded (T, d) sequence, step by step."""
    hidden = torch.zeros(lstm.hidden_size)
    cell = torch.zeros(lstm.hidden_size)
    for frame in x:
        gates = lstm.weight_ih_l0 @ frame + lstm.bias_ih_l0 + lstm.weight_hh_l0 @ hidden
        i, f, g, o = (gates + lstm.bias_hh_l0).chunk(4)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
    return hidden


def head_reference(head, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feature = F.relu(F.linear(x, head.post.weight, head.post.bias))
    hidden = F.relu(F.linear(feature, head.hidden.weight, head.hidden.bias))
    return feature, F.linear(hidden, head.out.weight, head.out.bias)


def test_forward_matches_an_independent_reference():
    """Eq. 1–8 recomputed by hand: the LSTM runs over each sample's own frames only."""
    torch.manual_seed(1)
    config = features_config("mosi")
    model = MultiTaskMSA(config).eval()
    lengths_a, lengths_v = [8, 3, 0], [5, 1, 8]
    text, audio, _, vision, _ = inputs = make_inputs(config, lengths_a, lengths_v)
    with torch.no_grad():
        out = model(*inputs)
        for i in range(3):
            enc = model.audio_encoder
            h_a = lstm_reference(enc.lstm, audio[i, : max(lengths_a[i], 1)])
            a = F.linear(h_a, enc.linear.weight, enc.linear.bias)
            enc = model.vision_encoder
            h_v = lstm_reference(enc.lstm, vision[i, : max(lengths_v[i], 1)])
            v = F.linear(h_v, enc.linear.weight, enc.linear.bias)
            t = text[i, 0]
            got = {g: {k: v[i] for k, v in group.items()} for g, group in out.items()}
            torch.testing.assert_close(got["encoder"]["audio"], a, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["encoder"]["vision"], v, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["encoder"]["text"], t)
            for name, head, x in [
                ("fusion", model.fusion_head, torch.cat([t, a, v])),
                ("text", model.text_head, t),
                ("audio", model.audio_head, a),
                ("vision", model.vision_head, v),
            ]:
                feature, prediction = head_reference(head, x)
                torch.testing.assert_close(got["post"][name], feature, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(
                    got["predictions"][name], prediction, rtol=1e-5, atol=1e-6
                )


def test_padding_and_other_samples_do_not_change_outputs():
    torch.manual_seed(2)
    config = features_config("sims")
    model = MultiTaskMSA(config).eval()
    text, audio, len_a, vision, len_v = make_inputs(config, [2, 8, 5], [6, 3, 8])
    noisy_audio, noisy_vision, noisy_text = audio.clone(), vision.clone(), text.clone()
    for i in range(3):
        noisy_audio[i, len_a[i] :] = 100.0
        noisy_vision[i, len_v[i] :] = -100.0
    noisy_text[:, 1:] = 7.0  # features mode reads the first position only
    with torch.no_grad():
        clean = model(text, audio, len_a, vision, len_v)
        noisy = model(noisy_text, noisy_audio, len_a, noisy_vision, len_v)
        alone = model(text[1:2], audio[1:2, :8], len_a[1:2], vision[1:2, :3], len_v[1:2])
    clean, noisy, alone = flat(clean), flat(noisy), flat(alone)
    for key in clean:
        torch.testing.assert_close(noisy[key], clean[key])
        torch.testing.assert_close(alone[key], clean[key][1:2], rtol=1e-5, atol=1e-6)


def test_bert_padding_tokens_are_masked(tiny_bert_dir):
    torch.manual_seed(3)
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir)
    model = MultiTaskMSA(config).eval()
    text = token_inputs(2, 6, [6, 3])
    changed = text.clone()
    changed[1, 0, 3:] = 42.0  # ids where the mask is 0
    inputs = make_inputs(config, [8, 4], [8, 2], text=text)
    with torch.no_grad():
        before = model(*inputs)
        after = model(changed, *inputs[1:])
    torch.testing.assert_close(after["encoder"]["text"], before["encoder"]["text"])
    assert not torch.equal(before["encoder"]["text"][0], before["encoder"]["text"][1])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_trailing_padding_is_trimmed_without_changing_outputs(tiny_bert_dir, pooling):
    torch.manual_seed(4)
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir, text_pooling=pooling)
    model = MultiTaskMSA(config).eval()
    short = token_inputs(3, 7, [7, 2, 5])
    padded = torch.cat([short, torch.zeros(3, 3, 20)], dim=2)  # 20 positions nobody attends
    calls = []
    model.text_encoder.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    inputs = make_inputs(config, [8, 4, 1], [8, 2, 3], text=short)
    with torch.no_grad():
        expected = model(*inputs)["encoder"]["text"]
        got = model(padded, *inputs[1:])["encoder"]["text"]
    torch.testing.assert_close(got, expected)
    assert calls == [(3, 7), (3, 7)]


def test_trim_keeps_one_position_when_nothing_is_attended():
    tokens = torch.zeros(2, 3, 5, dtype=torch.long)
    assert _trim_padding(tokens).shape == (2, 3, 1)
    tokens[1, 1, 3] = 1  # left or inner padding: keep up to the last attended position
    assert _trim_padding(tokens).shape == (2, 3, 4)


def test_fusion_modality_dropout_zeroes_whole_modalities_in_training_only():
    torch.manual_seed(5)
    config = features_config(fusion_modality_dropout=0.5)
    model = MultiTaskMSA(config)
    seen = []
    model.fusion_head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    inputs = make_inputs(config, [8] * 64, [8] * 64)
    out = model.train()(*inputs)
    fused, text = seen[-1], inputs[0][:, 0]
    audio, video = out["encoder"]["audio"], out["encoder"]["vision"]
    a_out, v_out = config.audio_out, config.vision_out
    torch.testing.assert_close(fused[:, : config.feature_dims[0]], text)
    for block, full in ((fused[:, -a_out - v_out : -v_out], audio), (fused[:, -v_out:], video)):
        dropped = (block == 0).all(dim=1)
        assert 0 < dropped.sum() < 64  # independent per sample
        torch.testing.assert_close(block[~dropped], 2 * full[~dropped])  # scaled by 1/(1-p)
    with torch.no_grad():
        evaluated = model.eval()(*inputs)["predictions"]["fusion"]
        plain = MultiTaskMSA(features_config())
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(evaluated, plain.eval()(*inputs)["predictions"]["fusion"])


@pytest.mark.parametrize(
    ("position", "value", "error", "match"),
    [
        (0, torch.randn(2, 5, TEXT_WIDTH + 1), ValueError, "text"),
        (1, torch.randn(2, 8, 6), ValueError, "audio"),
        (1, torch.randn(3, 8, 5), ValueError, "audio"),
        (2, torch.tensor([[8], [4]]), ValueError, "audio_lengths"),
        (2, torch.tensor([9, 4]), ValueError, "audio_lengths"),
        (2, torch.tensor([2.5, 4.0]), ValueError, "audio_lengths"),
        (2, [8, 4], TypeError, "audio_lengths"),
        (3, torch.randn(2, 8, 21), ValueError, "vision"),
        (4, torch.tensor([-1, 2]), ValueError, "vision_lengths"),
        (0, "text", TypeError, "text"),
    ],
)
def test_bad_inputs_name_the_argument(position, value, error, match):
    config = features_config("mosi")
    inputs = list(make_inputs(config, [8, 4], [8, 2]))
    inputs[position] = value
    with pytest.raises(error, match=match):
        MultiTaskMSA(config)(*inputs)


def test_bad_construction():
    with pytest.raises(TypeError, match="config"):
        MultiTaskMSA({"text_mode": "features"})
    with pytest.raises(ValueError, match="text_encoder"):
        MultiTaskMSA(features_config(), text_encoder=torch.nn.Linear(2, 2))


def test_bert_mode_rejects_feature_input(tiny_bert_dir):
    model = MultiTaskMSA(MSAConfig.preset("mosi", text_encoder=tiny_bert_dir))
    with pytest.raises(ValueError, match="ids, mask, segment ids"):
        model(*make_inputs(model.config, [8, 4], [8, 2], text=torch.randn(2, 6, 24)))


# --- parameter groups -------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
def test_parameter_groups(tiny_bert_dir, dataset):
    config = MSAConfig.preset(dataset, text_encoder=tiny_bert_dir)
    model = MultiTaskMSA(config)
    train_config = TrainConfig.preset(dataset)
    groups = {g["name"]: g for g in parameter_groups(model, train_config)}
    lr_text, lr_audio, lr_vision, lr_other = PUBLISHED[dataset]["lr"]
    wd_text, wd_audio, wd_vision, wd_other = PUBLISHED[dataset]["weight_decay"]
    assert {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "text_decay": (lr_text, wd_text),
        "text_no_decay": (lr_text, 0.0),
        "audio": (lr_audio, wd_audio),
        "vision": (lr_vision, wd_vision),
        "other": (lr_other, wd_other),
    }
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = {name: [names[id(p)] for p in g["params"]] for name, g in groups.items()}
    flat = [n for members in grouped.values() for n in members]
    assert sorted(flat) == sorted(names.values())  # every parameter exactly once
    assert grouped["text_no_decay"]
    for n in grouped["text_no_decay"]:
        assert n.startswith("text_encoder.")
        assert "bias" in n or "LayerNorm" in n
    for n in grouped["text_decay"]:
        assert n.startswith("text_encoder.")
        assert "bias" not in n
        assert "LayerNorm" not in n
    assert all(n.startswith("audio_encoder.") for n in grouped["audio"])
    assert all(n.startswith("vision_encoder.") for n in grouped["vision"])
    assert all("_head." in n for n in grouped["other"])
    torch.optim.Adam(parameter_groups(model, train_config))


def test_frozen_text_encoder_gets_no_group_and_no_gradient(tiny_bert_dir):
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir, finetune_text=False)
    model = MultiTaskMSA(config)
    groups = parameter_groups(model, TrainConfig())
    assert [g["name"] for g in groups] == ["audio", "vision", "other"]
    out = model(*make_inputs(config, [8, 4], [8, 2], text=token_inputs(2, 6, [6, 3])))
    out["predictions"]["text"].sum().backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.text_head.post.weight.grad is not None


@pytest.mark.parametrize("finetune", [True, False])
def test_text_features_path_equals_the_encoder_path(tiny_bert_dir, finetune):
    """forward(None, ..., text_features=encode_text(text)) is forward(text, ...), in both
    modes; a frozen encoder gives it without gradient."""
    torch.manual_seed(8)
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir, finetune_text=finetune)
    model = MultiTaskMSA(config).eval()
    text = token_inputs(3, 6, [6, 3, 4])
    _, audio, len_a, vision, len_v = make_inputs(config, [8, 4, 2], [8, 2, 5], text=text)
    encoded = model.encode_text(text)
    assert encoded.shape == (3, TINY_BERT_WIDTH)
    assert encoded.requires_grad == finetune
    direct = model(text, audio, len_a, vision, len_v)
    cached = model(None, audio, len_a, vision, len_v, text_features=encoded)
    direct, cached = flat(direct), flat(cached)
    assert cached.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key], rtol=0, atol=0)
    features = features_config("mosi")
    plain = MultiTaskMSA(features).eval()
    inputs = make_inputs(features, [8, 4], [8, 2])
    torch.testing.assert_close(plain.encode_text(inputs[0]), inputs[0][:, 0])


def test_frozen_text_encoder_stays_in_eval_mode(tiny_bert_dir):
    """Dropout inside a frozen encoder would make F_t random: train() leaves it in eval mode,
    so two training-mode passes give the same F_t (the premise of the trainer's cache)."""
    frozen = MultiTaskMSA(MSAConfig.preset("mosi", text_encoder=tiny_bert_dir, finetune_text=False))
    tuned = MultiTaskMSA(MSAConfig.preset("mosi", text_encoder=tiny_bert_dir))
    assert frozen.training
    assert not frozen.text_encoder.training
    assert frozen.text_head.training
    assert tuned.text_encoder.training
    assert (frozen.text_frozen, tuned.text_frozen) == (True, False)
    frozen.train()
    text = token_inputs(4, 6, [6, 3, 4, 5])
    torch.testing.assert_close(frozen.encode_text(text), frozen.encode_text(text), rtol=0, atol=0)
    tuned.train()
    assert not torch.equal(tuned.encode_text(text), tuned.encode_text(text))  # dropout 0.1
    assert not MultiTaskMSA(features_config()).text_frozen


def test_text_features_errors():
    config = features_config("mosi")
    model = MultiTaskMSA(config)
    text, audio, len_a, vision, len_v = make_inputs(config, [8, 4], [8, 2])
    with pytest.raises(ValueError, match="text: expected None when text_features"):
        model(text, audio, len_a, vision, len_v, text_features=text[:, 0])
    with pytest.raises(ValueError, match="text_features"):
        model(None, audio, len_a, vision, len_v, text_features=torch.randn(2, TEXT_WIDTH + 1))
    with pytest.raises(ValueError, match="text_features"):
        model(None, audio, len_a, vision, len_v, text_features=torch.randn(2, 1, TEXT_WIDTH))
    with pytest.raises(ValueError, match=r"audio: expected shape \(3, L, 5\)"):  # batch of 3
        model(None, audio, len_a, vision, len_v, text_features=torch.randn(3, TEXT_WIDTH))
    with pytest.raises(TypeError, match="text"):
        model(None, audio, len_a, vision, len_v)


def test_parameter_groups_read_the_train_config():
    model = MultiTaskMSA(features_config("mosi"))
    groups = parameter_groups(model, TrainConfig(lr_other=0.5, weight_decay_vision=0.25))
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("audio", 5e-3, 1e-3),
        ("vision", 5e-3, 0.25),
        ("other", 0.5, 1e-3),
    ]
    with pytest.raises(TypeError, match="train_config: expected a TrainConfig"):
        parameter_groups(model, {"lr_other": 0.5})
    with pytest.raises(TypeError, match="train_config"):
        parameter_groups(model, model.config)


# --- alignment --------------------------------------------------------------------------------


def coral_reference(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """Eq. 12–14 written out: 1/(4 d^2) ||C_a - C_b||_F^2 with unbiased covariances."""
    d = x_a.shape[1]
    c_a, c_b = torch.cov(x_a.T), torch.cov(x_b.T)
    return ((c_a - c_b) ** 2).sum() / (4 * d * d)


def test_no_alignment_gives_zero():
    model = MultiTaskMSA(features_config("mosi"))
    out = model(*make_inputs(model.config, [8, 4], [8, 2]))
    assert model.alignment is None
    loss, terms = model.alignment_loss(out, return_terms=True)
    assert float(loss) == 0.0
    assert terms == {}


@pytest.mark.parametrize("align_on", ["encoder", "post"])
def test_va_alignment_is_the_covariance_loss_of_the_chosen_features(align_on):
    torch.manual_seed(4)
    config = features_config("mosi", alignment="V-A", alignment_weight=0.3, align_on=align_on)
    model = MultiTaskMSA(config)
    assert isinstance(model.alignment, ModalityAlignment)
    out = model(*make_inputs(config, [8, 4, 6, 2, 7, 8], [8, 2, 3, 8, 1, 5]))
    projections = model.alignment.projections
    assert projections["vision"].weight.shape == (32, 16)  # default d: the smaller width
    x_v = out[align_on]["vision"] @ projections["vision"].weight
    x_a = out[align_on]["audio"] @ projections["audio"].weight
    loss, terms = model.alignment_loss(out, return_terms=True)
    expected = coral_reference(x_v, x_a)
    assert expected > 0
    # theta is small (features of a fresh network): compare relatively, not with an atol.
    torch.testing.assert_close(loss, 0.3 * expected, rtol=1e-4, atol=0)
    # The logged term is its contribution to the loss (the weight applied).
    torch.testing.assert_close(terms["vision-audio"], 0.3 * expected.detach(), rtol=1e-4, atol=0)


def test_alignment_on_encoder_features_trains_the_encoders_only():
    torch.manual_seed(5)
    config = features_config("mosi", alignment="V-A")
    model = MultiTaskMSA(config)
    loss = model.alignment_loss(model(*make_inputs(config, [8, 4, 6, 2], [8, 2, 3, 8])))
    assert torch.isfinite(loss)
    assert loss > 0
    loss.backward()
    for encoder in (model.audio_encoder, model.vision_encoder):
        assert encoder.lstm.weight_ih_l0.grad.abs().sum() > 0
    heads = (model.fusion_head, model.text_head, model.audio_head, model.vision_head)
    assert all(p.grad is None for head in heads for p in head.parameters())


def test_alignment_on_post_features_trains_the_unimodal_post_layers():
    torch.manual_seed(6)
    config = features_config("mosi", alignment="V-A", align_on="post", align_dim=8)
    model = MultiTaskMSA(config)
    assert model.alignment.projections["audio"].weight.shape == (16, 8)
    loss = model.alignment_loss(model(*make_inputs(config, [8, 4, 6, 2], [8, 2, 3, 8])))
    loss.backward()
    assert model.audio_head.post.weight.grad.abs().sum() > 0
    assert model.vision_head.post.weight.grad.abs().sum() > 0
    assert model.fusion_head.post.weight.grad is None


def test_three_term_alignment_reaches_the_text_encoder(tiny_bert_dir):
    torch.manual_seed(7)
    config = MSAConfig.preset("mosi", text_encoder=tiny_bert_dir, alignment="T-V/T-A/A-V")
    model = MultiTaskMSA(config)
    text = token_inputs(4, 6, [6, 3, 5, 2])
    out = model(*make_inputs(config, [8, 4, 6, 2], [8, 2, 3, 8], text=text))
    loss, terms = model.alignment_loss(out, return_terms=True)
    assert sorted(terms) == ["audio-vision", "text-audio", "text-vision"]
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), torch.stack(list(terms.values())).sum())
    loss.backward()
    grad = model.text_encoder.embeddings.word_embeddings.weight.grad
    assert grad is not None
    assert grad.abs().sum() > 0


def test_alignment_estimator_reaches_the_module():
    for estimator in ESTIMATORS:
        model = MultiTaskMSA(features_config("mosi", alignment="V-A", align_estimator=estimator))
        assert model.alignment.estimator == estimator


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_with_cpu_or_cuda_lengths():
    config = features_config("mosi", alignment="V-A")
    model = MultiTaskMSA(config).cuda()
    text, audio, len_a, vision, len_v = make_inputs(config, [8, 4, 6], [8, 2, 3])
    out = model(text.cuda(), audio.cuda(), len_a, vision.cuda(), len_v.cuda())
    loss = out["predictions"]["fusion"].sum() + model.alignment_loss(out)
    loss.backward()
    assert out["predictions"]["fusion"].device.type == "cuda"
    assert model.audio_encoder.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_mean_text_pooling_averages_the_masked_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny = transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16,
    )  # fmt: skip
    transformers.BertModel(tiny).save_pretrained(tmp_path)
    config = MSAConfig.preset("mosi", text_encoder=str(tmp_path), text_pooling="mean")
    model = MultiTaskMSA(config).eval()
    ids = torch.randint(1, 40, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    text = torch.stack([ids, mask, torch.zeros_like(ids)], dim=1)
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = model._text_feature(text)
    torch.testing.assert_close(pooled[0], hidden[0, :4].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
