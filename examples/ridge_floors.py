"""Ridge-regression floors of an MSA dataset: what a linear model on pooled features reaches.

For each modality set, a ridge regression on the mean-pooled (over valid time steps),
train-standardised features is fitted on train, its penalty chosen on valid, and scored on test
with the field's metrics. A model worth reporting beats every row. Without --data it uses the
synthetic generator, and says so (the table in the docs' data page comes from this script):

    python examples/ridge_floors.py                   # synthetic MOSI, full size
    python examples/ridge_floors.py --quick           # seconds: a smoke run
    python examples/ridge_floors.py --data ../shared/data/mosi_bclstm/mosi_bclstm.pkl
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deepalign.data import MMSADataset
from deepalign.experiments import ConfigError, load_data, warn_synthetic
from deepalign.metrics import DATASETS, msa_metrics

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
    y = {s: splits[s].labels["fusion"].double().numpy() for s in splits}
    errors = {p: np.abs(predict(x["valid"], ridge(x["train"], y["train"], p)) - y["valid"]).mean()
              for p in PENALTIES}  # fmt: skip
    best = min(errors, key=errors.get)
    prediction = predict(x["test"], ridge(x["train"], y["train"], best))
    return {"penalty": best, **msa_metrics(prediction, y["test"], dataset=dataset)}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="MMSA pickle (default: synthetic, with a warning)"
    )
    parser.add_argument("--dataset", choices=DATASETS, default="mosi")
    parser.add_argument("--n-train", type=int, default=None, help="synthetic train size")
    parser.add_argument(
        "--quick", action="store_true", help="seconds: tiny synthetic data, or 64 samples per split"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/ridge_floors/...)"
    )
    args = parser.parse_args(argv)
    try:
        data = load_data(args, args.dataset)
    except ConfigError as error:
        parser.error(str(error))
    if data.synthetic:
        warn_synthetic("tiny, --quick" if args.quick else f"the {args.dataset.upper()} generator")
    sets = {name: mods for name, mods in SETS.items() if all(m in data.splits["train"].dims
                                                             for m in mods)}  # fmt: skip
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
    record = {"dataset": args.dataset, "source": data.source, "data": data.data_id, "rows": rows}
    (out / "floors.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Wrote table.md and floors.json to {out}")
    return rows


if __name__ == "__main__":
    main()
