"""What a user of the Trainer sees: the metric set follows the data (SIMS is never scored as
MOSI), callbacks, progress lines and bars, DataLoader options, and the exact zeros of Self-MM's
unimodal terms in epochs 1 and 2."""

import io
import re
import sys

import pytest
import torch

from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

TEXT_DIM = 8


def features_model(dataset="mosi", dims=(TEXT_DIM, 5, 20), **overrides):
    config = MSAConfig.preset(dataset, text_mode="features", feature_dims=dims, **overrides)
    torch.manual_seed(0)
    return MultiTaskMSA(config)


@pytest.fixture(scope="module")
def mosi():
    return make_synthetic("mosi", n_train=32, seq_len=4, text_dim=TEXT_DIM, seed=0)


@pytest.fixture(scope="module")
def sims():
    return make_synthetic("sims", n_train=32, seq_len=4, text_dim=TEXT_DIM, seed=0)


def small(dataset="mosi", **overrides):
    options = {"batch_size": 8, "max_epochs": 2, "accumulate_grad_batches": 2}
    return TrainConfig.preset(dataset, **{**options, **overrides})


# --- the metric set follows the data (issue 13) -----------------------------------------------


def test_sims_data_with_mosi_metrics_is_an_error(sims):
    """Before: Trainer(model, sims_splits) silently reported Has0_acc_2 / Mult_acc_7."""
    assert sorted(sims["train"].labels) == ["audio", "fusion", "text", "vision"]
    model = features_model("sims", (TEXT_DIM, 33, 709))
    message = r"config\.dataset: got 'mosi', but the data looks like sims \(unimodal labels"
    with pytest.raises(ValueError, match=message):
        Trainer(model, sims)  # config None: TrainConfig(), whose dataset is "mosi"
    with pytest.raises(ValueError, match="got 'mosei', but the data looks like sims"):
        Trainer(model, sims, TrainConfig.preset("mosei"))
    result = Trainer(model, sims, small("sims")).fit()
    assert {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5"} <= set(result.test)
    assert "Has0_acc_2" not in result.test


def test_mosi_data_with_sims_metrics_is_an_error(mosi):
    largest = max(float(mosi[s].labels["fusion"].abs().max()) for s in mosi)
    assert largest > 1
    with pytest.raises(ValueError, match=r"got 'sims', but the data looks like mosi/mosei"):
        Trainer(features_model(), mosi, TrainConfig.preset("sims"))


def test_planted_unimodal_labels_in_mosi_range_are_mosi():
    """The synthetic generator can plant unimodal labels on MOSI data: labels in [-3, 3] make it
    MOSI all the same."""
    planted = make_synthetic("mosi", n_train=16, seq_len=4, text_dim=TEXT_DIM, unimodal_labels=True)
    assert "text" in planted["train"].labels
    Trainer(features_model(), planted, small())
    with pytest.raises(ValueError, match="looks like mosi/mosei"):
        Trainer(features_model(), planted, small("sims"))


# --- callbacks and progress -------------------------------------------------------------------


def test_callbacks_get_each_epochs_record(mosi):
    seen, other = [], []
    trainer = Trainer(features_model(), mosi, small(), callbacks=[seen.append, other.append])
    result = trainer.fit()
    assert [r["epoch"] for r in seen] == [1, 2]
    assert seen == result.history == other
    assert seen[0] is not result.history[0]  # a copy: a callback cannot change the history
    assert {"train_loss", "train_fusion", "valid_loss", "valid_MAE", "seconds"} <= set(seen[0])
    assert all("step" not in r for r in seen)


LINE = re.compile(
    r"^(?P<run>\S+) seed 1111: epoch (?P<epoch>\d+)/2  train loss (?P<train>\d+\.\d{4})  "
    r"valid loss (?P<valid>\d+\.\d{4})  \d+\.\d s$"
)


def test_progress_prints_one_line_per_epoch_to_stderr(mosi, tmp_path, capsys):
    result = Trainer(
        features_model(), mosi, small(), out_dir=tmp_path / "va_seed", progress=True
    ).fit()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2  # stderr is not a terminal here: no bars
    for record, line in zip(result.history, lines, strict=True):
        match = LINE.match(line)
        assert match, line
        assert match["run"] == "va_seed"
        assert int(match["epoch"]) == record["epoch"]
        assert float(match["train"]) == pytest.approx(record["train_loss"], abs=6e-5)
        assert float(match["valid"]) == pytest.approx(record["valid_loss"], abs=6e-5)
    Trainer(features_model(), mosi, small(), progress=False).fit()
    assert capsys.readouterr() == ("", "")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_on_a_terminal_name_the_run_and_seed(mosi, monkeypatch):
    pytest.importorskip("tqdm")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    Trainer(features_model(), mosi, small(max_epochs=1), progress=True).fit()
    text = terminal.getvalue()
    assert "run seed 1111 epoch 1/1" in text  # the training bar
    assert "run seed 1111 valid" in text
    assert "run seed 1111 test" in text
    # The epoch line comes after the training and validation bars, on a line of its own.
    epoch_line = text.index("run seed 1111: epoch 1/1  train loss")
    assert text.index("run seed 1111 valid") < epoch_line < text.index("run seed 1111 test")
    assert text[epoch_line - 1] in "\r\n"


# --- DataLoader options -----------------------------------------------------------------------


def without_times(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_worker_processes_give_the_same_run(mosi):
    serial = Trainer(features_model(), mosi, small()).fit()
    parallel = Trainer(features_model(), mosi, small(num_workers=1)).fit()
    assert without_times(parallel.history) == without_times(serial.history)
    assert parallel.test == serial.test


def test_pin_memory_is_ignored_on_the_cpu(mosi, recwarn):
    trainer = Trainer(features_model(), mosi, small(max_epochs=1, pin_memory=True))
    loader = trainer._train_loader(mosi["train"], 1, 1, 0)
    assert loader.pin_memory is False
    trainer.fit()
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]


# --- Self-MM's unimodal terms in epochs 1 and 2 -----------------------------------------------


@pytest.mark.parametrize("k", [1, 4])
def test_unimodal_terms_are_exactly_zero_in_epochs_1_and_2(mosi, k):
    """Epoch 1 generates no labels; in epoch 2 each sample's loss is taken before the step that
    updates its label (each sample is in one batch of the epoch), so the weights
    tanh|y_s - y_M| are exactly 0 until epoch 3."""
    config = small(max_epochs=3, accumulate_grad_batches=k)
    history = Trainer(features_model(alignment="V-A"), mosi, config).fit().history
    for record in history[:2]:
        for name in ("text", "audio", "vision"):
            assert record[f"train_{name}"] == 0.0, (record["epoch"], name)
    assert all(history[2][f"train_{name}"] > 0 for name in ("text", "audio", "vision"))
    assert history[0]["train_loss"] == pytest.approx(
        history[0]["train_fusion"] + history[0]["train_alignment"], rel=1e-5
    )
