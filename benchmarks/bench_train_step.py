"""Training-step overhead of the ULGM and the alignment loss over the bare MultiTaskMSA.

Model: ``MSAConfig.preset("mosi", text_mode="features", feature_dims=(768, 5, 20))``, in
training mode, on MOSI-shaped batches: text (B, 50, 768), audio (B, 375, 5) and vision
(B, 500, 20) with seeded random lengths. One call is one training step, as
``deepalign.training.Trainer`` does it:

- ``bare``: forward, L1 loss of the fusion head only, backward, Adam step;
- ``ulgm``: forward, :meth:`deepalign.ULGM.loss` over the four heads, backward, Adam step,
  :meth:`deepalign.ULGM.step` (epoch 2, so unimodal labels are generated);
- ``ulgm_align``: as ``ulgm`` plus the model's ``"V-A"`` alignment loss (encoder features)
  and the alignment diagnostics the trainer logs on every step (θ, floor, unbiased value,
  scales: one pass with the loss since issue 21; on an older tree, which lacks
  ``alignment_loss_and_diagnostics``, the separate ``alignment_diagnostics`` pass the trainer
  then ran, so that the script times each version's trainer work);
- ``extras``: the work ``ulgm_align`` adds, alone: the ULGM loss, the alignment loss, their
  gradient with respect to the network's outputs (fixed, precomputed) and the ULGM step. The
  overheads of whole steps are differences of two noisy times; this one is measured directly.

Each variant trains its own copy of the same initial weights. Reported: median step time and IQR,
peak memory (see ``common.py``) and each variant's time over ``bare``'s in percent (for
``extras``, its time as a percentage of ``bare``'s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import torch

from deepalign import ULGM, MSAConfig, MultiTaskMSA
from deepalign.training import TrainConfig, parameter_groups

BATCHES = (16, 64)
QUICK_BATCHES = (4,)
FEATURE_DIMS = (768, 5, 20)
LENGTHS = {"text": 50, "audio": 375, "vision": 500}
QUICK_LENGTHS = {"text": 5, "audio": 12, "vision": 16}
NUM_SAMPLES = 1284  # MOSI's training split
VARIANTS = ("bare", "ulgm", "ulgm_align", "extras")
# The outputs the extras' loss is differentiated by: output group -> names.
GRADIENT_KEYS = {
    "predictions": ("fusion", "text", "audio", "vision"),
    "encoder": ("audio", "vision"),
}
Batch = dict[str, torch.Tensor]


def make_batch(batch_size: int, lengths: dict[str, int], device: torch.device) -> Batch:
    generator = common.seed_everything(batch_size)
    widths = dict(zip(LENGTHS, FEATURE_DIMS, strict=True))
    batch = {
        name: torch.randn(batch_size, length, widths[name], generator=generator)
        for name, length in lengths.items()
    }
    for name in ("audio", "vision"):
        batch[f"{name}_lengths"] = torch.randint(
            1, lengths[name] + 1, (batch_size,), generator=generator
        )
    batch["index"] = torch.randperm(NUM_SAMPLES, generator=generator)[:batch_size]
    batch["label"] = torch.rand(batch_size, generator=generator) * 6 - 3
    return {name: t.to(device) for name, t in batch.items()}


def make_model(alignment: str | None, device: torch.device) -> MultiTaskMSA:
    common.seed_everything(0)
    config = MSAConfig.preset(
        "mosi", text_mode="features", feature_dims=FEATURE_DIMS, alignment=alignment
    )
    return MultiTaskMSA(config).to(device).train()


def make_ulgm(model: MultiTaskMSA, device: torch.device) -> ULGM:
    c = model.config
    dims = {"fusion": c.post_fusion_dim, "text": c.post_text_dim}
    dims |= {"audio": c.post_audio_dim, "vision": c.post_vision_dim}
    ulgm = ULGM(NUM_SAMPLES, dims, H=TrainConfig.preset("mosi").H)
    generator = common.seed_everything(1)
    ulgm.init_labels(
        torch.arange(NUM_SAMPLES), torch.rand(NUM_SAMPLES, generator=generator) * 6 - 3
    )
    return ulgm.to(device)


def model_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    names = ("text", "audio", "audio_lengths", "vision", "vision_lengths")
    return tuple(batch[name] for name in names)


def trainer_alignment(model: MultiTaskMSA, outputs: dict[str, Any]) -> torch.Tensor:
    """The alignment work of a trainer step: the loss and, from 4 rows, the logged diagnostics
    (in one pass where the tree has it, else the older trainer's two passes)."""
    if model.alignment is None or outputs["predictions"]["fusion"].shape[0] < 4:
        return model.alignment_loss(outputs)
    both = getattr(model, "alignment_loss_and_diagnostics", None)
    if both is not None:
        return both(outputs)[0]
    model.alignment_diagnostics(outputs, validate=False)
    return model.alignment_loss(outputs)


def training_step(variant: str, batch: Batch, device: torch.device) -> Callable[[], object]:
    model = make_model("V-A" if variant == "ulgm_align" else None, device)
    optimizer = torch.optim.Adam(parameter_groups(model, TrainConfig.preset("mosi")))
    ulgm = None if variant == "bare" else make_ulgm(model, device)
    inputs = model_inputs(batch)
    index = batch["index"]

    def step() -> object:
        outputs = model(*inputs)
        if ulgm is None:
            loss = (outputs["predictions"]["fusion"].reshape(-1) - batch["label"]).abs().mean()
        else:
            loss = ulgm.loss(outputs["predictions"], index)
            loss = loss + trainer_alignment(model, outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ulgm is not None:
            features = {name: value.detach() for name, value in outputs["post"].items()}
            ulgm.step(features, index, epoch=2)
        return loss

    return step


def extra_work(batch: Batch, device: torch.device) -> Callable[[], object]:
    """The ULGM and alignment computations of a step, on fixed network outputs."""
    model = make_model("V-A", device)
    ulgm = make_ulgm(model, device)
    with torch.no_grad():
        outputs = model(*model_inputs(batch))
    for group, names in GRADIENT_KEYS.items():
        for name in names:
            outputs[group][name].requires_grad_(True)
    leaves = [outputs[group][name] for group, names in GRADIENT_KEYS.items() for name in names]
    index = batch["index"]

    def step() -> object:
        loss = ulgm.loss(outputs["predictions"], index)
        loss = loss + trainer_alignment(model, outputs)
        grads = torch.autograd.grad(loss, leaves)
        ulgm.step({name: value.detach() for name, value in outputs["post"].items()}, index, 2)
        return grads

    return step


def run_case(batch_size: int, args: Any) -> dict[str, Any]:
    batch = make_batch(batch_size, QUICK_LENGTHS if args.quick else LENGTHS, args.device)
    steps = {v: training_step(v, batch, args.device) for v in VARIANTS[:-1]}
    steps["extras"] = extra_work(batch, args.device)
    timings = common.measure(steps, args)
    overhead = {v: (r - 1) * 100 for v, r in common.ratios(timings, "bare").items()}
    overhead["extras"] += 100
    print(
        f"B={batch_size:>3}: bare {common.fmt_time(timings['bare']['median_s'])}, "
        f"+ULGM {overhead['ulgm']:+.1f}%, +ULGM+V-A {overhead['ulgm_align']:+.1f}%, "
        f"the added work alone {overhead['extras']:.1f}%"
    )
    return {"batch_size": batch_size, **timings, "overhead_percent": overhead}


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = [
        [
            str(r["batch_size"]),
            common.fmt_time(r["bare"]["median_s"]),
            common.fmt_time(r["bare"]["iqr_s"]),
            common.fmt_time(r["ulgm"]["median_s"]),
            f"{r['overhead_percent']['ulgm']:+.1f}%",
            common.fmt_time(r["ulgm_align"]["median_s"]),
            f"{r['overhead_percent']['ulgm_align']:+.1f}%",
            f"{common.fmt_time(r['extras']['median_s'])} ({r['overhead_percent']['extras']:.1f}%)",
        ]
        for r in results
    ]
    return {
        "title": "Training step of MultiTaskMSA (MOSI shapes, features mode)",
        "columns": [
            "B",
            "bare",
            "bare IQR",
            "+ULGM",
            "overhead",
            "+ULGM+V-A",
            "overhead",
            "added work alone",
        ],
        "rows": rows,
        "note": "Medians of whole steps (forward, loss, backward, Adam, ULGM step); overheads "
        "are relative to bare, and differences within bare's IQR are noise. 'Added work "
        "alone' times the ULGM and V-A alignment computations on fixed outputs (percentage of "
        "bare). Target: overhead ≤ 5%.",
    }


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = common.subplots()
    ax = axes[0][0]
    positions = list(range(len(results)))
    for offset, name in zip((-0.3, -0.1, 0.1, 0.3), VARIANTS, strict=True):
        times = [r[name]["median_s"] * 1e3 for r in results]
        errors = [r[name]["iqr_s"] * 1e3 / 2 for r in results]
        ax.bar([p + offset for p in positions], times, width=0.2, yerr=errors, label=name)
    ax.set_xticks(positions, [f"B = {r['batch_size']}" for r in results])
    ax.set(ylabel="training step (ms), bars ± IQR/2")
    ax.legend()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = common.parse_args(__doc__, argv, min_run_time=0.5, rounds=5)
    batches = QUICK_BATCHES if args.quick else BATCHES
    results = [run_case(b, args) for b in batches]
    if args.plot:
        plot(results, args.plot)
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    return common.report(
        "train_step",
        args,
        results,
        summary(results),
        batch_sizes=list(batches),
        sequence_lengths=lengths,
        feature_dims=list(FEATURE_DIMS),
    )


if __name__ == "__main__":
    main()
