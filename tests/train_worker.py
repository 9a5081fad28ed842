"""A training run in its own process, for the fault-injection and soak tests of
test_training_reliability.py. Uses only deepalign's public API.

    python tests/train_worker.py OUT_DIR [--resume] [--epochs N] [--patience N] [--soak]

Writes OUT_DIR/events.log (one line per event, flushed: ``ready``, ``write-start NAME``,
``write-end NAME``, ``replace-start NAME``, ``replace-end NAME``, ``done``), the Trainer's
files, and at the end ``final_model.pt`` and ``final_ulgm.pt`` (the trained state). With
``--soak`` it also records the resident memory after every epoch in OUT_DIR/rss.json.

The environment variable ``DEEPALIGN_WORKER_SLOW_WRITE=SECONDS`` logs the write events and makes
every file write of the trainer sleep that long halfway through its bytes, and every rename
sleep that long before it happens, so that a SIGKILL has wide windows inside a checkpoint write
(``0`` logs the events without sleeping).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

SEED = 1111


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--soak", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    events = open(args.out_dir / "events.log", "a", buffering=1)  # noqa: SIM115 (lives on)

    def log(event: str) -> None:
        events.write(f"{event} {os.getpid()}\n")
        events.flush()

    slow = os.environ.get("DEEPALIGN_WORKER_SLOW_WRITE")
    if slow is not None:  # "0" logs the write events without slowing them
        _slow_down_writes(float(slow), log)

    splits = make_synthetic("mosi", n_train=64, seq_len=6, text_dim=8, seed=0)
    model_config = MSAConfig.preset(
        "mosi", text_mode="features", feature_dims=(8, 5, 20), alignment="V-A"
    )
    config = TrainConfig.preset(
        "mosi", batch_size=8, accumulate_grad_batches=2, max_epochs=args.epochs,
        patience=args.patience,
    )  # fmt: skip
    callbacks = [_RssRecorder(args.out_dir / "rss.json")] if args.soak else []
    torch.manual_seed(SEED)
    trainer = Trainer(
        MultiTaskMSA(model_config), splits, config, seed=SEED, out_dir=args.out_dir,
        callbacks=callbacks, data_id={"name": "synthetic mosi n_train=64 seed=0"},
    )  # fmt: skip
    log("ready")
    trainer.fit(resume=args.resume)
    torch.save(trainer.model.state_dict(), args.out_dir / "final_model.pt")
    torch.save(trainer.ulgm.state_dict(), args.out_dir / "final_ulgm.pt")
    log("done")
    return 0


def _slow_down_writes(seconds: float, log) -> None:
    """Sleep inside torch.save (halfway through the bytes) and before each os.replace."""
    real_save, real_replace = torch.save, os.replace

    def slow_save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        name = Path(getattr(f, "name", "?")).name
        log(f"write-start {name}")
        f.write(data[: len(data) // 2])
        f.flush()
        if seconds:
            time.sleep(seconds)
        f.write(data[len(data) // 2 :])
        log(f"write-end {name}")
        return None

    def slow_replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        log(f"replace-start {name}")
        if seconds:
            time.sleep(seconds)
        real_replace(src, dst, *args, **kwargs)
        log(f"replace-end {name}")

    torch.save = slow_save
    os.replace = slow_replace


class _RssRecorder:
    """A Trainer callback: resident memory (bytes) after each epoch, and the record's values."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []

    def __call__(self, record: dict[str, float]) -> None:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        self.rows.append({**record, "rss": resident_pages * os.sysconf("SC_PAGE_SIZE")})
        self.path.write_text(json.dumps(self.rows))


if __name__ == "__main__":
    sys.exit(main())
