"""The Lightning recipe, examples/lightning_module.py.

One process: ``lightning.Trainer`` equals a plain PyTorch loop over the same batches (so the
ULGM's loss and update sit where Self-MM puts them), and a checkpoint carries the ULGM's banks
(load and resume). Slow: two DDP processes (gloo, CPU) against one process on the union batches.
Everything runs in float64 (``precision="64-true"``), so the comparisons are tight.

Run as a script (``python tests/test_lightning.py OUT_DIR``), this file is the DDP worker of the
slow test; Lightning starts the second rank by running the same command again.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

L = pytest.importorskip("lightning", reason="Lightning is a dev dependency: pip install lightning")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "lightning_module", ROOT / "examples" / "lightning_module.py"
)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

SAMPLES, BATCH, EPOCHS, SEED = 24, 4, 2, 7


class Recorded(example.AlignedMSAModule):
    """The example's module, recording each step's epoch, indexes and loss terms."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record: list[tuple[int, torch.Tensor, dict]] = []

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.record.append((self.current_epoch + 1, batch["index"].clone(), outputs["terms"]))
        super().on_train_batch_end(outputs, batch, batch_idx)


def dataset() -> "example.SyntheticMSA":
    return example.SyntheticMSA(SAMPLES, seed=3)


def module(cls=Recorded) -> "example.AlignedMSAModule":
    L.seed_everything(SEED, verbose=False)
    return cls(dataset().labels, lr=0.05)


def trainer(**kwargs) -> "L.Trainer":
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": EPOCHS,
        "precision": "64-true",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**options, **kwargs})


def loader(batch_size: int = BATCH) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset(), batch_size=batch_size, shuffle=False)


def plain_loop(schedule: list[tuple[int, torch.Tensor]]) -> tuple[Recorded, list[dict]]:
    """The same module trained by hand, one process: loss, backward, Adam, then the ULGM."""
    reference = module().double()
    data = dataset()
    optimizer = reference.configure_optimizers()
    terms = []
    for epoch, indexes in schedule:
        batch = default_collate([data[i] for i in indexes.tolist()])
        batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        loss, features, step_terms = reference.losses(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reference.ulgm.step(features, batch["index"], epoch)
        terms.append(step_terms)
    return reference, terms


def assert_states_close(got: dict, want: dict, **tolerance) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=key, **tolerance)


def test_trainer_equals_a_plain_loop_over_the_same_batches():
    trained = module()
    trainer().fit(trained, loader())
    schedule = [(epoch, indexes) for epoch, indexes, _ in trained.record]
    assert len(schedule) == EPOCHS * SAMPLES // BATCH
    reference, terms = plain_loop(schedule)
    assert_states_close(trained.state_dict(), reference.state_dict(), rtol=1e-12, atol=1e-12)
    for (_, _, got), want in zip(trained.record, terms, strict=True):
        assert_states_close(got, want, rtol=1e-12, atol=1e-12)
    # Not a vacuous comparison: epoch 2 generated unimodal labels away from the ground truth.
    moved = trained.ulgm.labels("audio") - trained.ulgm.labels("fusion")
    assert moved.abs().max() > 1e-3


def test_checkpoint_holds_the_ulgm_and_resuming_equals_one_run(tmp_path):
    straight = module()
    trainer().fit(straight, loader())

    first = module()
    run = trainer(max_epochs=1)
    run.fit(first, loader())
    path = tmp_path / "epoch1.ckpt"
    run.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    ulgm = {k.removeprefix("ulgm."): v for k, v in saved.items() if k.startswith("ulgm.")}
    assert_states_close(ulgm, first.ulgm.state_dict(), rtol=0, atol=0)

    # load_from_checkpoint builds a float32 module and copies the (float64) state into it.
    restored = example.AlignedMSAModule.load_from_checkpoint(path, train_labels=dataset().labels)
    assert_states_close(restored.ulgm.state_dict(), first.ulgm.state_dict(), check_dtype=False)
    assert not torch.equal(restored.ulgm.bank_text.features, module().ulgm.bank_text.features)

    # Double before fit: Lightning loads the checkpoint before it applies precision="64-true".
    resumed = module().double()
    trainer().fit(resumed, loader(), ckpt_path=path)  # epoch 2 from the checkpoint
    assert_states_close(resumed.state_dict(), straight.state_dict(), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_two_ddp_processes_share_alignment_statistics_and_ulgm_banks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Every rank ends with the same banks and parameters, bit for bit where they are copies.
    assert_states_close(ranks[1]["ulgm"], ranks[0]["ulgm"], rtol=0, atol=0)
    assert_states_close(ranks[1]["net"], ranks[0]["net"], rtol=1e-12, atol=1e-12)

    # One process on the union batches (rank 0's rows, then rank 1's) computes the same.
    steps = list(zip(ranks[0]["record"], ranks[1]["record"], strict=True))
    assert len(steps) == EPOCHS * SAMPLES // (2 * BATCH)
    schedule = []
    for (epoch, first, _), (epoch_1, second, _) in steps:
        assert epoch == epoch_1
        assert not set(first.tolist()) & set(second.tolist())
        schedule.append((epoch, torch.cat([first, second])))
    reference, terms = plain_loop(schedule)
    for ((_, _, got_0), (_, _, got_1)), want in zip(steps, terms, strict=True):
        for name in ("vision-audio", "alignment"):  # global: each rank has the union's value
            torch.testing.assert_close(got_0[name], want[name], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got_1[name], want[name], rtol=1e-10, atol=1e-12)
        for name in ("fusion", "text", "audio", "vision"):  # local means of equal-size halves
            both = (got_0[name] + got_1[name]) / 2
            torch.testing.assert_close(both, want[name], rtol=1e-10, atol=1e-12)
    assert_states_close(ranks[0]["ulgm"], reference.ulgm.state_dict(), rtol=1e-9, atol=1e-10)
    assert_states_close(ranks[0]["net"], reference.net.state_dict(), rtol=1e-9, atol=1e-10)


def ddp_worker(out: Path) -> None:
    """Rank 0 (started by the slow test) and rank 1 (started by Lightning): 2 CPU processes."""
    torch.set_num_threads(1)
    trained = module()
    run = trainer(devices=2, strategy=example.make_strategy("ddp"))
    run.fit(trained, loader())
    torch.save(
        {
            "record": trained.record,
            "ulgm": trained.ulgm.state_dict(),
            "net": trained.net.state_dict(),
        },
        out / f"rank{run.global_rank}.pt",
    )


if __name__ == "__main__":
    ddp_worker(Path(sys.argv[1]))
