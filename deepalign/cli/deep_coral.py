"""Deep CORAL: a positive control (two moons, rotated target) and Office-Caltech10 (SURF).

Two sub-modes of the ``deep-coral`` job:

``control``
    Two moons; the target domain is the source rotated about the moons' centre. An MLP
    2 -> 64 -> 64 (features) -> 2 is trained on labelled source batches, with and without the
    alignment loss on the 64-d features, both estimators, on the same seeds and batches.
``office-caltech``
    Office-Caltech10 SURF, pre-processed as its README says (per domain: L1 per histogram,
    then z-score with the domain's population std). An MLP 800 -> 256 (hidden, ReLU) -> 10
    (logits), the loss on the hidden features or on the logits, a log-spaced grid of the weight
    λ, both estimators, one or more batch sizes; every cell of one (shift, seed) has the same
    initialisation, the same source/validation split and the same source and target batches.
    Each trained model is scored by label-free criteria (skada's PredictionEntropyScorer,
    SoftNeighborhoodDensity and DeepEmbeddedValidation) that see the held-out source split and
    the unlabelled target only; target labels give the reported accuracy and nothing else.
``report``
    Gathers the cells of a run folder into the summary JSON, the per-cell CSV and the plot.

Every cell is one JSON file under ``<out>/cells/`` written atomically (temporary file, fsync,
``os.replace``); with ``--resume`` finished cells are skipped, so a killed run continues.
Runnable as ``python -m deepalign.cli.deep_coral`` and registered as the ``deep-coral`` job.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deepalign
from deepalign import functional as F
from deepalign.stats import paired_difference

DOMAINS = {"amazon": "A", "webcam": "W", "dslr": "D", "caltech10": "C"}
SHIFTS = [(s, t) for s in DOMAINS for t in DOMAINS if s != t]
ESTIMATORS = ("plugin", "unbiased")
PLACEMENTS = ("hidden", "logits")
LAMBDAS = tuple(10.0**k for k in range(-3, 4))  # 1e-3 ... 1e3, 7 values
CRITERIA = ("entropy", "snd", "dev")
CRITERION_TITLES = {
    "entropy": "prediction entropy (MECA)",
    "snd": "soft neighbourhood density",
    "dev": "deep embedded validation",
}
DEFAULT_DATA = "/work/shared/data/office_caltech10/office_caltech10_surf.npz"
HIDDEN = 256
LEARNING_RATE = 1e-3
VALIDATION_SHARE = 0.25


def shift_name(source: str, target: str) -> str:
    """``"A→W"`` for ``("amazon", "webcam")``."""
    return f"{DOMAINS[source]}→{DOMAINS[target]}"


# ------------------------------------------------------------------------------ file helpers


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, record: dict) -> None:
    """:func:`atomic_write_text` of ``record`` as indented JSON."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=True) + "\n")


def cell_key(cell: dict) -> str:
    """File name stem of a cell: shift, batch size, seed, and the method."""
    shift = cell["shift"].replace("→", "-")
    head = f"{shift}_b{cell['batch_size']}_s{cell['seed']}"
    if cell["estimator"] == "source-only":
        return f"{head}_source-only"
    return f"{head}_{cell['placement']}_{cell['estimator']}_lam{cell['weight']:.0e}"


# --------------------------------------------------------------------------------- the data


def preprocess(counts: np.ndarray) -> np.ndarray:
    """The release's pre-processing of one domain: L1 per histogram, then z-score per feature
    with the domain's mean and population std (MATLAB ``zscore(x, 1)``; a constant feature
    gets std 1, as MATLAB's ``zscore`` does)."""
    x = counts.astype(np.float64)
    x = x / x.sum(axis=1, keepdims=True)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return ((x - x.mean(axis=0)) / std).astype(np.float32)


def load_office_caltech(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Domain -> (pre-processed features, labels) of the SURF release, as tensors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: expected the office_caltech10_surf.npz file, got {path}")
    with np.load(path, allow_pickle=False) as z:
        return {
            d: (torch.from_numpy(preprocess(z[f"{d}_X"])), torch.from_numpy(z[f"{d}_y"]))
            for d in DOMAINS
        }


def two_moons(
    n: int, *, angle_deg: float, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half circles (scikit-learn's ``make_moons``) rotated by ``angle_deg``
    about their centre (0.5, 0.25)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([0.5, 0.25])
    x = (x - centre) @ rot.T + centre
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------- the model


class MLP(nn.Module):
    """``in -> hidden (ReLU) [-> hidden (ReLU)] -> classes``; returns (hidden, logits)."""

    def __init__(self, d_in: int, hidden: int, classes: int, *, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, self.head(h)


class TorchScorerAdapter:
    """A trained :class:`MLP` seen as skada expects a deep estimator: ``predict_proba`` (softmax
    of the logits), ``predict_features`` (the hidden layer, for DEV's domain classifier) and
    ``module_.layer_name`` (set, so that DEV uses the features). Inputs are numpy arrays."""

    class _Module:
        layer_name = "hidden"

    def __init__(self, model: MLP) -> None:
        self.model = model
        self.module_ = self._Module()

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray, **_: Any) -> np.ndarray:
        _, logits = self.model(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        return torch.softmax(logits.double(), dim=1).numpy()

    @torch.no_grad()
    def predict_features(self, x: np.ndarray, **_: Any) -> np.ndarray:
        hidden, _ = self.model(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        return hidden.double().numpy()


def _column_log_loss(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy as an ``(n, 1)`` column. skada 0.6.0's DEV multiplies its
    ``(n, 1)`` importance weights by its default loss's ``(n,)`` vector, which broadcasts to an
    ``(n, n)`` matrix and changes the control variate of You et al. (2019, Eq. 6); a column loss
    keeps the paper's estimator (tests/test_deep_coral.py checks it against a direct one)."""
    p = np.clip(proba[np.arange(len(y)), np.asarray(y, dtype=np.int64)], 1e-15, 1 - 1e-15)
    return -np.log(p)[:, None]


def label_free_scores(
    model: MLP,
    x_source_val: torch.Tensor,
    y_source_val: torch.Tensor,
    x_target: torch.Tensor,
    *,
    seed: int,
) -> dict[str, float]:
    """The three label-free criteria of a trained model, from skada's scorers, each oriented so
    that higher is better (skada's sign); ``dev`` is DEV with a column loss (the paper's
    estimator), ``dev_skada`` skada's default (see :func:`_column_log_loss`). Target labels
    are not an argument: skada receives ``-1`` (its "no label") for every target row.
    DEV's source part is the held-out source split (never trained on); skada splits it again
    2:1 for its domain classifier."""
    from skada.metrics import (
        DeepEmbeddedValidation,
        PredictionEntropyScorer,
        SoftNeighborhoodDensity,
    )

    est = TorchScorerAdapter(model)
    xs, xt = x_source_val.numpy(), x_target.numpy()
    x = np.concatenate([xs, xt]).astype(np.float64)
    y = np.concatenate([y_source_val.numpy(), -np.ones(len(xt), dtype=np.int64)])
    domain = np.concatenate([np.ones(len(xs), dtype=np.int64), -np.ones(len(xt), dtype=np.int64)])
    scorers = {
        "entropy": PredictionEntropyScorer(),
        "snd": SoftNeighborhoodDensity(),
        "dev": DeepEmbeddedValidation(random_state=seed, loss_func=_column_log_loss),
        "dev_skada": DeepEmbeddedValidation(random_state=seed),
    }
    return {name: float(s(est, x, y, sample_domain=domain)) for name, s in scorers.items()}


# ------------------------------------------------------------------------------- training


def batch_plan(
    n_source: int, n_target: int, *, batch_size: int, steps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (steps, batch_size) source and target row indices of one seed: epochs of a random
    permutation, cut in full batches (a last partial batch is dropped), for as many steps as
    asked. The same plan serves every cell of that seed."""
    gen = torch.Generator().manual_seed(10_000 + seed)

    def draw(n: int) -> torch.Tensor:
        per_epoch = n // batch_size
        if per_epoch == 0:
            raise ValueError(
                f"batch_size: expected at most {n} (rows of a domain), got {batch_size}"
            )
        epochs = -(-steps // per_epoch)
        idx = torch.cat(
            [torch.randperm(n, generator=gen)[: per_epoch * batch_size] for _ in range(epochs)]
        )
        return idx[: steps * batch_size].view(steps, batch_size)

    return draw(n_source), draw(n_target)


def train_cell(
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_t: torch.Tensor,
    *,
    estimator: str | None,
    placement: str,
    weight: float,
    batch_size: int,
    steps: int,
    seed: int,
    hidden: int,
    depth: int = 1,
    lr: float = LEARNING_RATE,
) -> tuple[MLP, dict]:
    """Train one model; ``estimator=None`` is source-only. Target rows enter only through the
    alignment loss (no target label is an argument). Returns the model and the training log
    (the last 10 % of steps' mean cross-entropy and mean plug-in θ at the placement)."""
    if estimator is not None and estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS} or None, got {estimator!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
    torch.manual_seed(seed)
    model = MLP(x_s.shape[1], hidden, int(y_s.max()) + 1, depth=depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    src, tgt = batch_plan(len(x_s), len(x_t), batch_size=batch_size, steps=steps, seed=seed)
    tail = max(1, steps // 10)
    ce_log, theta_log = [], []
    for step in range(steps):
        h_s, z_s = model(x_s[src[step]])
        ce = nn.functional.cross_entropy(z_s, y_s[src[step]])
        loss = ce
        if estimator is not None:
            h_t, z_t = model(x_t[tgt[step]])
            a, b = (h_s, h_t) if placement == "hidden" else (z_s, z_t)
            theta = F.covariance_alignment_loss(a, b, estimator=estimator, paired=False)
            loss = ce + weight * theta
            if step >= steps - tail:
                theta_log.append(float(theta.detach()))
        if step >= steps - tail:
            ce_log.append(float(ce.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    log = {
        "train_cross_entropy_tail": float(np.mean(ce_log)),
        "train_theta_tail": float(np.mean(theta_log)) if theta_log else float("nan"),
    }
    return model.eval(), log


@torch.no_grad()
def evaluate(model: MLP, x_s: torch.Tensor, x_t: torch.Tensor, y_t: torch.Tensor) -> dict:
    """Target accuracy and the feature-scale diagnostics (float64, all rows) at both
    placements: tr(C)/d of source and target, plug-in and unbiased θ."""
    h_s, z_s = model(x_s)
    h_t, z_t = model(x_t)
    out = {"target_accuracy": float((z_t.argmax(1) == y_t).double().mean())}
    for name, a, b in (("hidden", h_s, h_t), ("logits", z_s, z_t)):
        diag = F.alignment_diagnostics(a.double(), b.double(), paired=False, method="dense")
        out[f"{name}_scale_source"] = float(diag.scale_a)
        out[f"{name}_scale_target"] = float(diag.scale_b)
        out[f"{name}_theta_plugin"] = float(diag.plugin)
        out[f"{name}_theta_unbiased"] = float(diag.unbiased)
    return out


def source_split(n: int, *, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) row indices of the source, seeded; the same for every cell."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(20_000 + seed))
    n_val = max(4, round(share * n))
    return perm[n_val:], perm[:n_val]


def run_cell(
    data: dict,
    cell: dict,
    *,
    steps: int,
    hidden: int,
    depth: int,
    score: bool,
    val_share: float,
) -> dict:
    """Train, score and evaluate one cell; returns its record (the cell plus results)."""
    (x_s, y_s), (x_t, y_t) = data[cell["source"]], data[cell["target"]]
    tr, va = source_split(len(x_s), share=val_share, seed=cell["seed"])
    start = time.perf_counter()
    estimator = None if cell["estimator"] == "source-only" else cell["estimator"]
    model, log = train_cell(
        x_s[tr],
        y_s[tr],
        x_t,
        estimator=estimator,
        placement=cell.get("placement") or "hidden",
        weight=cell.get("weight") or 0.0,
        batch_size=cell["batch_size"],
        steps=steps,
        seed=cell["seed"],
        hidden=hidden,
        depth=depth,
    )
    train_s = time.perf_counter() - start
    record = {**cell, **log, **evaluate(model, x_s[tr], x_t, y_t)}
    with torch.no_grad():
        record["source_val_accuracy"] = float(
            (model(x_s[va])[1].argmax(1) == y_s[va]).double().mean()
        )
    if score:
        record.update(
            {
                f"score_{k}": v
                for k, v in label_free_scores(
                    model, x_s[va], y_s[va], x_t, seed=cell["seed"]
                ).items()
            }
        )
    record["train_seconds"] = train_s
    record["cell_seconds"] = time.perf_counter() - start
    record["steps"] = steps
    return record


def run_cells(
    data: dict,
    cells: Sequence[dict],
    out: Path,
    *,
    resume: bool,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> list[dict]:
    """Run every cell not already on disk (with ``resume``) and write each atomically."""
    folder = out / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, cell in enumerate(cells):
        path = folder / f"{cell_key(cell)}.json"
        if resume and path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        if path.is_file() and not resume:
            raise ValueError(
                f"--resume: {path} exists; pass --resume to continue the run or use a new --out"
            )
        record = run_cell(data, cell, **kwargs)
        atomic_write_json(path, record)
        records.append(record)
        log(
            f"[{i + 1}/{len(cells)}] {cell_key(cell)}: "
            f"target acc {100 * record['target_accuracy']:.1f} ({record['cell_seconds']:.1f} s)"
        )
    return records


# ---------------------------------------------------------------------------------- analysis


def select(records: Sequence[dict], criterion: str) -> dict[tuple, dict]:
    """Per (shift, seed, batch size, placement, estimator): the λ cell with the highest
    ``score_<criterion>`` (``criterion="oracle"``: the highest target accuracy, an oracle bound
    no user has). Ties go to the smaller λ. Source-only cells are not candidates."""
    key_name = "target_accuracy" if criterion == "oracle" else f"score_{criterion}"
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["estimator"] == "source-only":
            continue
        groups.setdefault(
            (r["shift"], r["seed"], r["batch_size"], r["placement"], r["estimator"]), []
        ).append(r)
    picks = {}
    for key, cells in groups.items():
        cells = sorted(cells, key=lambda r: r["weight"])
        values = [r[key_name] for r in cells]
        if any(not math.isfinite(v) for v in values):
            finite = [i for i, v in enumerate(values) if math.isfinite(v)]
            if not finite:
                continue
            best = max(finite, key=lambda i: values[i])
        else:
            best = int(np.argmax(values))
        picks[key] = cells[best]
    return picks


def _pd(row: Sequence[float], ref: Sequence[float]) -> dict:
    d = paired_difference(row, ref)
    return {
        "n": d.n,
        "mean": d.mean,
        "low": d.low,
        "high": d.high,
        "better": d.better,
        "worse": d.worse,
    }


def summarize_office(records: Sequence[dict]) -> dict:
    """Mean accuracy per (batch, placement, estimator, λ), the selection table and the
    feature-scale diagnostics, all in percent; paired over (shift, seed)."""
    base = {
        (r["shift"], r["seed"], r["batch_size"]): r
        for r in records
        if r["estimator"] == "source-only"
    }
    grid: dict[str, dict] = {}
    cells = [r for r in records if r["estimator"] != "source-only"]
    for r in cells:
        k = f"b{r['batch_size']}/{r['placement']}/{r['estimator']}/{r['weight']:.0e}"
        grid.setdefault(k, []).append(r)
    grid_table = {
        k: {
            "n": len(v),
            "target_accuracy": 100 * float(np.mean([r["target_accuracy"] for r in v])),
            "hidden_scale_target": float(np.mean([r["hidden_scale_target"] for r in v])),
            "logits_scale_target": float(np.mean([r["logits_scale_target"] for r in v])),
            "hidden_scale_source": float(np.mean([r["hidden_scale_source"] for r in v])),
            "logits_scale_source": float(np.mean([r["logits_scale_source"] for r in v])),
        }
        for k, v in sorted(grid.items())
    }
    source_only = {}
    for b in sorted({k[2] for k in base}):
        rows = [r for k, r in base.items() if k[2] == b]
        source_only[f"b{b}"] = {
            "n": len(rows),
            "target_accuracy": 100 * float(np.mean([r["target_accuracy"] for r in rows])),
            "hidden_scale_target": float(np.mean([r["hidden_scale_target"] for r in rows])),
            "logits_scale_target": float(np.mean([r["logits_scale_target"] for r in rows])),
        }
    selection: dict[str, dict] = {}
    for criterion in (*CRITERIA, "dev_skada", "oracle"):
        if criterion != "oracle" and not all(f"score_{criterion}" in r for r in cells):
            continue
        picks = select(cells, criterion)
        by_setting: dict[str, list] = {}
        for key, r in picks.items():
            shift, seed, b, placement, est = key
            by_setting.setdefault(f"b{b}/{placement}/{est}", []).append(
                (r, base.get((shift, seed, b)))
            )
        for setting, pairs in sorted(by_setting.items()):
            pairs = [(r, s) for r, s in pairs if s is not None]
            sel = [100 * r["target_accuracy"] for r, _ in pairs]
            ref = [100 * s["target_accuracy"] for _, s in pairs]
            lam_counts: dict[str, int] = {}
            for r, _ in pairs:
                lam_counts[f"{r['weight']:.0e}"] = lam_counts.get(f"{r['weight']:.0e}", 0) + 1
            selection.setdefault(setting, {})[criterion] = {
                "target_accuracy": float(np.mean(sel)),
                "source_only": float(np.mean(ref)),
                "minus_source_only": _pd(sel, ref),
                "picked_lambda_counts": lam_counts,
            }
    return {"source_only": source_only, "grid": grid_table, "selection": selection}


def summarize_control(records: Sequence[dict]) -> dict:
    """Mean target accuracy per method and the paired difference against source-only."""
    base = {r["seed"]: r for r in records if r["estimator"] == "source-only"}
    seeds = sorted(base)
    out = {
        "source_only": 100 * float(np.mean([base[s]["target_accuracy"] for s in seeds])),
        "methods": {},
    }
    methods: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["estimator"] != "source-only":
            methods.setdefault(f"{r['estimator']}/{r['weight']:g}", {})[r["seed"]] = r
    for name, by_seed in sorted(methods.items()):
        common = [s for s in seeds if s in by_seed]
        row = [100 * by_seed[s]["target_accuracy"] for s in common]
        ref = [100 * base[s]["target_accuracy"] for s in common]
        out["methods"][name] = {
            "target_accuracy": float(np.mean(row)),
            "hidden_scale_target": float(
                np.mean([by_seed[s]["hidden_scale_target"] for s in common])
            ),
            "minus_source_only": _pd(row, ref),
        }
    return out


def write_csv(path: Path, records: Sequence[dict]) -> None:
    """Every cell as one CSV row (columns: the union of the records' keys, sorted)."""
    columns = sorted({k for r in records for k in r})
    lines: list[str] = []

    class _Buf:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Buf(), fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in sorted(records, key=cell_key):
        writer.writerow(r)
    atomic_write_text(path, "".join(lines))


def plot_office(summary: dict, path: Path, caption: str) -> None:
    """Target accuracy vs λ per estimator and placement (one panel per batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({int(k.split("/")[0][1:]) for k in summary["grid"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        for placement, style in (("hidden", "-"), ("logits", "--")):
            for est, color in (("plugin", "tab:blue"), ("unbiased", "tab:orange")):
                pts = sorted(
                    (float(k.split("/")[3]), v["target_accuracy"])
                    for k, v in summary["grid"].items()
                    if k.startswith(f"b{b}/{placement}/{est}/")
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        color=color,
                        marker="o",
                        label=f"{est}, {placement}",
                    )
        if f"b{b}" in summary["source_only"]:
            ax.axhline(
                summary["source_only"][f"b{b}"]["target_accuracy"],
                color="k",
                lw=1,
                label="source-only",
            )
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_ylabel("target accuracy (%), mean over shifts × seeds")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=7)
    fig.text(0.01, 0.01, caption, fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- the job


def _machine() -> dict:
    import sklearn

    try:
        import skada

        skada_version = skada.__version__
    except ImportError:  # pragma: no cover - the report works without skada
        skada_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "skada": skada_version,
        "deepalign": deepalign.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def control_cells(args: argparse.Namespace) -> list[dict]:
    cells = []
    for seed in args.seeds:
        common = {
            "shift": "moons",
            "source": "source",
            "target": "target",
            "seed": seed,
            "batch_size": args.batch_sizes[0],
        }
        cells.append({**common, "estimator": "source-only", "placement": None, "weight": None})
        for w in args.lambdas:
            for est in args.estimators:
                cells.append({**common, "estimator": est, "placement": "hidden", "weight": w})
    return cells


def office_cells(args: argparse.Namespace) -> list[dict]:
    shifts = [s for s in SHIFTS if shift_name(*s) in args.shifts]
    cells = []
    for source, target in shifts:
        for seed in args.seeds:
            for b in args.batch_sizes:
                common = {
                    "shift": shift_name(source, target),
                    "source": source,
                    "target": target,
                    "seed": seed,
                    "batch_size": b,
                }
                cells.append(
                    {**common, "estimator": "source-only", "placement": None, "weight": None}
                )
                placements = args.placements if b == args.batch_sizes[0] else args.extra_placements
                for placement in placements:
                    for est in args.estimators:
                        for w in args.lambdas:
                            cells.append(
                                {**common, "estimator": est, "placement": placement, "weight": w}
                            )
    return cells


def complete_groups(records: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """Only the (shift, seed, batch size) groups that hold every cell their batch size has
    anywhere in the run (so that every mean is over the same runs); also the dropped groups."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["shift"], r["seed"], r["batch_size"]), []).append(r)
    full: dict[int, set] = {}
    for (_, _, b), rs in groups.items():
        full.setdefault(b, set()).update(cell_key(r).split(f"_s{r['seed']}")[1] for r in rs)
    kept, dropped = [], []
    for (shift, seed, b), rs in sorted(groups.items()):
        have = {cell_key(r).split(f"_s{r['seed']}")[1] for r in rs}
        if have == full[b]:
            kept += rs
        else:
            dropped.append(f"{shift} seed {seed} batch {b}: {len(have)} of {len(full[b])} cells")
    return kept, dropped


def report(args: argparse.Namespace, records: list[dict], wall: float | None) -> dict:
    out = Path(args.out)
    records, dropped = complete_groups(records)
    meta = {
        "mode": args.mode,
        "command": "python -m deepalign.cli.deep_coral " + " ".join(sys.argv[1:]),
        "versions": _machine(),
        "n_cells": len(records),
        "incomplete_groups_left_out": dropped,
        "sum_cell_seconds": float(sum(r.get("cell_seconds", 0.0) for r in records)),
        "wall_seconds_this_invocation": wall,
    }
    summary = summarize_control(records) if args.mode == "control" else summarize_office(records)
    record = {"meta": meta, "summary": summary}
    atomic_write_json(out / "summary.json", record)
    write_csv(out / "cells.csv", records)
    if args.mode == "office-caltech" and summary["grid"]:
        v = meta["versions"]
        caption = (
            f"{meta['command']}\n{len(records)} cells, "
            f"{meta['sum_cell_seconds'] / 60:.0f} min of 1 CPU thread in all; torch {v['torch']}, "
            f"skada {v['skada']}, deepalign {v['deepalign']}, {v['machine']} {v['cpu_count']}-core"
        )
        plot_office(summary, out / "accuracy_vs_lambda.png", caption)
    return record


def run(args: argparse.Namespace) -> int:
    """Run the ``deep-coral`` job; returns the exit status."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    if args.quick:
        args.seeds, args.shifts, args.lambdas = [0], args.shifts[:1], args.lambdas[:2]
        args.steps, args.control_n = min(args.steps, 20), min(args.control_n, 100)
    if args.mode == "control":
        if args.seeds is None:
            args.seeds = list(range(10))
        data: dict = {}
        cells = control_cells(args)
        records = []
        for seed in sorted({c["seed"] for c in cells}):
            data = {
                "source": two_moons(args.control_n, angle_deg=0.0, noise=0.1, seed=seed),
                "target": two_moons(
                    args.control_n, angle_deg=args.angle, noise=0.1, seed=1_000 + seed
                ),
            }
            records += run_cells(
                data,
                [c for c in cells if c["seed"] == seed],
                out,
                resume=args.resume,
                steps=args.steps,
                hidden=64,
                depth=2,
                score=False,
                val_share=0.2,
            )
    elif args.mode == "office-caltech":
        if args.seeds is None:
            args.seeds = list(range(5))
        data = load_office_caltech(args.data)
        records = run_cells(
            data,
            office_cells(args),
            out,
            resume=args.resume,
            steps=args.steps,
            hidden=args.hidden,
            depth=1,
            score=not args.no_scores,
            val_share=VALIDATION_SHARE,
        )
    else:  # report: every cell on disk
        records = [
            json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((out / "cells").glob("*.json"))
        ]
        args.mode = "control" if records and records[0]["shift"] == "moons" else "office-caltech"
    record = report(args, records, time.perf_counter() - start)
    print(json.dumps(record["summary"], indent=1)[:4000])
    return 0


def register(subparsers: Any) -> None:
    """Add the ``deep-coral`` sub-command to an ``argparse`` sub-parser set."""
    parser = subparsers.add_parser(
        "deep-coral",
        help="Deep CORAL: positive control; Office-Caltech10 λ grid, label-free selection",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _shift_list(text: str) -> list[str]:
    names = [s.strip().replace("-", "→") for s in text.split(",") if s.strip()]
    valid = [shift_name(*s) for s in SHIFTS]
    for n in names:
        if n not in valid:
            raise argparse.ArgumentTypeError(f"expected shifts like A-W among {valid}, got {n!r}")
    return names


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _str_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        for v in values:
            if v not in choices:
                raise argparse.ArgumentTypeError(
                    f"expected a comma list of {list(choices)}, got {v!r}"
                )
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the ``deep-coral`` job."""
    parser.add_argument("mode", choices=("control", "office-caltech", "report"), help="what to run")
    parser.add_argument(
        "--out", default="runs/deep_coral", help="run folder (cells/, summary.json, cells.csv)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip cells whose file exists in --out"
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="office_caltech10_surf.npz")
    parser.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        help="comma list; default 0..9 (control), 0..4 (office)",
    )
    parser.add_argument(
        "--shifts",
        type=_shift_list,
        default=[shift_name(*s) for s in SHIFTS],
        help="comma list, e.g. A-W,D-W",
    )
    parser.add_argument(
        "--lambdas", type=_float_list, default=list(LAMBDAS), help="comma list of λ"
    )
    parser.add_argument(
        "--estimators", type=_str_list(ESTIMATORS), default=list(ESTIMATORS), help="comma list"
    )
    parser.add_argument(
        "--placements",
        type=_str_list(PLACEMENTS),
        default=list(PLACEMENTS),
        help="placements at the first batch size",
    )
    parser.add_argument(
        "--extra-placements",
        type=_str_list(PLACEMENTS),
        default=["hidden"],
        help="placements at the other batch sizes",
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=[32], help="comma list; the first is the main grid"
    )
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per cell (fixed)")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden width of the office MLP")
    parser.add_argument(
        "--angle", type=float, default=40.0, help="control: target rotation in degrees"
    )
    parser.add_argument("--control-n", type=int, default=300, help="control: points per domain")
    parser.add_argument(
        "--no-scores", action="store_true", help="skip the label-free scorers (no skada needed)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: seed 0, one shift, the first two λ, 20 steps (numbers not comparable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deepalign.cli.deep_coral``."""
    parser = argparse.ArgumentParser(
        prog="python -m deepalign.cli.deep_coral",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
