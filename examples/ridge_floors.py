"""Ridge-regression floors of an MSA dataset: what a linear model on pooled features reaches.

For each modality set, a ridge regression on the mean-pooled (over valid time steps),
train-standardised features is fitted on train, its penalty chosen on valid, and scored on test
with the field's metrics. A model worth reporting beats every row. Without --data it uses the
synthetic MOSI generator (the table in the docs' data page comes from this script):

    python examples/ridge_floors.py                   # synthetic MOSI, full size
    python examples/ridge_floors.py --data ../shared/data/mosi_bclstm/mosi_bclstm.pkl
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from deepalign.data import MMSADataset, load_mmsa, make_synthetic
from deepalign.metrics import msa_metrics

SETS = {
    "text": ("text",),
    "audio": ("audio",),
    "vision": ("vision",),
    "audio + vision": ("audio", "vision"),
    "text + audio + vision": ("text", "audio", "vision"),
}
PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def pooled(split: MMSADataset, modality: str) -> np.ndarray:
    """Mean over each sample's valid time steps (text features: over the text length)."""
    x = split.tensors[modality].double()
    lengths = split.tensors[f"{modality}_lengths"].clamp(1, x.shape[1])
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return ((x * mask[..., None]).sum(1) / lengths[:, None]).numpy()


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Weights (with a final bias) of the ridge regression, by its normal equations."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    regulariser = penalty * np.eye(x1.shape[1])
    regulariser[-1, -1] = 0.0
    return np.linalg.solve(x1.T @ x1 + regulariser, x1.T @ y)


def predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def floor(splits: dict[str, MMSADataset], modalities: tuple[str, ...], dataset: str) -> dict:
    feats = {s: np.hstack([pooled(splits[s], m) for m in modalities]) for s in splits}
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-8
    x = {s: (f - mean) / std for s, f in feats.items()}
    y = {s: splits[s].labels["M"].double().numpy() for s in splits}
    errors = {p: np.abs(predict(x["valid"], ridge(x["train"], y["train"], p)) - y["valid"]).mean()
              for p in PENALTIES}  # fmt: skip
    best = min(errors, key=errors.get)
    prediction = predict(x["test"], ridge(x["train"], y["train"], best))
    return {"penalty": best, **msa_metrics(prediction, y["test"], dataset=dataset)}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="MMSA pickle (default: synthetic)")
    parser.add_argument("--dataset", choices=("mosi", "mosei", "sims"), default="mosi")
    parser.add_argument("--n-train", type=int, default=None, help="synthetic train size")
    args = parser.parse_args(argv)
    if args.data is None:
        splits = make_synthetic(args.dataset, n_train=args.n_train, seed=0)
    else:
        splits = load_mmsa(args.data)
    rows = {name: floor(splits, mods, args.dataset) for name, mods in SETS.items()}
    key = "Mult_acc_2" if args.dataset == "sims" else "Has0_acc_2"
    print(f"| features | MAE | Corr | {key} | ridge penalty |\n| --- | --- | --- | --- | --- |")
    for name, m in rows.items():
        print(f"| {name} | {m['MAE']:.3f} | {m['Corr']:.3f} | {100 * m[key]:.1f} | "
              f"{m['penalty']:g} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
