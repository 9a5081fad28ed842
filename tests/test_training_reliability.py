"""Runs that survive kills and refuse to mix (issue 15): crash-safe checkpoints, readable errors
for corrupted ones, resume that compares the whole configuration; slow tests kill real
processes at random moments and soak a 200-epoch run."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deepalign
from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import make_synthetic
from deepalign.training import CHECKPOINT, PREVIOUS_CHECKPOINT, TrainConfig, Trainer

WORKER = Path(__file__).with_name("train_worker.py")
TEXT_DIM = 8
MODEL = MSAConfig.preset(
    "mosi", text_mode="features", feature_dims=(TEXT_DIM, 5, 20), alignment="V-A"
)
TRAIN = TrainConfig.preset("mosi", batch_size=8, accumulate_grad_batches=2, max_epochs=3)


@pytest.fixture(scope="module")
def splits():
    return make_synthetic("mosi", n_train=32, seq_len=4, text_dim=TEXT_DIM, seed=0)


def make_trainer(splits, out_dir, model=MODEL, train=TRAIN, **options):
    torch.manual_seed(1111)
    return Trainer(MultiTaskMSA(model), splits, train, out_dir=out_dir, **options)


def without_times(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# --- corrupted checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated: a write cut short
        lambda data: data[:10],
        lambda data: b"",
        lambda data: bytes(b ^ 0x5A for b in data[:4096]) + data[4096:],  # scrambled header
        lambda data: b"not a checkpoint at all\n" * 10,
    ],
    ids=["half", "ten-bytes", "empty", "scrambled", "text"],
)
def test_a_damaged_checkpoint_is_a_readable_error(splits, tmp_path, damage):
    make_trainer(splits, tmp_path, train=dataclasses.replace(TRAIN, max_epochs=1)).fit()
    path = tmp_path / CHECKPOINT
    path.write_bytes(damage(path.read_bytes()))
    trainer = make_trainer(splits, tmp_path)
    with pytest.raises(ValueError, match="corrupted or truncated") as caught:
        trainer.fit(resume=True)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read the checkpoint, it is corrupted or truncated")
    assert f"delete {CHECKPOINT} to start afresh" in message
    assert caught.value.__cause__ is None  # no unpickling traceback chained to it
    assert trainer.state["epoch"] == 0  # and no silent fresh start either: nothing trained


def test_a_foreign_file_is_not_a_checkpoint(splits, tmp_path):
    torch.save({"model": {}}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"not a deepalign checkpoint of this version \(missing"):
        make_trainer(splits, tmp_path).fit(resume=True)


def test_the_previous_epoch_is_kept_and_resuming_from_it_ends_the_same(splits, tmp_path):
    """checkpoint.prev.pt holds the epoch before; the error for a damaged checkpoint says to
    rename it, and doing so ends exactly as an uninterrupted run."""
    expected = make_trainer(splits, None).fit()
    make_trainer(splits, tmp_path).fit()
    previous = torch.load(tmp_path / PREVIOUS_CHECKPOINT, weights_only=True)
    assert previous["state"]["epoch"] == 2
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["state"]["epoch"] == 3
    (tmp_path / CHECKPOINT).write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=f"rename {PREVIOUS_CHECKPOINT} .* to {CHECKPOINT}"):
        make_trainer(splits, tmp_path).fit(resume=True)
    os.replace(tmp_path / PREVIOUS_CHECKPOINT, tmp_path / CHECKPOINT)
    resumed = make_trainer(splits, tmp_path).fit(resume=True)
    assert without_times(resumed.history) == without_times(expected.history)
    assert resumed.test == expected.test


def test_only_a_previous_checkpoint_is_an_error_not_a_fresh_start(splits, tmp_path):
    make_trainer(splits, tmp_path).fit()
    (tmp_path / CHECKPOINT).unlink()
    with pytest.raises(ValueError, match=f"not found, but .*{PREVIOUS_CHECKPOINT} is there"):
        make_trainer(splits, tmp_path).fit(resume=True)


def test_a_write_that_fails_midway_leaves_the_last_checkpoint_intact(splits, tmp_path, monkeypatch):
    trainer = make_trainer(splits, tmp_path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if obj is not None and isinstance(obj, dict) and obj["state"]["epoch"] == 2:
            f.write(b"half a checkpoint")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    monkeypatch.undo()
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["state"]["epoch"] == 1
    resumed = make_trainer(splits, tmp_path).fit(resume=True)
    expected = make_trainer(splits, None).fit()
    assert without_times(resumed.history) == without_times(expected.history)


# --- resume refuses to mix configurations -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            {"model": dataclasses.replace(MODEL, alignment_weight=0.5)},
            "model.alignment_weight: checkpoint 1.0, now 0.5",
        ),
        (
            {"model": dataclasses.replace(MODEL, alignment="T-V/A-V")},
            'model.alignment: checkpoint "V-A", now "T-V/A-V"',
        ),
        (
            {"train": dataclasses.replace(TRAIN, lr_other=0.01)},
            "train.lr_other: checkpoint 0.001, now 0.01",
        ),
        (
            {"train": dataclasses.replace(TRAIN, max_epochs=1)},  # below the epochs done
            "train.max_epochs: checkpoint 3, now 1",
        ),
        ({"seed": 7}, "seed: checkpoint 1111, now 7"),
        (
            {"data_id": {"size": 10, "sha256_first_mib": "beef"}},
            'data.sha256_first_mib: checkpoint "abc", now "beef"',
        ),
    ],
    ids=["weight", "spec", "lr", "fewer-epochs", "seed", "data"],
)
def test_resume_with_another_configuration_lists_the_differences(splits, tmp_path, change, line):
    data_id = {"size": 10, "sha256_first_mib": "abc"}
    first = make_trainer(splits, tmp_path, data_id=data_id, train=dataclasses.replace(TRAIN))
    first.callbacks = (stop_after(2),)
    with pytest.raises(StopRunError):
        first.fit()
    options = {"data_id": data_id, **change}
    trainer = make_trainer(splits, tmp_path, **options)
    with pytest.raises(ValueError, match="written by another configuration") as caught:
        trainer.fit(resume=True)
    message = str(caught.value)
    assert "written by another configuration; resuming would mix two runs" in message
    assert f"\n  {line}\n" in message
    assert message.count("\n  ") == 1  # exactly one difference listed
    assert "resume_mismatch='override'" in message
    assert trainer.state["epoch"] == 0


def test_resume_compares_the_library_version(splits, tmp_path, monkeypatch):
    make_trainer(splits, tmp_path, train=dataclasses.replace(TRAIN, max_epochs=1)).fit()
    written_by = deepalign.__version__
    monkeypatch.setattr(deepalign, "__version__", "99.0")
    with pytest.raises(ValueError, match=rf'version: checkpoint "{written_by}", now "99.0"'):
        make_trainer(splits, tmp_path).fit(resume=True)


def test_settings_that_change_no_number_may_differ(splits, tmp_path):
    """num_workers and pin_memory change no computed value; max_epochs may grow."""
    make_trainer(splits, tmp_path, train=dataclasses.replace(TRAIN, max_epochs=2)).fit()
    relaxed = dataclasses.replace(TRAIN, num_workers=1, pin_memory=True, max_epochs=3)
    result = make_trainer(splits, tmp_path, train=relaxed).fit(resume=True)
    assert result.epochs == 3
    assert json.loads((tmp_path / "run.json").read_text())["resume_overrides"] == []


def test_override_continues_and_records_it(splits, tmp_path):
    first = make_trainer(splits, tmp_path)
    first.callbacks = (stop_after(1),)
    with pytest.raises(StopRunError):
        first.fit()
    changed = dataclasses.replace(MODEL, alignment_weight=0.5)
    trainer = make_trainer(splits, tmp_path, model=changed, resume_mismatch="override")
    with pytest.warns(UserWarning, match="model.alignment_weight: checkpoint 1.0, now 0.5"):
        result = trainer.fit(resume=True)
    assert result.epochs == 3
    recorded = [{"epoch": 1, "differences": {"model.alignment_weight": [1.0, 0.5]}}]
    assert json.loads((tmp_path / "run.json").read_text())["resume_overrides"] == recorded
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["overrides"] == recorded
    assert saved["run"]["model"]["alignment_weight"] == 0.5
    # A further resume with the new configuration continues without complaint.
    again = make_trainer(
        splits, tmp_path, model=changed, train=dataclasses.replace(TRAIN, max_epochs=4)
    )
    assert again.fit(resume=True).epochs == 4
    assert json.loads((tmp_path / "run.json").read_text())["resume_overrides"] == recorded


def test_override_of_an_incompatible_model_is_a_readable_error(splits, tmp_path):
    make_trainer(splits, tmp_path, train=dataclasses.replace(TRAIN, max_epochs=1)).fit()
    wider = dataclasses.replace(MODEL, vision_out=8)
    with (
        pytest.warns(UserWarning, match="model.vision_out"),
        pytest.raises(ValueError, match="the checkpoint does not fit this model"),
    ):
        make_trainer(splits, tmp_path, model=wider, resume_mismatch="override").fit(resume=True)


class StopRunError(Exception):
    """Raised by a callback to end a run after an epoch, as an interruption would."""


def stop_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise StopRunError

    return callback


# --- slow: real processes killed at random moments; a 200-epoch soak ---------------------------


def worker_env(slow_write: float) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPALIGN_WORKER_SLOW_WRITE": str(slow_write)}
    root = str(Path(__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def events(out_dir: Path, pid: int) -> list[str]:
    path = out_dir / "events.log"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line.rsplit(" ", 1)[0] for line in lines if line.endswith(f" {pid}")]


def wait_for(out_dir: Path, process: subprocess.Popen, predicate, timeout: float = 60) -> bool:
    """Wait until an event of ``process`` satisfies ``predicate``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(e) for e in events(out_dir, process.pid)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError(f"no matching event from {process.pid} in {timeout} s")


MOMENTS = ("checkpoint write", "log write", "elsewhere")
WRITE_TARGETS = [
    ("write-start", "checkpoint.pt.tmp"),
    ("replace-start", "checkpoint.pt"),
    ("replace-start", "checkpoint.prev.pt"),
]


def moment(last_event: str) -> str:
    """Where a process was when killed, from its last event."""
    kind, _, name = last_event.partition(" ")
    if kind in ("write-start", "replace-start"):
        return "checkpoint write" if name.startswith("checkpoint") else "log write"
    return "elsewhere"  # training, evaluation, or between two writes


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path):
    # Enough epochs that the ten kills land before the run ends on a fast CPU too.
    slow, epochs = 0.15, ["--epochs", "80", "--patience", "80"]
    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, str(WORKER), str(reference), *epochs],
        env=worker_env(0),
        check=True,
        timeout=300,
    )
    run = tmp_path / "killed"
    rng = random.Random(15)
    # 24 epochs of about 1 s each with the slowed writes. Five kills at random times up to 3 s
    # after the worker is ready (each costs at most the epoch it interrupts), three aimed inside
    # the checkpoint write (halfway through its bytes, before its rename, before the previous
    # checkpoint's rename), and two at random times up to 1.5 s with writes at full speed, which
    # land mostly in training and evaluation.
    plan = [("random", slow)] * 5 + [("random", 0.0)] * 2
    plan += [(f"{event} {name}", slow) for event, name in WRITE_TARGETS]
    rng.shuffle(plan)
    kills = []
    for target, delay in plan:
        process = subprocess.Popen(
            [sys.executable, str(WORKER), str(run), "--resume", *epochs], env=worker_env(delay)
        )
        if not wait_for(run, process, lambda e: e == "ready"):
            break
        if target == "random":
            time.sleep(rng.uniform(0, 3 if delay else 1.5))
        elif not wait_for(run, process, lambda e, t=target: e == t):
            break
        else:
            time.sleep(slow / 2)
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        last = events(run, process.pid)[-1]
        kills.append({"target": target, "slow_writes": bool(delay), "last_event": last})
    assert len(kills) == len(plan), kills
    for kill in kills:
        kill["during"] = moment(kill["last_event"])
    inside_checkpoint_writes = [k for k in kills if k["during"] == "checkpoint write"]
    assert len(inside_checkpoint_writes) >= 3, kills
    final = subprocess.run(
        [sys.executable, str(WORKER), str(run), "--resume", *epochs],
        env=worker_env(0),
        timeout=300,
    )
    assert final.returncode == 0
    got = json.loads((run / "results.json").read_text())
    want = json.loads((reference / "results.json").read_text())
    assert got == want
    for name in ("final_model.pt", "final_ulgm.pt"):
        a = torch.load(run / name, weights_only=True)
        b = torch.load(reference / name, weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    history = json.loads((run / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert without_times(history) == without_times(expected)
    counts = {where: sum(k["during"] == where for k in kills) for where in MOMENTS}
    summary = {"kills": len(kills), **counts, "log": kills}
    (Path(os.environ.get("DEEPALIGN_REPORT_DIR", tmp_path)) / "kill_report.json").write_text(
        json.dumps(summary, indent=2)
    )
    print(json.dumps(summary))


@pytest.mark.slow
def test_a_200_epoch_soak_keeps_memory_flat_and_every_value_finite(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(WORKER),
            str(tmp_path),
            "--epochs",
            "200",
            "--patience",
            "200",
            "--soak",
        ],
        env=worker_env(0),
        check=True,
        timeout=1800,
    )
    rows = json.loads((tmp_path / "rss.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, 201))
    for row in rows:
        for key, value in row.items():
            assert isinstance(value, int | float), key
            assert math.isfinite(value), (row["epoch"], key)
    at_20, at_200 = rows[19]["rss"], rows[199]["rss"]
    growth = (at_200 - at_20) / at_20
    print(json.dumps({"rss_epoch_20": at_20, "rss_epoch_200": at_200, "growth": growth}))
    assert abs(growth) < 0.05
    assert rows[-1]["train_align_vision-audio"] > 0  # the alignment term was in the objective
    assert rows[-1]["train_text"] > 0  # and the ULGM's generated labels
