"""``deepalign floors``: ridge-regression floors of an MSA dataset.

For each modality set, a ridge regression on the mean-pooled (over valid time steps),
train-standardised features is fitted on train, its penalty chosen on valid, and scored on test
with the field's metrics: what a linear model on pooled features reaches. A model worth
reporting beats every row. Without a dataset file it uses the synthetic generator, and says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deepalign.cli.data import QUICK_BATCH_SIZE, QUICK_BATCHES, SYNTHETIC_TRAIN, load_data
from deepalign.cli.data import warn_synthetic as _warn_synthetic
from deepalign.cli.reproduce import _describe
from deepalign.data import MMSADataset
from deepalign.metrics import DATASETS, msa_metrics

__all__ = ["floor", "register", "run"]

EXAMPLES = """examples:
  deepalign floors                   # synthetic MOSI, full size
  deepalign floors --quick           # seconds: a smoke run
  deepalign floors --data mosi_bclstm.pkl
"""

SETS = {
    "text": ("text",),
    "audio": ("audio",),
    "vision": ("vision",),
    "audio + vision": ("audio", "vision"),
    "text + audio + vision": ("text", "audio", "vision"),
}
PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _pooled(split: MMSADataset, modality: str) -> np.ndarray:
    """Mean over each sample's valid time steps (text features: over the text length)."""
    x = split.tensors[modality].double()
    lengths = split.tensors[f"{modality}_lengths"].clamp(1, x.shape[1])
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return ((x * mask[..., None]).sum(1) / lengths[:, None]).numpy()


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Weights (with a final bias) of the ridge regression, by its normal equations."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    regulariser = penalty * np.eye(x1.shape[1])
    regulariser[-1, -1] = 0.0
    return np.linalg.solve(x1.T @ x1 + regulariser, x1.T @ y)


def _predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def floor(splits: dict[str, MMSADataset], modalities: tuple[str, ...], dataset: str) -> dict:
    """The ridge floor of ``modalities``: its test metrics (``dataset``'s) and the penalty
    chosen on valid among ``PENALTIES``."""
    feats = {s: np.hstack([_pooled(splits[s], m) for m in modalities]) for s in splits}
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-8
    x = {s: (f - mean) / std for s, f in feats.items()}
    y = {s: splits[s].labels["fusion"].double().numpy() for s in splits}
    errors = {p: np.abs(_predict(x["valid"], _ridge(x["train"], y["train"], p)) - y["valid"]).mean()
              for p in PENALTIES}  # fmt: skip
    best = min(errors, key=errors.get)
    prediction = _predict(x["test"], _ridge(x["train"], y["train"], best))
    return {"penalty": best, **msa_metrics(prediction, y["test"], dataset=dataset)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``floors`` subcommand."""
    parser = subparsers.add_parser(
        "floors",
        help="ridge-regression floors of a dataset (what a linear model on pooled features "
        "reaches)",
        description=_describe(__doc__),
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="MMSA pickle; None: $DEEPALIGN_DATA/<DATASET>/Processed/unaligned_*.pkl when it "
        "exists, synthetic data otherwise (with a notice)",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, default="mosi", help="the dataset (its metrics)"
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"synthetic train size (None: {SYNTHETIC_TRAIN})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"seconds: tiny synthetic data, or {QUICK_BATCHES * QUICK_BATCH_SIZE} samples "
        "per split of --data",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (None: runs/ridge_floors/<dataset>-<data>)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``deepalign floors``: print the table, write ``table.md`` and ``floors.json``."""
    data = load_data(args, args.dataset)
    if data.synthetic:
        _warn_synthetic("tiny, --quick" if args.quick else f"the {args.dataset.upper()} generator")
    train_dims = data.splits["train"].dims
    sets = {name: mods for name, mods in SETS.items() if all(m in train_dims for m in mods)}
    rows = {name: floor(data.splits, mods, args.dataset) for name, mods in sets.items()}
    key = "Mult_acc_2" if args.dataset == "sims" else "Has0_acc_2"
    lines = [
        f"Ridge floors, {args.dataset.upper()} — {data.source}, test split",
        "",
        f"| features | MAE | Corr | {key} | ridge penalty |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['MAE']:.3f} | {m['Corr']:.3f} | {100 * m[key]:.1f} | "
                     f"{m['penalty']:g} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    out = args.out or Path("runs") / "ridge_floors" / f"{args.dataset}-{data.tag}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    record = {
        "dataset": args.dataset,
        "source": data.source,
        "synthetic": data.synthetic,
        "data": data.data_id,
        "rows": rows,
    }
    (out / "floors.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Wrote table.md and floors.json to {out}")
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's examples kept as written."""
