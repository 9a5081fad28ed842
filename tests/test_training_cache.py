"""The frozen-encoder cache: with finetune_text=False the trainer computes the text encoder's
output once per split (eval mode, no gradient) and trains on it, with the results of running
the frozen encoder at every step."""

import pytest
import torch

from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

TINY_WIDTH = 16


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30522,  # the synthetic data's token ids are bert-base-uncased's
        hidden_size=TINY_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert_cache")
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def splits():
    return make_synthetic("mosi", n_train=48, seq_len=8, text_dim=4, seed=1)


def make_trainer(tiny_bert_dir, splits, *, cache, finetune=False, epochs=3):
    config = MSAConfig.preset(
        "mosi", text_encoder=tiny_bert_dir, finetune_text=finetune, alignment="T-V/V-A",
        feature_dims=(768, 5, 20),
    )  # fmt: skip
    train = TrainConfig.preset(
        "mosi", batch_size=8, max_epochs=epochs, accumulate_grad_batches=2,
        cache_text_features=cache,
    )  # fmt: skip
    torch.manual_seed(2)
    return Trainer(MultiTaskMSA(config), splits, train, seed=3)


def count_encoder_calls(trainer):
    calls = []
    trainer.model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_cached_training_equals_running_the_frozen_encoder(tiny_bert_dir, splits):
    cached, direct = (make_trainer(tiny_bert_dir, splits, cache=c) for c in (True, False))
    assert (cached.use_text_cache, direct.use_text_cache) == (True, False)
    cached_calls, direct_calls = count_encoder_calls(cached), count_encoder_calls(direct)
    torch.manual_seed(4)
    with_cache = cached.fit()
    torch.manual_seed(4)
    without = direct.fit()
    # The encoder ran once per batch of each split in order (48, 9, 26 samples in batches of
    # 8), not once per batch of every epoch.
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [48, 9, 26]
    assert len(cached_calls) == 6 + 2 + 4
    assert len(direct_calls) == 3 * 6 + 3 * 2 + 4  # train and valid each epoch, then test
    assert with_cache.best_epoch == without.best_epoch
    for got, want in zip(with_cache.history, without.history, strict=True):
        for key, value in want.items():
            if key != "seconds":
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for key, value in without.test.items():
        assert with_cache.test[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for key, value in direct.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[key], value, rtol=1e-4, atol=1e-6)
    # The comparison can fail: the text head learned, and the frozen encoder did not move.
    assert with_cache.history[-1]["train_fusion"] < with_cache.history[0]["train_fusion"]
    for key, value in direct.model.text_encoder.state_dict().items():
        assert torch.equal(cached.model.text_encoder.state_dict()[key], value)


def test_cache_rows_are_the_encoder_output_of_each_sample(tiny_bert_dir, splits):
    trainer = make_trainer(tiny_bert_dir, splits, cache=True)
    cache = trainer.text_cache("valid")
    assert cache.shape == (len(splits["valid"]), TINY_WIDTH)
    assert not cache.requires_grad
    assert trainer.text_cache("valid") is cache  # computed once
    for i in (0, 5, len(splits["valid"]) - 1):
        tokens = splits["valid"][i]["text_bert"][None]
        with torch.no_grad():
            expected = trainer.model.eval().encode_text(tokens)[0]
        torch.testing.assert_close(cache[i], expected, rtol=1e-5, atol=1e-6)


def test_cache_is_used_only_for_a_frozen_encoder(tiny_bert_dir, splits):
    tuned = make_trainer(tiny_bert_dir, splits, cache=True, finetune=True)
    assert not tuned.use_text_cache
    with pytest.raises(ValueError, match="text_cache: expected a model with a frozen"):
        tuned.text_cache("train")
    features = MSAConfig.preset("mosi", text_mode="features", feature_dims=(4, 5, 20))
    plain = Trainer(MultiTaskMSA(features), splits, TrainConfig(batch_size=8))
    assert not plain.use_text_cache
