"""Multi-process tests: 2 ranks on CPU with gloo, spawned by the test, against one process."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import deepalign
from deepalign import functional as F
from deepalign.training import CHECKPOINT

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    """Every scenario of dist_worker, run once by WORLD processes (one start-up for all tests)."""
    out, port, worker = tmp_path_factory.mktemp("ranks"), free_port(), dist_worker.__file__
    scenarios = ",".join(dist_worker.SCENARIOS)
    procs = [
        subprocess.Popen(
            [sys.executable, worker, scenarios, str(r), str(WORLD), str(port), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(WORLD)
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)], out


def test_global_batch_loss_and_gradients(ranks):
    results = [r["loss"] for r in ranks[0]]
    x_a, x_b = (x.requires_grad_() for x in dist_worker.shared_inputs())
    theta = F.covariance_alignment_loss(x_a, x_b)
    theta.backward()
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["theta"], theta.detach(), rtol=1e-12, atol=1e-12)
        # Each rank's rows get the gradient of the sum of the ranks' (identical) losses:
        # world_size times their share, which DDP's gradient averaging divides out.
        rows_a = x_a.grad[dist_worker.rank_slice(dist_worker.ROWS_A, rank)]
        rows_b = x_b.grad[dist_worker.rank_slice(dist_worker.ROWS_B, rank)]
        torch.testing.assert_close(result["grad_a"] / WORLD, rows_a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(result["grad_b"] / WORLD, rows_b, rtol=1e-9, atol=1e-12)


def test_ddp_parameter_gradients_equal_single_process(ranks):
    results = [r["ddp"] for r in ranks[0]]
    x_a, x_b = dist_worker.shared_inputs()
    torch.manual_seed(1)
    net = nn.Linear(6, 4).double()
    align = deepalign.ModalityAlignment("A-V/T+A", {"text": 4, "audio": 4, "vision": 4})
    loss = align({"audio": net(x_a), "vision": net(x_b), "text": net(x_b**2)})
    loss.backward()
    for result in results:
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        for got, want in zip(result["grads"], net.parameters(), strict=True):
            torch.testing.assert_close(got, want.grad, rtol=1e-9, atol=1e-12)


def test_ulgm_banks_identical_on_all_ranks_and_equal_to_union_batches(ranks):
    reference = deepalign.ULGM(dist_worker.ULGM_SAMPLES, dist_worker.ULGM_DIMS, sync_dist=False)
    reference.init_labels(torch.arange(dist_worker.ULGM_SAMPLES), dist_worker.ulgm_labels())
    for epoch, per_rank in dist_worker.ulgm_schedule():
        seen, indexes, features = set(), [], {n: [] for n in dist_worker.ULGM_DIMS}
        for rank_indexes, rank_features in per_rank:  # rank order, first occurrence wins
            for row, index in enumerate(rank_indexes.tolist()):
                if index not in seen:
                    seen.add(index)
                    indexes.append(index)
                    for name, f in rank_features.items():
                        features[name].append(f[row])
        stacked = {name: torch.stack(rows) for name, rows in features.items()}
        reference.step(stacked, torch.tensor(indexes), epoch)
    expected = reference.state_dict()
    for state in (r["ulgm"] for r in ranks[0]):
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_two_process_training_shares_the_ulgm_and_writes_the_usual_checkpoint(ranks, tmp_path):
    results, out = ranks
    first, second = (r["train"] for r in results)
    assert first["epochs"] == second["epochs"] == 2
    assert first["test"] == second["test"]  # metrics gathered over both ranks
    for key, value in first["ulgm"].items():
        torch.testing.assert_close(second["ulgm"][key], value, rtol=0, atol=0, msg=key)
    distributed = torch.load(out / "train" / CHECKPOINT, weights_only=True)
    dist_worker.make_trainer(tmp_path).fit()  # one process, same settings
    single = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert distributed.keys() == single.keys()
    for part in ("model", "ulgm", "optimizer", "state"):
        assert distributed[part].keys() == single[part].keys(), part
    assert not (out / "train" / CHECKPOINT).with_suffix(".pt.tmp").exists()


def test_sync_dist_true_without_process_group_is_an_error():
    with pytest.raises(ValueError, match="sync_dist: expected an initialised process group"):
        F.covariance(torch.randn(4, 2), sync_dist=True)
    with pytest.raises(TypeError, match="sync_dist: expected True, False or None"):
        F.covariance(torch.randn(4, 2), sync_dist="yes")


def test_unbiased_estimator_and_its_second_derivative_over_the_global_batch(ranks):
    results = [r["unbiased"] for r in ranks[0]]
    cases = {
        "independent": (dist_worker.shared_inputs(), dist_worker.ROWS_A, dist_worker.ROWS_B),
        "paired": (dist_worker.paired_inputs(), dist_worker.PAIRED_ROWS, dist_worker.PAIRED_ROWS),
    }
    for name, ((x_a, x_b), _, rows_b) in cases.items():
        x_a, x_b = x_a.clone().requires_grad_(), x_b.clone().requires_grad_()
        theta = F.covariance_alignment_loss(x_a, x_b, estimator="unbiased")
        (grad_a,) = torch.autograd.grad(theta, x_a, create_graph=True)
        grad_a.square().sum().backward()
        for rank, result in enumerate(results):
            torch.testing.assert_close(result[name]["theta"], theta.detach(), rtol=1e-10, atol=0)
            # Rank r's first derivative is world × its share (the sum over ranks' losses), so
            # its penalty is world² × the one-process penalty's share, summed over ranks' rows.
            rows = x_b.grad[dist_worker.rank_slice(rows_b, rank)]
            torch.testing.assert_close(
                result[name]["penalty_grad_b"], rows * WORLD**2, rtol=1e-8, atol=1e-12
            )


def test_nan_on_one_rank_raises_on_every_rank(ranks):
    errors = [r["nan"]["error"] for r in ranks[0]]
    assert "rank(s) [1] hold NaN/Inf" in errors[0], errors  # told which rank failed
    assert "x_a (rank 1): expected finite" in errors[1], errors  # told which input
