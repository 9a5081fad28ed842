"""deepalign.training.Trainer: a short run learns, resumes exactly, logs and checkpoints."""

import json

import pytest
import torch

from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import load_mmsa, make_synthetic
from deepalign.training import CHECKPOINT, Trainer

TEXT_DIM = 16


@pytest.fixture(scope="module")
def splits():
    return make_synthetic("mosi", n_train=64, seq_len=6, text_dim=TEXT_DIM, seed=0)


def without_times(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def make_trainer(splits, out_dir=None, *, max_epochs=3, **overrides):
    options = {"text_mode": "features", "feature_dims": (TEXT_DIM, 5, 20), "batch_size": 8}
    config = MSAConfig.preset("mosi", **{**options, "alignment": "V-A", **overrides})
    torch.manual_seed(1111)
    return Trainer(MultiTaskMSA(config), splits, max_epochs=max_epochs, out_dir=out_dir)


def test_short_run_reduces_the_loss_and_reports_metrics(splits):
    result = make_trainer(splits, max_epochs=6, lr_other=3e-3).fit()
    losses = [record["train_fusion"] for record in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.epochs == 6
    assert result.best_epoch in range(1, 7)
    assert {"MAE", "Corr", "Has0_acc_2", "Non0_F1_score", "loss"} <= set(result.test)
    best = result.history[result.best_epoch - 1]
    assert (
        result.valid["loss"] == best["valid_loss"] == min(r["valid_loss"] for r in result.history)
    )


def test_every_loss_term_is_logged(splits):
    record = make_trainer(splits, max_epochs=1, alignment="T-V/A+V").fit().history[0]
    expected = {"train_loss", "train_alignment", "train_fusion", "train_text", "train_audio"}
    expected |= {"train_vision", "train_align_text-vision", "train_align_audio+vision"}
    assert expected <= set(record)
    assert record["train_text"] == 0.0  # epoch 1: unimodal labels equal the fusion label
    parts = record["train_fusion"] + record["train_alignment"]
    assert record["train_loss"] == pytest.approx(parts, rel=1e-5)


def test_resume_ends_where_an_uninterrupted_run_ends(splits, tmp_path):
    whole = make_trainer(splits, tmp_path / "whole", max_epochs=3)
    expected = whole.fit()
    make_trainer(splits, tmp_path / "split", max_epochs=2).fit()
    resumed_trainer = make_trainer(splits, tmp_path / "split", max_epochs=3)
    resumed = resumed_trainer.fit(resume=True)
    assert without_times(resumed.history) == without_times(expected.history)
    assert resumed.test == expected.test
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed_trainer.model.state_dict()[key], value), key
    for key, value in whole.ulgm.state_dict().items():
        assert torch.equal(resumed_trainer.ulgm.state_dict()[key], value), key


def test_same_seed_same_result(splits):
    first, second = (
        make_trainer(splits, max_epochs=2).fit(),
        make_trainer(splits, max_epochs=2).fit(),
    )
    assert without_times(first.history) == without_times(second.history)
    assert first.test == second.test


def test_files_written_and_checkpoint_loads_weights_only(splits, tmp_path):
    make_trainer(splits, tmp_path, max_epochs=2).fit()
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "ulgm", "best_model", "state", "history", "rng"} <= set(saved)
    assert saved["state"]["epoch"] == 2
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert (tmp_path / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"best_epoch", "epochs", "valid", "test"} == set(results)
    assert not list(tmp_path.glob("*.tmp"))


def test_early_stopping_after_patience_epochs_without_improvement(splits):
    frozen = {f"lr_{g}": 0.0 for g in ("bert", "audio", "video", "other")}
    result = make_trainer(splits, max_epochs=10, patience=2, **frozen).fit()
    assert result.epochs == 3  # epoch 1 sets the best; 2 and 3 do not improve on it
    assert result.best_epoch == 1


def test_errors(splits):
    config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(TEXT_DIM, 5, 20))
    with pytest.raises(
        ValueError, match=r"splits: expected train, valid and test, missing \['test'\]"
    ):
        Trainer(MultiTaskMSA(config), {"train": splits["train"], "valid": splits["valid"]})
    with pytest.raises(ValueError, match="max_epochs: expected a positive int"):
        Trainer(MultiTaskMSA(config), splits, max_epochs=0)


def test_real_mosi_smoke(real_mosi_path):
    """One epoch on the real CMU-MOSI file (text CNN features, fast): finite and better than
    a constant prediction."""
    splits = load_mmsa(real_mosi_path)
    config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(100, 73, 100))
    config.alignment = "V-A"
    torch.manual_seed(1111)
    result = Trainer(MultiTaskMSA(config), splits, max_epochs=1).fit()
    constant = (splits["test"].labels["M"] - splits["train"].labels["M"].mean()).abs().mean()
    assert result.test["MAE"] < float(constant)
    assert result.test["Corr"] > 0.3
