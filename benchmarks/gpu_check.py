"""The GPU check's measurements (run by ``scripts/gpu_check.sh``): the loss against the GEMM
floor measured in the same run, the unbiased estimator, and a MultiTaskMSA training step.

On a CUDA device (the default when one is present):

- the loss, forward + backward (``torch.autograd.grad``), float32, at 4096×1024 (the ``d×d``
  path) and 64×8192 (the ``N×N`` Gram path): the plug-in (``deepalign``), the unbiased
  estimator for paired rows (``unbiased``) and for independent batches (``unbiased_indep``),
  and ``floor``: the cuBLAS GEMMs that path cannot avoid, alone, on pre-centred inputs
  (``d×d``: X̃ᵀX̃ of both inputs and X̃·D of both; Gram: X̃X̃ᵀ of both, X̃_aX̃_bᵀ, and G·X̃ of
  both); each variant's time over the floor's;
- one training step (forward, ULGM loss, the ``"V-A"`` alignment loss with the diagnostics the
  trainer logs, backward, Adam step, ULGM update) of ``MultiTaskMSA`` on MOSI-shaped batches of
  64, against the bare step (fusion head's L1 loss only), as ``bench_train_step.py`` does.

On a CPU the same code runs at smoke sizes (64×32 and 8×128, a batch of 4 with short
sequences, short timings) so that the script is known to work before a GPU is lent; those
numbers measure nothing and the report says ``"mode": "cpu-smoke"``. Written: JSON to
``--out`` (default ``benchmarks/results/gpu_check.json`` on CUDA; on a CPU nothing unless
``--out`` is given), and a table on stdout.

Usage::

    python benchmarks/gpu_check.py                     # CUDA when present, else the CPU smoke
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_loss  # noqa: E402
import bench_train_step  # noqa: E402
import common  # noqa: E402

from deepalign.functional import covariance_alignment_loss  # noqa: E402

GPU_CASES = ((4096, 1024), (64, 8192))
CPU_CASES = ((64, 32), (8, 128))
DEFAULT_OUT = HERE / "results" / "gpu_check.json"


def gram_floor(x_a: torch.Tensor, x_b: torch.Tensor) -> Callable[[], object]:
    """The products the Gram path cannot avoid: X̃X̃ᵀ of both inputs and X̃_aX̃_bᵀ forward,
    G·X̃ of both backward."""
    xc_a = (x_a - x_a.mean(dim=0)).detach()
    xc_b = (x_b - x_b.mean(dim=0)).detach()
    g = torch.randn(x_a.shape[0], x_a.shape[0], device=x_a.device)

    def step() -> object:
        return xc_a @ xc_a.mT, xc_b @ xc_b.mT, xc_a @ xc_b.mT, g @ xc_a, g @ xc_b

    return step


def loss_case(n: int, d: int, args: argparse.Namespace) -> dict[str, Any]:
    generator = common.seed_everything(n * 10_000 + d)
    x_a, x_b = (torch.randn(n, d, generator=generator).to(args.device) for _ in range(2))
    x_a.requires_grad_(True)
    x_b.requires_grad_(True)
    gram = 2 * n < d
    variants = {
        "deepalign": bench_loss.forward_backward(covariance_alignment_loss, x_a, x_b),
        "unbiased": bench_loss.forward_backward(bench_loss.unbiased_loss, x_a, x_b),
        "unbiased_indep": bench_loss.forward_backward(
            bench_loss.unbiased_independent_loss, x_a, x_b
        ),
        "floor": (gram_floor if gram else bench_loss.matmul_floor)(x_a, x_b),
    }
    timings = common.measure(variants, args)
    return {
        "n": n,
        "d": d,
        "path": "gram" if gram else "dxd",
        **timings,
        "time_vs_floor": common.ratios(timings, "floor"),
        "unbiased_over_plugin": timings["unbiased"]["median_s"] / timings["deepalign"]["median_s"],
        "unbiased_indep_over_plugin": (
            timings["unbiased_indep"]["median_s"] / timings["deepalign"]["median_s"]
        ),
    }


def train_case(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.device.type != "cuda"
    batch_size = 4 if smoke else 64
    lengths = bench_train_step.QUICK_LENGTHS if smoke else bench_train_step.LENGTHS
    batch = bench_train_step.make_batch(batch_size, lengths, args.device)
    steps = {
        v: bench_train_step.training_step(v, batch, args.device) for v in ("bare", "ulgm_align")
    }
    timings = common.measure(steps, args)
    overhead = (timings["ulgm_align"]["median_s"] / timings["bare"]["median_s"] - 1) * 100
    return {"batch_size": batch_size, **timings, "overhead_percent": overhead}


def table(loss: Sequence[dict[str, Any]], train: dict[str, Any]) -> str:
    lines = [
        f"{'case':>11} {'path':>5} {'plug-in':>10} {'÷ floor':>8} {'floor':>10} "
        f"{'unbiased ÷ plug-in':>19} {'(indep)':>8}"
    ]
    for r in loss:
        lines.append(
            f"{r['n']:>5}×{r['d']:<5} {r['path']:>5} "
            f"{common.fmt_time(r['deepalign']['median_s']):>10} "
            f"{r['time_vs_floor']['deepalign']:>8.2f} "
            f"{common.fmt_time(r['floor']['median_s']):>10} "
            f"{r['unbiased_over_plugin']:>19.2f} {r['unbiased_indep_over_plugin']:>8.2f}"
        )
    lines.append(
        f"train step, batch {train['batch_size']}: bare "
        f"{common.fmt_time(train['bare']['median_s'])}, with ULGM + V-A alignment "
        f"{common.fmt_time(train['ulgm_align']['median_s'])} "
        f"({train['overhead_percent']:+.1f} %)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="the JSON report (default: see above)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    args.quick = not cuda
    args.min_run_time, args.rounds = (0.2, 3) if cuda else (0.005, 1)
    torch.set_num_threads(args.threads)
    if not cuda:
        print("no CUDA device: CPU smoke run at tiny sizes (the numbers measure nothing)")
    loss = [loss_case(n, d, args) for n, d in (GPU_CASES if cuda else CPU_CASES)]
    train = train_case(args)
    print(table(loss, train))
    data = {
        "benchmark": "gpu_check",
        "mode": "cuda" if cuda else "cpu-smoke",
        "environment": common.environment(args.device, args.threads),
        "timing": {"min_run_time_s": args.min_run_time, "rounds": args.rounds},
        "loss": loss,
        "train_step": train,
    }
    out = args.out or (DEFAULT_OUT if cuda else None)
    if out is not None:
        common.write_json(data, out)
        print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
