"""deepalign.training: TrainConfig, and a short Trainer run learns, resumes exactly, logs and
checkpoints. Accumulation, the text cache, callbacks/progress and run safety have their own
test_training_*.py files."""

import dataclasses
import json

import pytest
import torch

from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import load_mmsa, make_synthetic
from deepalign.training import CHECKPOINT, TRAIN_PRESETS, TrainConfig, Trainer

TEXT_DIM = 16

# MMSA 2.2.1's Self-MM training configuration (config/config_regression.json, "self_mm"),
# transcribed independently of deepalign.training.
PUBLISHED = {
    "mosi": {
        "batch_size": 16,
        "lr": (5e-5, 5e-3, 5e-3, 1e-3),
        "weight_decay": (1e-3, 1e-3, 1e-3, 1e-3),
        "H": 3.0,
    },
    "mosei": {
        "batch_size": 32,
        "lr": (5e-5, 5e-3, 1e-4, 1e-3),
        "weight_decay": (1e-3, 0.0, 0.0, 1e-2),
        "H": 3.0,
    },
    "sims": {
        "batch_size": 32,
        "lr": (5e-5, 5e-3, 5e-3, 1e-3),
        "weight_decay": (1e-3, 1e-2, 1e-2, 1e-3),
        "H": 1.0,
    },
}


@pytest.fixture(scope="module")
def splits():
    return make_synthetic("mosi", n_train=64, seq_len=6, text_dim=TEXT_DIM, seed=0)


def without_times(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def make_trainer(splits, out_dir=None, *, max_epochs=3, train=None, **overrides):
    options = {"text_mode": "features", "feature_dims": (TEXT_DIM, 5, 20)}
    config = MSAConfig.preset("mosi", **{**options, "alignment": "V-A", **overrides})
    train_config = TrainConfig.preset("mosi", batch_size=8, max_epochs=max_epochs, **(train or {}))
    torch.manual_seed(1111)
    return Trainer(MultiTaskMSA(config), splits, train_config, out_dir=out_dir)


# --- TrainConfig ------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_presets_match_the_published_configuration(dataset):
    want = PUBLISHED[dataset]
    c = TrainConfig.preset(dataset.upper())
    assert (c.dataset, c.batch_size, c.H) == (dataset, want["batch_size"], want["H"])
    assert (c.lr_text, c.lr_audio, c.lr_vision, c.lr_other) == want["lr"]
    decays = (c.weight_decay_text, c.weight_decay_audio, c.weight_decay_vision)
    assert (*decays, c.weight_decay_other) == want["weight_decay"]
    assert (c.patience, c.accumulate_grad_batches) == (8, 4)  # MMSA: early_stop, update_epochs
    assert (c.num_workers, c.pin_memory, c.cache_text_features) == (0, False, True)


def test_defaults_are_the_mosi_preset_and_presets_cover_the_metric_sets():
    assert TrainConfig() == TrainConfig.preset("mosi")
    assert sorted(TRAIN_PRESETS) == ["mosei", "mosi", "sims"]


def test_train_config_preset_overrides_and_errors():
    assert TrainConfig.preset("mosei", patience=2).patience == 2
    with pytest.raises(ValueError, match="dataset: expected one of"):
        TrainConfig.preset("iemocap")
    with pytest.raises(TypeError, match="unknown TrainConfig fields"):
        TrainConfig.preset("mosi", lr_bert=1.0)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("dataset", "iemocap", ValueError),
        ("batch_size", 0, ValueError),
        ("batch_size", 8.0, TypeError),
        ("lr_other", -1e-3, ValueError),
        ("lr_text", float("inf"), ValueError),
        ("weight_decay_vision", float("nan"), ValueError),
        ("patience", 0, ValueError),
        ("max_epochs", 0, ValueError),
        ("accumulate_grad_batches", 0, ValueError),
        ("H", 0.0, ValueError),
        ("num_workers", -1, ValueError),
        ("pin_memory", 1, TypeError),
        ("cache_text_features", "yes", TypeError),
    ],
)
def test_invalid_train_config_values(field, value, error):
    with pytest.raises(error, match=field):
        TrainConfig(**{field: value})
    with pytest.raises(error, match=field):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_train_config_is_immutable():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 4


# --- Trainer ------------------------------------------------------------------------------


def test_short_run_reduces_the_loss_and_reports_metrics(splits):
    result = make_trainer(splits, max_epochs=6, train={"lr_other": 3e-3}).fit()
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
    # The estimator diagnostics of every term (docs/estimators.rst): floor = plug-in - unbiased,
    # in the epoch means too; the scales tr C / d of the aligned modalities.
    for term in ("text-vision", "audio+vision"):
        plugin, unbiased = (record[f"train_align_{term}_{e}"] for e in ("plugin", "unbiased"))
        floor = record[f"train_align_{term}_floor"]
        assert floor == pytest.approx(plugin - unbiased, rel=1e-4, abs=1e-7)
        assert floor > 0  # 8 samples per batch: the plug-in sits well above the unbiased value
    # The logged term is its contribution to the loss: theta itself for a "-" term of weight 1.
    assert record["train_align_text-vision"] == pytest.approx(
        record["train_align_text-vision_plugin"], rel=1e-5
    )
    assert {"train_scale_text", "train_scale_audio", "train_scale_vision"} <= set(record)
    assert all(record[f"train_scale_{m}"] > 0 for m in ("text", "audio", "vision"))


class StopRunError(Exception):
    """Raised by a callback to stop a run after an epoch, as a kill would."""


def interrupt_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise StopRunError

    return callback


def test_resume_ends_where_an_uninterrupted_run_ends(splits, tmp_path):
    whole = make_trainer(splits, tmp_path / "whole", max_epochs=4)
    expected = whole.fit()
    interrupted = make_trainer(splits, tmp_path / "split", max_epochs=4)
    interrupted.callbacks = (interrupt_after(2),)
    with pytest.raises(StopRunError):
        interrupted.fit()
    resumed_trainer = make_trainer(splits, tmp_path / "split", max_epochs=4)
    resumed = resumed_trainer.fit(resume=True)
    assert without_times(resumed.history) == without_times(expected.history)
    assert resumed.test == expected.test
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed_trainer.model.state_dict()[key], value), key
    for key, value in whole.ulgm.state_dict().items():
        assert torch.equal(resumed_trainer.ulgm.state_dict()[key], value), key
    assert resumed_trainer.state["step"] == whole.state["step"] > 0


def test_a_run_extended_by_more_epochs_equals_the_longer_run(splits, tmp_path):
    """max_epochs may grow on resume: 2 epochs, then resumed to 3, equals 3 at once."""
    expected = make_trainer(splits, max_epochs=3).fit()
    make_trainer(splits, tmp_path, max_epochs=2).fit()
    resumed = make_trainer(splits, tmp_path, max_epochs=3).fit(resume=True)
    assert without_times(resumed.history) == without_times(expected.history)
    assert resumed.test == expected.test


@pytest.mark.parametrize(("estimator", "batches"), [("plugin", 9), ("unbiased", 8)])
def test_a_last_batch_too_small_for_the_estimator_is_dropped(estimator, batches):
    """66 samples in batches of 8 leave a last batch of 2: enough for the plug-in covariance,
    too few for the unbiased estimator (4 rows), whose run drops it instead of failing. The
    diagnostics (unbiased: 4 rows) leave that batch out of their means."""
    data = make_synthetic("mosi", n_train=66, seq_len=4, text_dim=TEXT_DIM, seed=1)
    seen = []
    trainer = make_trainer(
        data, max_epochs=1, align_estimator=estimator, train={"accumulate_grad_batches": 1}
    )
    train_step = trainer._train_step

    def counting_step(batch, epoch):
        seen.append(len(batch["index"]))
        return train_step(batch, epoch)

    trainer._train_step = counting_step
    record = trainer.fit().history[0]
    assert len(seen) == batches
    assert sum(seen) == 64 + 2 * (estimator == "plugin")
    assert trainer.state["step"] == batches
    assert record["train_align_vision-audio_floor"] == pytest.approx(
        record["train_align_vision-audio_plugin"] - record["train_align_vision-audio_unbiased"],
        rel=1e-4,
    )


def test_same_seed_same_result(splits):
    first, second = (
        make_trainer(splits, max_epochs=2).fit(),
        make_trainer(splits, max_epochs=2).fit(),
    )
    assert without_times(first.history) == without_times(second.history)
    assert first.test == second.test


def test_files_written_and_checkpoint_loads_weights_only(splits, tmp_path):
    trainer = make_trainer(splits, tmp_path, max_epochs=2)
    trainer.fit()
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "ulgm", "best_model", "state", "history", "rng", "run"} <= set(
        saved
    )
    assert saved["state"]["epoch"] == 2
    assert saved["run"] == trainer.run_identity()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert (tmp_path / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"best_epoch", "epochs", "valid", "test"} == set(results)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"]["alignment"] == "V-A"
    assert run["train"]["batch_size"] == 8
    assert (run["seed"], run["resume_overrides"]) == (1111, [])
    assert not list(tmp_path.glob("*.tmp"))


def test_early_stopping_after_patience_epochs_without_improvement(splits):
    frozen = {f"lr_{g}": 0.0 for g in ("text", "audio", "vision", "other")}
    result = make_trainer(splits, max_epochs=10, train={"patience": 2, **frozen}).fit()
    assert result.epochs == 3  # epoch 1 sets the best; 2 and 3 do not improve on it
    assert result.best_epoch == 1


def test_errors(splits):
    config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(TEXT_DIM, 5, 20))
    model = MultiTaskMSA(config)
    with pytest.raises(
        ValueError, match=r"splits: expected train, valid and test, missing \['test'\]"
    ):
        Trainer(model, {"train": splits["train"], "valid": splits["valid"]})
    with pytest.raises(TypeError, match="config: expected a TrainConfig"):
        Trainer(model, splits, config)
    with pytest.raises(TypeError, match="model: expected a MultiTaskMSA"):
        Trainer(torch.nn.Linear(2, 2), splits)
    with pytest.raises(ValueError, match="resume_mismatch"):
        Trainer(model, splits, resume_mismatch="ignore")
    with pytest.raises(TypeError, match="callbacks"):
        Trainer(model, splits, callbacks=print)
    with pytest.raises(TypeError, match=r"callbacks\[1\]"):
        Trainer(model, splits, callbacks=[print, "print"])
    with pytest.raises(TypeError, match="data_id"):
        Trainer(model, splits, data_id={"file": object()})
    aligned = MultiTaskMSA(dataclasses.replace(config, alignment="V-A"))
    with pytest.raises(ValueError, match="batch_size: expected at least 2 with the alignment's"):
        Trainer(aligned, splits, TrainConfig(batch_size=1))
    unbiased = MultiTaskMSA(dataclasses.replace(aligned.config, align_estimator="unbiased"))
    with pytest.raises(ValueError, match=r"at least 4 with the alignment's 'unbiased' estimator"):
        Trainer(unbiased, splits, TrainConfig(batch_size=3))
    Trainer(model, splits, TrainConfig(batch_size=1))  # no alignment: batches of one are fine
    with pytest.raises(ValueError, match="resume: expected an out_dir"):
        Trainer(model, splits).fit(resume=True)


def test_real_mosi_smoke(real_mosi_path):
    """One epoch on the real CMU-MOSI file (text CNN features, fast): finite and better than
    a constant prediction."""
    splits = load_mmsa(real_mosi_path)
    config = MSAConfig.preset(
        "mosi", text_mode="features", feature_dims=(100, 73, 100), alignment="V-A"
    )
    torch.manual_seed(1111)
    result = Trainer(MultiTaskMSA(config), splits, TrainConfig(max_epochs=1)).fit()
    train, test = splits["train"].labels["fusion"], splits["test"].labels["fusion"]
    constant = (test - train.mean()).abs().mean()
    assert result.test["MAE"] < float(constant)
    assert result.test["Corr"] > 0.3
