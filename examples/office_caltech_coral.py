"""CORAL on Office-Caltech10 (SURF): the closed-form maps of coral_transform, and Deep CORAL.

Linear part, all 12 shifts (source -> target among amazon, webcam, dslr, caltech10). Protocol:
ALL source images, labelled, train a linear SVM (sklearn LinearSVC, C = 1, fixed in advance);
target accuracy on all target images, whose labels are used for scoring only. Features are
pre-processed as the data's README says: per domain, each histogram divided by its sum (L1),
then each feature z-scored with that domain's mean and population standard deviation. The
source features enter the SVM (a) as they are, (b) mapped by coral_transform's default map
(CORAL's, with CORAL's regularisation C + I) and (c) by its optimal-transport map (same C + I).

Deep part (--deep): an MLP 800 -> 128 -> 64 (features) -> 10 trained on labelled source batches
with a covariance alignment loss on the 64-d features towards unlabelled target batches
(Deep CORAL): source-only vs the plug-in vs the unbiased estimator, at batch sizes 8, 16, 32,
64, the same seeds (same initialisation and batch order) for every column. The alignment
weight and the number of epochs are fixed below, never chosen on target labels.

    python examples/office_caltech_coral.py                 # the 12-shift table
    python examples/office_caltech_coral.py --deep          # and the Deep CORAL sweep
    python examples/office_caltech_coral.py --quick --deep  # a smoke run (two shifts)
    python examples/office_caltech_coral.py --data PATH/office_caltech10_surf.npz

Needs scikit-learn (deepalign[dev]). Writes results.json and table.md to --out (default
runs/office_caltech/) and prints where.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import deepalign
from deepalign import functional as F

DOMAINS = {"amazon": "A", "webcam": "W", "dslr": "D", "caltech10": "C"}
SHIFTS = [(s, t) for s in DOMAINS for t in DOMAINS if s != t]
QUICK_SHIFTS = [("dslr", "webcam"), ("webcam", "dslr")]
SVM_C = 1.0  # LinearSVC's default, fixed in advance (no target labels to tune it on)
REG = 1.0  # CORAL's regularisation of both covariances, for z-scored features
MAPS = {"none": None, "coral": "coral", "ot": "ot"}
MAP_TITLES = {"none": "no adaptation", "coral": "CORAL map", "ot": "OT map"}

# Deep CORAL, fixed before any run: Adam(lr 1e-3), EPOCHS passes over the source, alignment
# weight ALIGN_WEIGHT on θ = ‖C_s − C_t‖²_F / 4d² (Deep CORAL's normalisation). The weight follows
# Deep CORAL's rule, the two losses about equal at the end of training, read off training losses
# only (plug-in, batch 32, seed 0, the four shifts below; no target label): at 1e3 the last
# epoch's cross-entropy was 0.06-0.37 and weight·θ 0.07-0.24 (docs/domain_adaptation.rst).
HIDDEN, FEATURES = 128, 64
EPOCHS = 20
LEARNING_RATE = 1e-3
ALIGN_WEIGHT = 1e3
BATCH_SIZES = (8, 16, 32, 64)
SEEDS = (0, 1, 2)
DEEP_SHIFTS = [
    ("amazon", "webcam"),
    ("dslr", "webcam"),
    ("webcam", "dslr"),
    ("caltech10", "amazon"),
]


def default_data_path() -> Path:
    """``$DEEPALIGN_SHARED/data/...`` if set, else ``../shared/data/...`` beside the repo."""
    shared = os.environ.get("DEEPALIGN_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / "data" / "office_caltech10" / "office_caltech10_surf.npz"


def preprocess(counts: np.ndarray) -> np.ndarray:
    """L1-normalise each histogram, then z-score each feature within the domain (population
    std; a feature constant in the domain stays 0)."""
    x = counts.astype(np.float64)
    x = x / np.maximum(x.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def load(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as z:
        return {d: (preprocess(z[f"{d}_X"]), z[f"{d}_y"].astype(np.int64)) for d in DOMAINS}


def shift_name(source: str, target: str) -> str:
    return f"{DOMAINS[source]}→{DOMAINS[target]}"


# ----------------------------------------------------------------------------- linear part


def svm_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-converged SVM is an error, not a number
        model = LinearSVC(C=SVM_C, dual=True, max_iter=20_000, random_state=0)
        model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def linear_shift(data, source: str, target: str, reg: float) -> dict[str, float]:
    (x_s, y_s), (x_t, y_t) = data[source], data[target]
    c_s, c_t = F.covariance(torch.from_numpy(x_s)), F.covariance(torch.from_numpy(x_t))
    accuracy = {}
    for key, method in MAPS.items():
        mapped = x_s
        if method is not None:
            a = F.coral_transform(c_s, c_t, method=method, reg=reg).numpy()
            mapped = x_s @ a
        accuracy[key] = svm_accuracy(mapped, y_s, x_t, y_t)
    return accuracy


def linear_table(rows: list[dict]) -> str:
    keys = list(MAPS)
    lines = [
        "| shift | " + " | ".join(MAP_TITLES[k] for k in keys) + " |",
        "| --- |" + " ---: |" * len(keys),
    ]
    for row in rows:
        cells = [f"{100 * row['accuracy'][k]:.1f}" for k in keys]
        lines.append(f"| {row['shift']} | " + " | ".join(cells) + " |")
    means = [100 * np.mean([r["accuracy"][k] for r in rows]) for k in keys]
    lines.append(f"| mean of {len(rows)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- deep part


def alignment_loss(f_s: torch.Tensor, f_t: torch.Tensor, estimator: str) -> torch.Tensor:
    """Deep CORAL's loss; source and target batches are independent draws (``paired=False``:
    the unbiased estimator's lower-variance form; the plug-in ignores it)."""
    return F.covariance_alignment_loss(f_s, f_t, estimator=estimator, paired=False)


def scale(features: torch.Tensor) -> float:
    """tr(C)/d of a set of features: their mean variance."""
    return float(torch.diagonal(F.covariance(features.double())).mean())


def train_deep(
    data, source, target, *, estimator, batch_size, seed, epochs, weight=ALIGN_WEIGHT
) -> dict:
    """One Deep CORAL run; ``estimator=None`` is source-only (its θ is logged, not trained
    on). The seed fixes the initialisation and every batch, so all estimators see the same
    batches. Target labels are used once, for the returned accuracy."""
    (x_s, y_s), (x_t, y_t) = data[source], data[target]
    x_s, x_t = torch.from_numpy(x_s).float(), torch.from_numpy(x_t).float()
    y_s, y_t = torch.from_numpy(y_s), torch.from_numpy(y_t)
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(x_s.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, FEATURES))
    head = nn.Linear(FEATURES, 10)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epochs):
        last_ce, last_theta = [], []  # the last epoch's training losses
        for index in torch.randperm(len(x_s), generator=order).split(batch_size):
            if len(index) < batch_size:  # a full batch: the estimators' sampling floors differ
                index = torch.randperm(len(x_s), generator=order)[:batch_size]
            target_index = torch.randperm(len(x_t), generator=order)[:batch_size]
            f_s, f_t = encoder(x_s[index]), encoder(x_t[target_index])
            ce = nn.functional.cross_entropy(head(f_s), y_s[index])
            if estimator is None:
                with torch.no_grad():
                    theta = alignment_loss(f_s, f_t, "plugin")
                loss = ce
            else:
                theta = alignment_loss(f_s, f_t, estimator)
                loss = ce + weight * theta
            last_ce.append(float(ce.detach()))
            last_theta.append(float(theta.detach()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        f_s, f_t = encoder(x_s), encoder(x_t)
        accuracy = float((head(f_t).argmax(1) == y_t).float().mean())
        theta_all = float(F.covariance_alignment_loss(f_s.double(), f_t.double()))
    return {
        "accuracy": accuracy,
        "scale_source": scale(f_s),
        "scale_target": scale(f_t),
        "theta_all_images": theta_all,
        "last_epoch_cross_entropy": float(np.mean(last_ce)),
        "last_epoch_theta": float(np.mean(last_theta)),
    }


def deep_sweep(data, shifts, batch_sizes, seeds, epochs) -> dict:
    estimators: list[str | None] = [None, "plugin", "unbiased"]
    runs = []
    for source, target in shifts:
        for batch_size in batch_sizes:
            for estimator in estimators:
                for seed in seeds:
                    result = train_deep(
                        data,
                        source,
                        target,
                        estimator=estimator,
                        batch_size=batch_size,
                        seed=seed,
                        epochs=epochs,
                    )
                    runs.append(
                        {
                            "shift": shift_name(source, target),
                            "batch_size": batch_size,
                            "estimator": estimator or "source-only",
                            "seed": seed,
                            **result,
                        }
                    )
                    print(
                        f"  {runs[-1]['shift']} B={batch_size:<3d} {runs[-1]['estimator']:<11s} "
                        f"seed {seed}: target acc {100 * result['accuracy']:.1f}, "
                        f"tr(C)/d source {result['scale_source']:.3f}",
                        flush=True,
                    )
    return {
        "estimators": [e or "source-only" for e in estimators],
        "runs": runs,
    }


def _mean_std(values: list[float]) -> str:
    mean = np.mean(values)
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def deep_table(sweep: dict) -> str:
    estimators = ["source-only", "plugin", "unbiased"]
    header = "| batch | " + " | ".join(f"{e} acc | {e} tr(C)/d" for e in estimators) + " |"
    lines = [header, "| ---: |" + " ---: | ---: |" * len(estimators)]
    runs = sweep["runs"]
    for batch_size in sorted({r["batch_size"] for r in runs}):
        cells = []
        for estimator in estimators:
            chosen = [
                r for r in runs if r["batch_size"] == batch_size and r["estimator"] == estimator
            ]
            if not chosen:
                cells += ["n/a", "n/a"]
                continue
            # per seed: mean over shifts; then mean ± std over seeds
            seeds = sorted({r["seed"] for r in chosen})
            acc = [100 * np.mean([r["accuracy"] for r in chosen if r["seed"] == s]) for s in seeds]
            source = np.median([r["scale_source"] for r in chosen])
            target = np.median([r["scale_target"] for r in chosen])
            cells += [_mean_std(acc), f"{source:.3g} / {target:.3g}"]
        lines.append(f"| {batch_size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def versions() -> dict[str, str]:
    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "deepalign": deepalign.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help=f"the .npz file (default {default_data_path()})"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/office_caltech"))
    parser.add_argument("--quick", action="store_true", help="two shifts (D→W, W→D), a smoke run")
    parser.add_argument("--reg", type=float, default=REG, help="λ of C + λI (CORAL: 1)")
    parser.add_argument("--deep", action="store_true", help="also the Deep CORAL sweep")
    parser.add_argument("--no-linear", action="store_true", help="skip the linear table")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="Deep CORAL epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.data or default_data_path()
    if not path.is_file():
        parser.error(f"--data: no file at {path} (the Office-Caltech10 SURF .npz)")
    data = load(path)
    shifts = QUICK_SHIFTS if args.quick else SHIFTS
    protocol = (
        "all source images (labelled) train the classifier; all target images score it; "
        "per-domain L1 then z-score (population std)"
    )
    print(f"Office-Caltech10 SURF, {path}\nprotocol: {protocol}")
    if not args.no_linear:
        print(
            f"linear SVM (LinearSVC, C={SVM_C:g}); "
            f"maps: coral_transform(C_s, C_t, reg={args.reg:g})"
        )
    rows = []
    for source, target in [] if args.no_linear else shifts:
        accuracy = linear_shift(data, source, target, args.reg)
        rows.append({"shift": shift_name(source, target), "accuracy": accuracy})
        cells = ", ".join(f"{MAP_TITLES[k]} {100 * v:.1f}" for k, v in accuracy.items())
        print(f"  {rows[-1]['shift']}: {cells}", flush=True)
    table = ""
    if rows:
        table = "Target accuracy (%), linear SVM on all source images\n\n" + linear_table(rows)
    record = {
        "data": str(path),
        "protocol": protocol,
        "classifier": f"sklearn LinearSVC(C={SVM_C:g}, dual=True, max_iter=20000, random_state=0)",
        "reg": args.reg,
        "linear": rows,
        "mean": {k: float(np.mean([r["accuracy"][k] for r in rows])) for k in MAPS} if rows else {},
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    if args.deep:
        deep_shifts = QUICK_SHIFTS[:1] if args.quick else DEEP_SHIFTS
        epochs = 2 if args.quick else args.epochs
        seeds = args.seeds[:1] if args.quick else args.seeds
        print(
            f"Deep CORAL: MLP 800-{HIDDEN}-{FEATURES}-10, Adam lr {LEARNING_RATE:g}, "
            f"{epochs} epochs, weight {ALIGN_WEIGHT:g}, shifts "
            + ", ".join(shift_name(*s) for s in deep_shifts)
        )
        sweep = deep_sweep(data, deep_shifts, args.batch_sizes, seeds, epochs)
        sweep.update(
            shifts=[shift_name(*s) for s in deep_shifts],
            epochs=epochs,
            align_weight=ALIGN_WEIGHT,
            learning_rate=LEARNING_RATE,
            architecture=f"800-{HIDDEN}-{FEATURES}-10, ReLU, features = the {FEATURES}-d layer",
        )
        record["deep"] = sweep
        title = (
            f"Deep CORAL, target accuracy (%) averaged over {len(deep_shifts)} shifts "
            f"(mean ± std over {len(seeds)} seeds) and the features' tr(C)/d on all source / "
            "target images (median over shifts and seeds)"
        )
        table = "\n\n".join(filter(None, [table, title, deep_table(sweep)]))
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    (args.out / "table.md").write_text(table + "\n")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'table.md'}")
    return record


if __name__ == "__main__":
    main()
