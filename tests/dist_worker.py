"""One rank of a multi-process test (run by tests/test_distributed.py, not collected by pytest).

Usage: python dist_worker.py SCENARIO[,SCENARIO...] RANK WORLD_SIZE PORT OUT_DIR. Saves
{scenario: what it computed} to OUT_DIR/rank{RANK}.pt; the tests compare that with a
single-process reference.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import deepalign
from deepalign import MSAConfig, MultiTaskMSA
from deepalign import functional as F
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

ROWS_A, ROWS_B = (5, 9), (7, 3)  # unequal per-rank batches


def rank_slice(rows: tuple[int, ...], rank: int) -> slice:
    start = sum(rows[:rank])
    return slice(start, start + rows[rank])


def shared_inputs(d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(sum(ROWS_A), d, generator=g, dtype=torch.float64) * 2 + 1
    x_b = torch.randn(sum(ROWS_B), d, generator=g, dtype=torch.float64)
    return x_a, x_b


def loss_scenario(rank: int, world: int, out: Path) -> dict:
    x_a, x_b = shared_inputs()
    local_a = x_a[rank_slice(ROWS_A, rank)].clone().requires_grad_()
    local_b = x_b[rank_slice(ROWS_B, rank)].clone().requires_grad_()
    theta = F.covariance_alignment_loss(local_a, local_b)  # sync_dist=None: automatic
    theta.backward()
    return {"theta": theta.detach(), "grad_a": local_a.grad, "grad_b": local_b.grad}


def ddp_scenario(rank: int, world: int, out: Path) -> dict:
    x_a, x_b = shared_inputs()
    torch.manual_seed(1)
    net = nn.Linear(6, 4).double()
    model = nn.parallel.DistributedDataParallel(net)
    align = deepalign.ModalityAlignment("A-V/T+A", {"text": 4, "audio": 4, "vision": 4})
    feats = {
        "audio": model(x_a[rank_slice(ROWS_A, rank)]),
        "vision": model(x_b[rank_slice(ROWS_B, rank)]),
        "text": model(x_b[rank_slice(ROWS_B, rank)] ** 2),
    }
    loss = align(feats)
    loss.backward()
    return {"loss": loss.detach(), "grads": [p.grad for p in net.parameters()]}


ULGM_DIMS = {"fusion": 3, "text": 2, "audio": 2, "vision": 1}
ULGM_SAMPLES = 20


def ulgm_schedule() -> list[tuple[int, list[tuple[torch.Tensor, dict]]]]:
    """(epoch, [per-rank (indexes, features)]) for 3 epochs; unequal batches, and one sample
    in each step repeated by rank 1 (as DistributedSampler's padding does)."""
    g = torch.Generator().manual_seed(5)
    schedule = []
    for epoch in (1, 2, 3):
        order = torch.randperm(ULGM_SAMPLES, generator=g)
        for start in range(0, ULGM_SAMPLES, 7):
            chunk = order[start : start + 7]
            per_rank = [chunk[:4], torch.cat([chunk[4:], chunk[:1]])]
            schedule.append((epoch, [(idx, ulgm_features(idx, g)) for idx in per_rank]))
    return schedule


def ulgm_features(indexes: torch.Tensor, g: torch.Generator) -> dict:
    return {n: torch.randn(len(indexes), d, generator=g) for n, d in ULGM_DIMS.items()}


def ulgm_labels() -> torch.Tensor:
    return torch.linspace(-3, 3, ULGM_SAMPLES)


def ulgm_scenario(rank: int, world: int, out: Path) -> dict:
    ulgm = deepalign.ULGM(ULGM_SAMPLES, ULGM_DIMS)  # sync_dist=None: automatic
    ulgm.init_labels(torch.arange(ULGM_SAMPLES), ulgm_labels())
    for epoch, per_rank in ulgm_schedule():
        indexes, features = per_rank[rank]
        ulgm.step(features, indexes, epoch)
    return ulgm.state_dict()


def train_scenario(rank: int, world: int, out: Path) -> dict:
    trainer = make_trainer(out / "train")
    result = trainer.fit()
    return {"ulgm": trainer.ulgm.state_dict(), "test": result.test, "epochs": result.epochs}


def make_trainer(out_dir: Path | None) -> Trainer:
    splits = make_synthetic("mosi", n_train=40, seq_len=5, text_dim=8, seed=0)
    config = MSAConfig.preset(
        "mosi", text_mode="features", feature_dims=(8, 5, 20), alignment="V-A"
    )
    train = TrainConfig.preset("mosi", batch_size=8, max_epochs=2, accumulate_grad_batches=1)
    torch.manual_seed(0)
    return Trainer(MultiTaskMSA(config), splits, train, out_dir=out_dir)


PAIRED_ROWS = (5, 9)  # per rank, equal for both inputs: row i of both is one sample


def paired_inputs(d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x_a = torch.randn(sum(PAIRED_ROWS), d, generator=g, dtype=torch.float64)
    return x_a, 0.6 * x_a + torch.randn(sum(PAIRED_ROWS), d, generator=g, dtype=torch.float64)


def unbiased_scenario(rank: int, world: int, out: Path) -> dict:
    """The unbiased estimator over the global batch, independent (unequal rows) and paired;
    first and second derivatives (a gradient penalty)."""
    results = {}
    cases = {
        "independent": (shared_inputs(), ROWS_A, ROWS_B),
        "paired": (paired_inputs(), PAIRED_ROWS, PAIRED_ROWS),
    }
    for name, ((x_a, x_b), rows_a, rows_b) in cases.items():
        local_a = x_a[rank_slice(rows_a, rank)].clone().requires_grad_()
        local_b = x_b[rank_slice(rows_b, rank)].clone().requires_grad_()
        theta = F.covariance_alignment_loss(local_a, local_b, estimator="unbiased")
        (grad_a,) = torch.autograd.grad(theta, local_a, create_graph=True)
        grad_a.square().sum().backward()
        results[name] = {"theta": theta.detach(), "penalty_grad_b": local_b.grad}
    return results


def nan_scenario(rank: int, world: int, out: Path) -> dict:
    """NaN features on rank 1 only: every rank must raise, none may block in a collective."""
    x_a, x_b = shared_inputs()
    local_a = x_a[rank_slice(ROWS_A, rank)].clone()
    if rank == 1:
        local_a[0, 0] = float("nan")
    try:
        F.covariance_alignment_loss(local_a, x_b[rank_slice(ROWS_B, rank)])
    except ValueError as error:
        return {"error": str(error)}
    return {"error": ""}


SCENARIOS = {
    "loss": loss_scenario,
    "ddp": ddp_scenario,
    "ulgm": ulgm_scenario,
    "train": train_scenario,
    "unbiased": unbiased_scenario,
    "nan": nan_scenario,
}


def main() -> None:
    scenarios, rank, world, port, out = sys.argv[1], *map(int, sys.argv[2:5]), Path(sys.argv[5])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results = {name: SCENARIOS[name](rank, world, out) for name in scenarios.split(",")}
        torch.save(results, out / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
