"""The paper's tables and the runs that reproduce them (what ``examples/reproduce_*.py`` call).

:func:`run` trains :class:`~deepalign.MultiTaskMSA` over several seeds (selecting each run's
epoch on the validation split and reporting its test metrics) and :func:`main` is the command
line shared by the examples: it prints the paper's table with this run's rows beside it and
writes them to Markdown and JSON, with a plot of the training curves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepalign import distributed
from deepalign.data import MMSADataset, load_mmsa, make_synthetic
from deepalign.model import MSAConfig, MultiTaskMSA
from deepalign.text import minilm_path
from deepalign.training import Trainer

__all__ = [
    "PAPER_TABLES",
    "TABLE_II",
    "RunSummary",
    "format_ablation",
    "format_table",
    "main",
    "paper_rows",
    "run",
    "table_columns",
]

SEEDS = (1111, 1112, 1113, 1114, 1115)
SYNTHETIC_TRAIN = 500  # the embedded default: full MOSI shapes, a few minutes on 2 CPU cores
SYNTHETIC_EPOCHS = 8
DATA_FILES = {"mosi": "MOSI", "mosei": "MOSEI", "sims": "SIMS"}

#: The paper's published figures: Table III (MOSI, MOSEI), Table I (SIMS), Table II (ablation).
#: MOSI/MOSEI rows: MAE, Corr, Acc-2 (Has0, Non0), F1 (Has0, Non0); SIMS: MAE, Corr, Acc-2, F1.
PAPER_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "mosi": {
        "Ours (paper)": (0.704, 0.794, 83.65, 85.06, 82.51, 85.43),
        "Self_MM (paper)": (0.723, 0.797, 83.09, 84.79, 83.03, 84.78),
    },
    "mosei": {
        "Ours (paper)": (0.523, 0.766, 82.98, 85.01, 83.26, 84.89),
        "Self_MM (paper)": (0.534, 0.764, 82.32, 84.12, 82.81, 84.05),
    },
    "sims": {
        "Ours (paper)": (0.423, 0.6198, 81.25, 81.25),
        "Self_MM rerun (paper)": (0.4218, 0.6092, 79.89, 79.94),
        "Self_MM published (paper)": (0.419, 0.616, 80.74, 80.78),
    },
}

#: Table II: spec -> (MOSI MAE, MOSI Corr, MOSEI MAE, MOSEI Corr).
TABLE_II: dict[str, tuple[float, float, float, float]] = {
    "V-A": (0.704, 0.794, 0.523, 0.766),
    "T-A": (0.716, 0.722, 0.529, 0.766),
    "T-V": (0.722, 0.793, 0.535, 0.759),
    "V+A": (0.716, 0.798, 0.531, 0.766),
    "T+A": (0.882, 0.744, 0.76, 0.329),
    "T+V": (0.881, 0.746, 0.748, 0.407),
    "T-V/T-A": (0.719, 0.765, 0.832, 0.765),
    "T+V/T+A": (0.908, 0.706, 0.811, 0.264),
    "T+V/T-A": (0.723, 0.793, 0.54, 0.76),
    "T-V/T+A": (0.715, 0.797, 0.539, 0.76),
    "T-A/V-A": (0.719, 0.792, 0.832, 0.765),
    "T-V/V+A": (0.711, 0.795, 0.535, 0.762),
    "T-A/V+A": (0.712, 0.795, 0.533, 0.766),
    "T-V/T-A/A-V": (0.72, 0.791, 0.54, 0.76),
    "T+A/T+V/A+V": (0.906, 0.708, 0.811, 0.245),
    "T-A/T-V/V+A": (0.721, 0.792, 0.535, 0.762),
}


def table_columns(dataset: str) -> list[tuple[str, str, float]]:
    """(column title, metric key, scale) of the paper's table for ``dataset``."""
    if dataset == "sims":
        return [
            ("MAE", "MAE", 1),
            ("Corr", "Corr", 1),
            ("Acc-2", "Mult_acc_2", 100),
            ("F1", "F1_score", 100),
        ]
    return [
        ("MAE", "MAE", 1),
        ("Corr", "Corr", 1),
        ("Acc-2 Has0", "Has0_acc_2", 100),
        ("Acc-2 Non0", "Non0_acc_2", 100),
        ("F1 Has0", "Has0_F1_score", 100),
        ("F1 Non0", "Non0_F1_score", 100),
    ]


def paper_rows(dataset: str) -> dict[str, list[str]]:
    """The paper's rows for ``dataset``, formatted as table cells."""
    return {name: [f"{v:g}" for v in values] for name, values in PAPER_TABLES[dataset].items()}


@dataclass
class RunSummary:
    """The test metrics of one configuration over several seeds.

    Attributes:
        name: the row's name.
        alignment: the Table II spec, or ``None``.
        seeds: the seeds run.
        test: metric -> one value per seed (test split, epoch selected on valid).
        valid: metric -> one value per seed (the selected epoch's validation metrics).
        curves: per seed, the per-epoch history (training losses, validation metrics).
    """

    name: str
    alignment: str | None
    seeds: list[int]
    test: dict[str, list[float]] = field(default_factory=dict)
    valid: dict[str, list[float]] = field(default_factory=dict)
    curves: list[list[dict[str, float]]] = field(default_factory=list)

    def mean_std(self, key: str, scale: float = 1) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed) of a test metric."""
        values = [scale * v for v in self.test[key]]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(
    splits: Mapping[str, MMSADataset],
    config: MSAConfig,
    *,
    dataset: str,
    seeds: Sequence[int] = SEEDS,
    max_epochs: int = 50,
    device: str = "cpu",
    out_dir: Path | None = None,
    name: str = "deepalign",
    progress: bool = False,
    resume: bool = False,
) -> RunSummary:
    """Train and test one configuration once per seed.

    Args:
        splits: train, valid and test datasets.
        config: the model and training configuration.
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (metric definitions).
        seeds: one run each; the seed fixes the initialisation and the batch order.
        max_epochs: the cap on each run (early stopping uses ``config.patience``).
        device: where to train.
        out_dir: each seed's checkpoint and logs go to ``out_dir/<name>/seed<seed>``.
        name: the row's name.
        progress: show progress bars.
        resume: continue from the checkpoints in ``out_dir`` where they exist.

    Returns:
        The :class:`RunSummary`.
    """
    summary = RunSummary(name=name, alignment=config.alignment, seeds=list(seeds))
    for seed in seeds:
        torch.manual_seed(seed)
        model = MultiTaskMSA(config)
        folder = None if out_dir is None else out_dir / _slug(name) / f"seed{seed}"
        trainer = Trainer(
            model, splits, dataset=dataset, seed=seed, max_epochs=max_epochs, device=device,
            out_dir=folder, progress=progress,
        )  # fmt: skip
        result = trainer.fit(resume=resume)
        for key, value in result.test.items():
            summary.test.setdefault(key, []).append(value)
        for key, value in result.valid.items():
            summary.valid.setdefault(key, []).append(value)
        summary.curves.append(result.history)
    return summary


def _slug(name: str) -> str:
    """A folder name for a row name: ``"deepalign V-A"`` -> ``"deepalign_V-A"``."""
    return re.sub(r"[^\w+-]+", "_", name).strip("_")


def format_table(dataset: str, summaries: Sequence[RunSummary], *, title: str) -> str:
    """A Markdown table in the paper's column format: the paper's rows, then this run's."""
    columns = table_columns(dataset)
    header = ["Model", *(title for title, _, _ in columns)]
    lines = [f"### {title}", "", _row(header), _row(["---"] * len(header))]
    lines += [_row([name, *cells]) for name, cells in paper_rows(dataset).items()]
    for summary in summaries:
        cells = []
        for _, key, scale in columns:
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}" if scale == 1 else f"{mean:.2f} ± {std:.2f}")
        seeds = len(summary.seeds)
        lines.append(_row([f"{summary.name} ({seeds} seed{'' if seeds == 1 else 's'})", *cells]))
    return "\n".join(lines) + "\n"


def format_ablation(dataset: str, summaries: Sequence[RunSummary], *, title: str) -> str:
    """A Markdown table of Table II: each spec's paper MAE and Corr beside this run's."""
    offset = {"mosi": 0, "mosei": 2}.get(dataset)
    header = ["Spec", "paper MAE", "paper Corr", "MAE", "Corr", "Acc-2 Has0", "F1 Has0"]
    lines = [f"### {title}", "", _row(header), _row(["---"] * len(header))]
    for summary in summaries:
        paper = TABLE_II.get(summary.alignment or "", ())
        cells = [f"{v:g}" for v in paper[offset : offset + 2]] if offset is not None else []
        cells += ["–"] * (2 - len(cells))
        for key, scale in (("MAE", 1), ("Corr", 1), ("Has0_acc_2", 100), ("Has0_F1_score", 100)):
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}")
        lines.append(_row([summary.name, *cells]))
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------- command line


def parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """The options every reproduction example shares."""
    default_data = _default_data_path(dataset)
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"MMSA pickle (default {default_data}, then synthetic data)",
    )
    p.add_argument(
        "--bert",
        default=None,
        help="text encoder: a directory, a hub id, or 'minilm' for the packaged all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--text-mode",
        choices=("bert", "features"),
        default=None,
        help="fine-tune the encoder on token ids, or use the text features "
        "(default: bert on real data, features on synthetic data)",
    )
    p.add_argument(
        "--text-pooling",
        choices=("cls", "mean"),
        default=None,
        help="bert mode: first token (default, Eq. 1) or mean over tokens (MiniLM's pooling)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="default 1111-1115 (3 seeds on synthetic data)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epoch cap (default 50; {SYNTHETIC_EPOCHS} on synthetic data)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--alignment", default="V-A", help="Table II spec, or 'none' for Self-MM")
    p.add_argument("--alignment-weight", type=float, default=None)
    p.add_argument(
        "--private",
        choices=("bounded", "negated"),
        default=None,
        help="penalty of '+' terms (default bounded; negated reproduces the paper's Table II)",
    )
    p.add_argument(
        "--align-on",
        choices=("encoder", "post"),
        default=None,
        help="align the encoder features (Eq. 2-3, default) or the post-layer ones (Eq. 7)",
    )
    p.add_argument(
        "--modality-dropout",
        type=float,
        default=None,
        help="probability of dropping audio and video from the fusion input in training "
        "(default 0, Self-MM)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run without alignment (Self-MM), with the same seeds",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"synthetic train size (default {SYNTHETIC_TRAIN})",
    )
    p.add_argument("--out", type=Path, default=Path("runs") / dataset, help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue the runs whose checkpoints are in --out"
    )
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tiny data)")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars")
    return p


def _default_data_path(dataset: str) -> Path:
    root = Path(os.environ.get("DEEPALIGN_DATA", "data"))
    file = "unaligned_39.pkl" if dataset == "sims" else "unaligned_50.pkl"
    return root / DATA_FILES[dataset] / "Processed" / file


def load_data(args: argparse.Namespace, dataset: str) -> tuple[dict[str, MMSADataset], bool]:
    """The datasets the options ask for, and whether they are synthetic."""
    path = args.data or _default_data_path(dataset)
    if not args.quick and path.exists():
        return load_mmsa(path), False
    if args.data is not None and not args.quick:
        raise SystemExit(f"--data: no such file: {args.data}")
    if args.quick:
        return make_synthetic(dataset, n_train=48, seq_len=6, text_dim=16, seed=0), True
    return make_synthetic(dataset, n_train=args.n_train or SYNTHETIC_TRAIN, seed=0), True


def build_config(
    args: argparse.Namespace, dataset: str, splits: Mapping[str, MMSADataset], synthetic: bool
) -> MSAConfig:
    """The preset of ``dataset`` adapted to the data's widths and the options."""
    dims = splits["train"].dims
    text_mode = args.text_mode or ("features" if synthetic else "bert")
    overrides: dict[str, Any] = {
        "feature_dims": (dims.get("text", 768), dims["audio"], dims["vision"]),
        "text_mode": text_mode,
        "alignment": None if args.alignment.lower() == "none" else args.alignment,
    }
    if args.bert:
        overrides["text_encoder"] = str(minilm_path()) if args.bert == "minilm" else args.bert
    optional = {
        "alignment_weight": args.alignment_weight,
        "align_private": args.private,
        "align_on": args.align_on,
        "text_pooling": args.text_pooling,
        "fusion_modality_dropout": args.modality_dropout,
    }
    overrides |= {key: value for key, value in optional.items() if value is not None}
    if args.quick:
        overrides["batch_size"] = 8
    return MSAConfig.preset(dataset, **overrides)


def main(
    argv: Sequence[str] | None, *, dataset: str, description: str, specs: Sequence[str] = ()
) -> list[RunSummary]:
    """The command line of ``examples/reproduce_<dataset>.py`` (and, with ``specs``, of the
    Table II ablation): parse, load, run every configuration, print and write the table."""
    args = parser(dataset, description).parse_args(argv)
    started = distributed.init_from_env()
    try:
        return _run_all(args, dataset, specs)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _run_all(args: argparse.Namespace, dataset: str, specs: Sequence[str]) -> list[RunSummary]:
    splits, synthetic = load_data(args, dataset)
    if synthetic and distributed.is_main():
        _warn_synthetic(args.quick)
    seeds = args.seeds or ([SEEDS[0]] if args.quick else list(SEEDS[: 3 if synthetic else 5]))
    epochs = args.epochs or (2 if args.quick else SYNTHETIC_EPOCHS if synthetic else 50)
    config = build_config(args, dataset, splits, synthetic)
    runs = [(spec, config.alignment if spec is None else spec) for spec in (specs or [None])]
    if args.baseline and not specs:
        runs.append(("Self_MM (deepalign)", None))
    summaries = []
    for label, alignment in runs:
        name = label or f"deepalign {alignment or 'no alignment'}"
        row_config = MSAConfig(**{**asdict(config), "alignment": alignment})
        summaries.append(
            run(splits, row_config, dataset=dataset, seeds=seeds, max_epochs=epochs,
                device=args.device, out_dir=args.out, name=name, progress=args.progress,
                resume=args.resume)
        )  # fmt: skip
    if distributed.is_main():
        _report(args, dataset, summaries, synthetic, ablation=bool(specs))
    return summaries


def _warn_synthetic(quick: bool) -> None:
    banner = "=" * 78
    message = (
        f"\n{banner}\nNO DATASET FOUND: running on SYNTHETIC data "
        f"({'tiny, --quick' if quick else 'the MOSI-shaped generator'}).\n"
        "These numbers say nothing about the paper's claims. Pass --data PATH to an MMSA pickle"
        f" or set DEEPALIGN_DATA.\n{banner}"
    )
    print(message, file=sys.stderr)
    warnings.warn("running on synthetic data", UserWarning, stacklevel=4)  # the caller of main


def _report(
    args: argparse.Namespace,
    dataset: str,
    summaries: list[RunSummary],
    synthetic: bool,
    *,
    ablation: bool,
) -> None:
    source = "synthetic data" if synthetic else str(args.data or _default_data_path(dataset))
    title = f"{dataset.upper()} — {source}, test split, mean ± std over seeds"
    table = (format_ablation if ablation else format_table)(dataset, summaries, title=title)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    record = {"dataset": dataset, "source": source, "argv": sys.argv, "torch": torch.__version__}
    record["runs"] = [asdict(s) for s in summaries]
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot_curves(summaries, args.out / "curves.png")


def _plot_curves(summaries: Sequence[RunSummary], path: Path) -> None:
    """Training and validation loss per epoch, one line per seed (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (extra deepalign[plot]): no curves plotted", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for index, summary in enumerate(summaries):
        colour = f"C{index}"
        for seed, history in zip(summary.seeds, summary.curves, strict=True):
            epochs = [r["epoch"] for r in history]
            label = summary.name if seed == summary.seeds[0] else None
            axes[0].plot(epochs, [r["train_loss"] for r in history], colour, label=label)
            axes[1].plot(epochs, [r["valid_loss"] for r in history], colour, label=label)
    for axis, title in zip(axes, ("training loss (total)", "validation L1 (fusion)"), strict=True):
        axis.set(title=title, xlabel="epoch")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
