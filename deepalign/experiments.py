"""The paper's tables and the command line that reproduces them (what ``examples/`` call).

This is application code built on the library's public API; ``import deepalign`` does not
import it (nor matplotlib). :func:`run` trains :class:`~deepalign.MultiTaskMSA` over several
seeds, one folder per run, skipping finished runs and resuming unfinished ones;
:func:`compare` pairs the rows of a table with the reference row seed by seed
(:mod:`deepalign.stats`); :func:`format_table` and :func:`format_ablation` print the paper's
figures beside this run's with the paired differences; :func:`main` is the command line of the
examples, whose options reach every field of :class:`~deepalign.MSAConfig` and
:class:`~deepalign.training.TrainConfig` (``--config FILE.json``, ``--set field=value``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import hashlib
import io
import json
import math
import os
import re
import statistics
import sys
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import deepalign
from deepalign import distributed
from deepalign.alignment import ESTIMATORS, PRIVATE_MODES
from deepalign.data import (
    PRESETS as DATA_PRESETS,
)
from deepalign.data import (
    CorruptPickleError,
    DataFormatError,
    MMSADataset,
    UnsafePickleError,
    load_mmsa,
    make_synthetic,
)
from deepalign.metrics import DATASETS
from deepalign.model import ALIGN_ON, TEXT_MODES, TEXT_POOLING, MSAConfig, MultiTaskMSA
from deepalign.stats import PairedDifference, paired_differences
from deepalign.text import minilm_path
from deepalign.training import TrainConfig, Trainer

__all__ = [
    "PAPER_TABLES",
    "SEEDS",
    "TABLE_II",
    "ConfigError",
    "LoadedData",
    "RunSummary",
    "build_configs",
    "compare",
    "config_fields",
    "format_ablation",
    "format_seeds_csv",
    "format_table",
    "load_data",
    "main",
    "paper_rows",
    "parse_assignment",
    "read_config_file",
    "run",
    "table_columns",
    "warn_synthetic",
]

SEEDS = (1111, 1112, 1113, 1114, 1115)
"""The seeds of the paper's tables (MMSA's first five)."""
SYNTHETIC_TRAIN = 500  # the embedded default: full MOSI shapes, a few minutes on 2 CPU cores
SYNTHETIC_EPOCHS = 8
QUICK_BATCH_SIZE = 8
# --quick: this many batches of training data (of each split of a file): two optimiser steps
# of the presets' accumulation over 4 batches, or one per process under torchrun with 2
QUICK_BATCHES = 8
QUICK_EPOCHS = 2
DATA_FILES = {"mosi": "MOSI", "mosei": "MOSEI", "sims": "SIMS"}
_LOWER_IS_BETTER = ("MAE", "loss")
_MIB = 1 << 20

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
"""The paper's published figures, by dataset and row. The values are those of Table III for MOSI
and MOSEI (MAE, Corr, Acc-2 Has0 and Non0, F1 Has0 and Non0) and of Table I for SIMS (MAE, Corr,
Acc-2, F1)."""

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
"""The paper's Table II, spec -> (MOSI MAE, MOSI Corr, MOSEI MAE, MOSEI Corr)."""


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


# ---------------------------------------------------------------------- runs


@dataclass
class RunSummary:
    """The metrics of one configuration (one table row) over several seeds.

    Attributes:
        name: the row's name.
        alignment: the Table II spec, or ``None``.
        seeds: the seeds run, in order; every list below has one entry per seed.
        test: metric -> one value per seed (test split, epoch selected on valid).
        valid: metric -> one value per seed (the selected epoch's validation metrics).
        curves: per seed, the per-epoch history (training losses, validation metrics).
        estimator: the alignment's estimator (``MSAConfig.align_estimator``), or ``None``
            without alignment.
        best_epochs: per seed, the selected epoch.
        epochs: per seed, the epochs trained.
    """

    name: str
    alignment: str | None
    seeds: list[int]
    test: dict[str, list[float]] = field(default_factory=dict)
    valid: dict[str, list[float]] = field(default_factory=dict)
    curves: list[list[dict[str, float]]] = field(default_factory=list)
    estimator: str | None = None
    best_epochs: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def mean_std(self, key: str, scale: float = 1) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed) of a test metric."""
        values = [scale * v for v in self.test[key]]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(
    splits: Mapping[str, MMSADataset],
    model_config: MSAConfig,
    train_config: TrainConfig,
    *,
    seeds: Sequence[int] = SEEDS,
    device: str = "cpu",
    out_dir: Path | None = None,
    name: str = "deepalign",
    progress: bool = False,
    resume: bool = False,
    data_id: Mapping[str, Any] | None = None,
    keep_checkpoints: bool = False,
) -> RunSummary:
    """Train and test one configuration once per seed.

    Each seed's run writes to ``out_dir/seed<seed>/<name>/`` (checkpoints, history,
    ``run.json``, ``results.json``, see :class:`~deepalign.training.Trainer`). With
    ``resume``, a run whose ``results.json`` exists and whose ``run.json`` holds this
    configuration is read back instead of trained, and an unfinished one continues from its
    checkpoint (the trainer refuses a checkpoint of another configuration).

    Args:
        splits: train, valid and test datasets.
        model_config: the model configuration.
        train_config: the training configuration.
        seeds: one run each; the seed fixes the initialisation and the batch order.
        device: where to train.
        out_dir: the folder of the row's runs; ``None`` writes nothing (and cannot resume).
        name: the row's name (its runs' folder name, slugged).
        progress: the trainer's progress lines (and bars on a terminal), and one line per run.
        resume: read finished runs and continue unfinished ones (see above).
        data_id: what identifies the data, stored with each run and compared on resume.
        keep_checkpoints: keep each finished run's checkpoints (the model, best model and
            optimiser: hundreds of MB with a text encoder); by default they are deleted once
            the run's ``results.json`` is written, which is all ``resume`` reads of it.

    Returns:
        The :class:`RunSummary`.
    """
    summary = RunSummary(
        name=name,
        alignment=model_config.alignment,
        seeds=list(seeds),
        estimator=model_config.align_estimator if model_config.alignment else None,
    )
    for position, seed in enumerate(seeds, 1):
        folder = None if out_dir is None else out_dir / f"seed{seed}" / _slug(name)
        identity = _identity(model_config, train_config, seed, data_id)
        finished = _finished_run(folder, identity) if resume else None
        if resume and finished is None:
            _refuse_other_finished_run(folder, identity)
        if progress and distributed.is_main():
            what = "finished, read back" if finished else "training"
            where = f" in {folder}" if folder else ""
            print(f"[{name}] seed {seed} ({position}/{len(seeds)}): {what}{where}", file=sys.stderr)
        if finished is None:
            torch.manual_seed(seed)
            model = MultiTaskMSA(model_config)
            trainer = Trainer(
                model, splits, train_config, seed=seed, device=device, out_dir=folder,
                progress=progress, data_id=data_id,
            )  # fmt: skip
            _share_text_cache(trainer, splits)
            try:
                result = trainer.fit(resume=resume and folder is not None)
            except ValueError as error:
                if not resume:
                    raise
                raise ConfigError(
                    f"--resume: {error}\n(--resume needs the options the runs in {out_dir} were "
                    "started with; without --resume they start afresh)"
                ) from None
            if folder is not None and not keep_checkpoints and distributed.is_main():
                for stale in ("checkpoint.pt", "checkpoint.prev.pt"):
                    (folder / stale).unlink(missing_ok=True)
            finished = {
                "best_epoch": result.best_epoch,
                "epochs": result.epochs,
                "valid": result.valid,
                "test": result.test,
                "history": result.history,
            }
        for key, value in finished["test"].items():
            summary.test.setdefault(key, []).append(value)
        for key, value in finished["valid"].items():
            summary.valid.setdefault(key, []).append(value)
        summary.curves.append(finished["history"])
        summary.best_epochs.append(finished["best_epoch"])
        summary.epochs.append(finished["epochs"])
    return summary


def _identity(
    model_config: MSAConfig, train_config: TrainConfig, seed: int, data_id: Mapping | None
) -> dict[str, Any]:
    """What :meth:`Trainer.run_identity` stores in ``run.json`` (without the version)."""
    identity = {
        "model": asdict(model_config),
        "train": asdict(train_config),
        "seed": seed,
        "data": None if data_id is None else dict(data_id),
    }
    return json.loads(json.dumps(identity))


def _finished_run(folder: Path | None, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results of a finished run of this configuration in ``folder``, or ``None``."""
    if folder is None or not (folder / "results.json").is_file():
        return None
    try:
        saved = json.loads((folder / "run.json").read_text())
        results = json.loads((folder / "results.json").read_text())
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return None  # incomplete: let the trainer resume it from its checkpoint
    free = {"num_workers", "pin_memory"}
    same = all(saved.get(k) == identity[k] for k in ("model", "seed", "data"))
    train = {k: v for k, v in saved.get("train", {}).items() if k not in free}
    same = same and train == {k: v for k, v in identity["train"].items() if k not in free}
    if not same:
        return None  # the trainer compares the checkpoint and says what differs
    return {**results, "history": history}


def _refuse_other_finished_run(folder: Path | None, identity: Mapping[str, Any]) -> None:
    """A finished run without its checkpoint, made with other options: say what differs."""
    if folder is None or not (folder / "results.json").is_file():
        return
    if any(folder.glob("checkpoint*.pt")):
        return  # the trainer compares the checkpoint and says what differs
    try:
        saved = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return
    differences = []
    for part in ("model", "train"):
        old, new = saved.get(part, {}), identity[part]
        for key in sorted(set(old) | set(new)):
            if key not in ("num_workers", "pin_memory") and old.get(key) != new.get(key):
                differences.append(
                    f"{part}.{key}: finished run {old.get(key)!r}, now {new.get(key)!r}"
                )
    for key in ("seed", "data"):
        if saved.get(key) != identity[key]:
            differences.append(f"{key}: finished run {saved.get(key)!r}, now {identity[key]!r}")
    if differences:
        raise ConfigError(
            f"--resume: the finished run in {folder} was made with other options:\n  "
            + "\n  ".join(differences)
            + "\n(--resume needs the options the runs were started with; without --resume "
            "they start afresh)"
        )


#: Frozen text encoders' cached outputs, shared by the runs of one process: (the splits, a
#: fingerprint of the encoder's weights and pooling) -> split -> features.
_TEXT_CACHES: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}


def _share_text_cache(trainer: Trainer, splits: Mapping[str, MMSADataset]) -> None:
    """Let every run of this process on the same splits and the same frozen encoder reuse one
    text cache: the encoder's output does not depend on the run's seed (it is frozen and run
    in eval mode), and computing it is most of a frozen run's time."""
    if not trainer.use_text_cache:
        return
    model = trainer.model
    with torch.no_grad():
        weights = [p.detach().double().sum().item() for p in model.text_encoder.parameters()]
    key = (tuple(id(s) for s in splits.values()), model.config.text_pooling, tuple(weights))
    trainer._text_cache = _TEXT_CACHES.setdefault(key, trainer._text_cache)


def _slug(name: str) -> str:
    """A folder name for a row name: ``"deepalign V-A"`` -> ``"deepalign_V-A"``."""
    return re.sub(r"[^\w+-]+", "_", name).strip("_")


# ---------------------------------------------------------------------- paired statistics


def compare(
    summaries: Sequence[RunSummary], reference: str, *, confidence: float = 0.95
) -> dict[str, dict[str, PairedDifference]]:
    """Paired differences of every row against the ``reference`` row, seed by seed.

    Each row is paired with the reference on the seeds both ran (in the reference's order);
    every test metric gets a :class:`~deepalign.stats.PairedDifference` (row minus reference;
    MAE and ``loss``: lower is better).

    Args:
        summaries: the rows, the reference among them.
        reference: the name of the reference row (e.g. no alignment).
        confidence: the intervals' confidence level.

    Returns:
        Row name -> metric -> paired difference, for every row but the reference.

    Raises:
        ValueError: if no row is named ``reference`` or a row shares no seed with it.

    Example:
        >>> ref = RunSummary("none", None, [1, 2, 3], test={"MAE": [0.8, 0.7, 0.9]})
        >>> row = RunSummary("V-A", "V-A", [1, 2, 3], test={"MAE": [0.7, 0.7, 0.8]})
        >>> d = compare([ref, row], "none")["V-A"]["MAE"]
        >>> print(f"{d.mean:+.3f}, better on {d.better} of {d.n} seeds")
        -0.067, better on 2 of 3 seeds
    """
    by_name = {s.name: s for s in summaries}
    if reference not in by_name:
        raise ValueError(f"reference: expected one of {list(by_name)}, got {reference!r}")
    base = by_name[reference]
    out = {}
    for summary in summaries:
        if summary is base:
            continue
        common = [seed for seed in base.seeds if seed in summary.seeds]
        if not common:
            raise ValueError(
                f"row {summary.name!r}: no seed in common with {reference!r} "
                f"({summary.seeds} and {base.seeds})"
            )
        row = {k: [v[summary.seeds.index(s)] for s in common] for k, v in summary.test.items()}
        ref = {k: [v[base.seeds.index(s)] for s in common] for k, v in base.test.items()}
        out[summary.name] = paired_differences(
            row, ref, lower_is_better=_LOWER_IS_BETTER, confidence=confidence
        )
    return out


def _delta_cell(d: PairedDifference, scale: float) -> str:
    """``"-0.012 [-0.030, +0.006] 4/10 *"``: mean, interval, better seeds, marker."""
    mean = f"{scale * d.mean:+.3g}"
    interval = f"[{scale * d.low:+.3g}, {scale * d.high:+.3g}]"
    interval = "[n/a]" if math.isnan(d.low) else interval
    return f"{mean} {interval} {d.better}/{d.n}{' *' if d.excludes_zero else ''}"


def _delta_legend(reference: str, confidence: float = 0.95) -> str:
    return (
        f"Δ: row minus `{reference}` on the same seeds, mean over seeds "
        f"[{100 * confidence:g} % interval, Student t over seeds] and the number of seeds on "
        "which the row is better (MAE: lower is better); * marks an interval that excludes 0. "
        "Accuracies and F1 in points."
    )


def format_table(
    dataset: str,
    summaries: Sequence[RunSummary],
    *,
    title: str,
    reference: str | None = None,
    note: str | None = None,
) -> str:
    """A Markdown table in the paper's column format: the paper's rows, then this run's.

    With ``reference``, a second table gives every other row's paired difference to it, in
    the same columns (:func:`compare`). ``note`` is a paragraph printed under the title.
    """
    columns = table_columns(dataset)
    header = ["Model", *(title for title, _, _ in columns)]
    lines = [f"### {title}", "", *([note, ""] if note else [])]
    lines += [_row(header), _row(["---"] * len(header))]
    lines += [_row([name, *cells]) for name, cells in paper_rows(dataset).items()]
    for summary in summaries:
        cells = []
        for _, key, scale in columns:
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}" if scale == 1 else f"{mean:.2f} ± {std:.2f}")
        seeds = len(summary.seeds)
        lines.append(_row([f"{summary.name} ({seeds} seed{'' if seeds == 1 else 's'})", *cells]))
    if reference is not None and len(summaries) > 1:
        deltas = compare(summaries, reference)
        lines += ["", f"#### Paired differences against `{reference}`", ""]
        lines += [_delta_legend(reference), ""]
        lines += [_row(["Model", *(f"Δ {t}" for t, _, _ in columns)])]
        lines.append(_row(["---"] * (len(columns) + 1)))
        for name, row in deltas.items():
            lines.append(_row([name, *(_delta_cell(row[key], s) for _, key, s in columns)]))
    return "\n".join(lines) + "\n"


def _ablation_columns(dataset: str) -> list[tuple[str, str, float]]:
    """MAE, Corr, Acc-2 and F1 (Has0 for MOSI and MOSEI)."""
    keep = {"MAE", "Corr", "Has0_acc_2", "Has0_F1_score", "Mult_acc_2", "F1_score"}
    return [column for column in table_columns(dataset) if column[1] in keep]


def format_ablation(
    dataset: str,
    summaries: Sequence[RunSummary],
    *,
    title: str,
    reference: str | None = None,
    note: str | None = None,
) -> str:
    """A Markdown table of Table II: each spec's paper figures beside this run's.

    Columns: the spec and its estimator; the paper's MAE and Corr for the spec (MOSI or
    MOSEI column of Table II) and their difference to the paper's Self-MM (Table III); this
    run's mean ± std; with ``reference``, the paired difference of each metric to it
    (:func:`compare`). ``note`` is a paragraph printed under the title.
    """
    offset = {"mosi": 0, "mosei": 2}.get(dataset)
    self_mm = PAPER_TABLES[dataset].get("Self_MM (paper)")
    columns = _ablation_columns(dataset)
    header = ["Row", "estimator", "paper MAE", "paper Corr", "paper Δ MAE", "paper Δ Corr"]
    header += [t for t, _, _ in columns]
    deltas = compare(summaries, reference) if reference is not None else {}
    if deltas:
        header += [f"Δ {t}" for t, _, _ in columns]
    lines = [f"### {title}", "", *([note, ""] if note else [])]
    if offset is not None:
        lines += [
            f"paper: Lai et al., Table II ({dataset.upper()} column; BERT-base on the standard "
            "split with other features, so only the direction and size of differences compare); "
            "paper Δ: the spec minus the paper's Self-MM (Table III).",
            "",
        ]
    if deltas:
        lines += [_delta_legend(reference), ""]
    lines += [_row(header), _row(["---"] * len(header))]
    for summary in summaries:
        paper: tuple[float, ...] = ()
        if offset is not None and summary.alignment in TABLE_II:
            paper = TABLE_II[summary.alignment][offset : offset + 2]
        elif offset is not None and summary.alignment is None and self_mm is not None:
            paper = self_mm[:2]
        cells = [summary.estimator or "–"]
        cells += [f"{v:g}" for v in paper] or ["–", "–"]
        if paper and self_mm is not None and summary.alignment is not None:
            cells += [f"{paper[0] - self_mm[0]:+.3f}", f"{paper[1] - self_mm[1]:+.3f}"]
        else:
            cells += ["–", "–"]
        for _, key, scale in columns:
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}" if scale == 1 else f"{mean:.2f} ± {std:.2f}")
        if deltas:
            row = deltas.get(summary.name)
            cells += [_delta_cell(row[k], s) if row else "(reference)" for _, k, s in columns]
        lines.append(_row([summary.name, *cells]))
    return "\n".join(lines) + "\n"


def format_seeds_csv(summaries: Sequence[RunSummary]) -> str:
    """CSV of every seed's metrics for every row: ``row, alignment, estimator, seed,
    best_epoch, epochs``, then ``test_<metric>`` and ``valid_<metric>`` columns."""
    test_keys = list(dict.fromkeys(k for s in summaries for k in s.test))
    valid_keys = list(dict.fromkeys(k for s in summaries for k in s.valid))
    header = ["row", "alignment", "estimator", "seed", "best_epoch", "epochs"]
    header += [f"test_{k}" for k in test_keys] + [f"valid_{k}" for k in valid_keys]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for s in summaries:
        for i, seed in enumerate(s.seeds):
            cells: list[Any] = [s.name, s.alignment or "none", s.estimator or "", seed]
            cells += [s.best_epochs[i] if s.best_epochs else "", s.epochs[i] if s.epochs else ""]
            cells += [repr(s.test[k][i]) if k in s.test else "" for k in test_keys]
            cells += [repr(s.valid[k][i]) if k in s.valid else "" for k in valid_keys]
            writer.writerow(cells)
    return buffer.getvalue()


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------- configuration


class ConfigError(ValueError):
    """A configuration value or file the command line cannot use; the message says why."""


def config_fields() -> dict[str, type]:
    """Field name -> the configuration class that owns it (MSAConfig or TrainConfig).

    Example:
        >>> fields = config_fields()
        >>> fields["lr_text"].__name__, fields["align_on"].__name__
        ('TrainConfig', 'MSAConfig')
    """
    owners: dict[str, type] = {}
    for cls in (MSAConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in owners:
                raise RuntimeError(f"field {f.name!r} is in both MSAConfig and TrainConfig")
            owners[f.name] = cls
    return owners


def _field_type(name: str) -> Any:
    owner = config_fields()[name]
    return typing.get_type_hints(owner)[name]


def _unknown_field(name: str, source: str) -> ConfigError:
    owners = config_fields()
    close = difflib.get_close_matches(name, list(owners), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = "; ".join(
        f"{cls.__name__}: {', '.join(n for n, c in owners.items() if c is cls)}"
        for cls in (MSAConfig, TrainConfig)
    )
    return ConfigError(f"{source}: unknown field {name!r}.{hint} Valid fields are {listing}")


def _convert(value: Any, tp: Any, where: str, *, text: bool) -> Any:
    """``value`` (a JSON value, or a string from the command line when ``text``) as type
    ``tp`` of a config field; raises :class:`ConfigError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (
            value is None or (text and value.strip().lower() in ("none", "null"))
        ):
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arm, where, text=text)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if tp is bool:
        if text and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if text and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        if not text and isinstance(value, bool):
            return value
    elif tp is int:
        if text and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        if not text and isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if text:
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if text or isinstance(value, str):
            return value
    elif origin is tuple:
        items = value
        if text:
            inner = value.strip().strip("()[]")
            items = [item for item in inner.split(",") if item.strip()] if inner.strip() else []
        if isinstance(items, list | tuple):
            variadic = bool(args) and args[-1] is Ellipsis
            kinds = [args[0]] * len(items) if variadic else list(args)
            if len(kinds) == len(items):
                return tuple(
                    _convert(item, kind, f"{where}[{i}]", text=text)
                    for i, (item, kind) in enumerate(zip(items, kinds, strict=True))
                )
    else:  # pragma: no cover - a field type this parser does not know
        raise ConfigError(f"{where}: fields of type {tp} cannot be set from the command line")
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "none"
    if origin is tuple:
        if args and args[-1] is Ellipsis:
            return f"comma-separated {_describe(args[0])}s"
        return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
    return {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``--set field=value`` into the field's name and its typed value.

    The value is read as the field's type: ``int``, ``float``, ``bool`` (``true``/``false``,
    ``1``/``0``, ``yes``/``no``), ``str``, ``none``/``null`` where the field may be ``None``,
    and comma-separated items for tuples (``feature_dims=768,74,35``). The dataclasses check
    the values when the configs are built (:func:`build_configs`).

    Args:
        text: ``"field=value"``.

    Returns:
        ``(field, value)``.

    Raises:
        ConfigError: for a missing ``=``, an unknown field (the message lists the valid ones)
            or a value that is not of the field's type.

    Example:
        >>> parse_assignment("feature_dims=768,74,35"), parse_assignment("align_dim=none")
        (('feature_dims', (768, 74, 35)), ('align_dim', None))
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--set {text!r}: expected field=value")
    if name not in config_fields():
        raise _unknown_field(name, f"--set {text!r}")
    return name, _convert(value, _field_type(name), f"--set {name}", text=True)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a flat JSON object of config fields (MMSA style: ``{"batch_size": 32, ...}``).

    Keys are fields of :class:`~deepalign.MSAConfig` or :class:`~deepalign.training.TrainConfig`
    (the ``config.json`` that :func:`main` writes beside its results is such a file); values
    are JSON values of the field's type (lists for tuples, ``null`` for ``None``).

    Args:
        path: the JSON file.

    Returns:
        Field -> typed value.

    Raises:
        ConfigError: if the file is missing, is not a JSON object, has an unknown key (the
            message lists the valid ones) or a value of the wrong type.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, got {type(raw).__name__}")
    out = {}
    for name, value in raw.items():
        if name not in config_fields():
            raise _unknown_field(name, f"--config {path}")
        out[name] = _convert(value, _field_type(name), f"--config {path}: {name}", text=False)
    return out


def build_configs(
    dataset: str, overrides: Sequence[tuple[str, Mapping[str, Any]]] = ()
) -> tuple[MSAConfig, TrainConfig]:
    """The presets of ``dataset`` with each source of overrides applied in order.

    Args:
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"``.
        overrides: ``(source, {field: value})`` pairs; a later source wins. ``source`` names
            where the values came from in error messages (``"--set"``, a file, ...).

    Returns:
        ``(MSAConfig, TrainConfig)``, validated by their constructors.

    Raises:
        ConfigError: for an unknown field, a ``dataset`` field that contradicts ``dataset``,
            or a value the dataclasses reject (their message, with its source).

    Example:
        >>> model, train = build_configs("mosei", [("--set", {"lr_text": 1e-5, "align_dim": 8})])
        >>> model.align_dim, train.lr_text, train.batch_size
        (8, 1e-05, 32)
    """
    owners = config_fields()
    values: dict[type, dict[str, Any]] = {MSAConfig: {}, TrainConfig: {}}
    sources: dict[str, str] = {}
    for source, items in overrides:
        for name, value in items.items():
            if name not in owners:
                raise _unknown_field(name, source)
            if name == "dataset" and value != dataset:
                raise ConfigError(
                    f"{source}: dataset={value!r} contradicts this run's dataset {dataset!r} "
                    "(choose the dataset with the example or its --dataset option)"
                )
            if name == "dataset":
                continue  # the preset sets it
            values[owners[name]][name] = value
            sources[name] = source
    configs = []
    for cls in (MSAConfig, TrainConfig):
        try:
            configs.append(cls.preset(dataset, **values[cls]))
        except (TypeError, ValueError) as error:
            named = re.match(r"\w+", str(error))  # the dataclasses' messages start with the field
            if named and named[0] in sources:
                where = sources[named[0]]
            else:
                where = " / ".join(sorted({sources[n] for n in values[cls]})) or "the preset"
            raise ConfigError(f"{where}: {error}") from None
    return configs[0], configs[1]


def _flat(model_config: MSAConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration as the flat JSON that ``--config`` reads."""
    return json.loads(json.dumps({**asdict(model_config), **asdict(train_config)}))


# ---------------------------------------------------------------------- command line


def _seed_list(text: str) -> list[int]:
    """``"1111"`` -> ``[1111]``; ``"1111..1115"`` -> ``[1111, ..., 1115]`` (inclusive)."""
    match = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a seed or a range A..B, got {text!r}")
    first, last = int(match[1]), int(match[2] or match[1])
    if last < first:
        raise argparse.ArgumentTypeError(f"expected A <= B in {text!r}")
    return list(range(first, last + 1))


def _parser(
    dataset: str | None, description: str, *, ablation: bool = False
) -> argparse.ArgumentParser:
    """The options of a reproduction example (or, with ``ablation``, of the Table II one)."""
    p = argparse.ArgumentParser(
        description=description,
        epilog="Every field of MSAConfig and TrainConfig: --config FILE.json and --set "
        "field=value (later wins: preset < data < --config < options < --set). The resolved "
        "configuration is written to config.json beside the results.",
    )
    if ablation:
        p.add_argument("--dataset", choices=DATASETS, default="mosi", help="default mosi")
    where = _default_data_path(dataset) if dataset else "$DEEPALIGN_DATA/<DATASET>/Processed/..."
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"MMSA pickle (default {where} when it exists; synthetic data otherwise, with a "
        "warning). A missing file is an error.",
    )
    model = p.add_argument_group("model (MSAConfig)")
    model.add_argument(
        "--bert",
        default=None,
        help="text encoder (text_encoder): a directory, a hub id, or 'minilm' for the packaged "
        "all-MiniLM-L6-v2",
    )
    model.add_argument(
        "--text-mode",
        choices=TEXT_MODES,
        default=None,
        help="run the encoder on token ids, or use text features (default: bert on real "
        "data with token ids, features otherwise)",
    )
    model.add_argument(
        "--text-pooling",
        choices=TEXT_POOLING,
        default=None,
        help="bert mode: first token (Eq. 1, the preset) or mean over tokens (MiniLM's)",
    )
    model.add_argument(
        "--finetune-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fine-tune the text encoder (the preset) or freeze it; frozen, its output is "
        "computed once per split and cached (TrainConfig.cache_text_features)",
    )
    if not ablation:
        model.add_argument(
            "--alignment",
            default=None,
            help="Table II spec, or 'none' for Self-MM (default V-A, the paper's)",
        )
    model.add_argument(
        "--alignment-weight",
        type=float,
        default=None,
        help="factor of the alignment terms in the objective (preset 1)",
    )
    model.add_argument(
        "--private",
        choices=PRIVATE_MODES,
        default=None,
        help="penalty of '+' terms (align_private; 'negated' reproduces the paper's Table II)",
    )
    model.add_argument(
        "--align-on",
        choices=ALIGN_ON,
        default=None,
        help="align the encoder features (Eq. 2-3, the preset) or the post-layer ones (Eq. 7)",
    )
    model.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        nargs="+" if ablation else None,
        default=None,
        help="estimator of the alignment loss (align_estimator)"
        + ("; several: every spec runs with each" if ablation else ""),
    )
    model.add_argument(
        "--modality-dropout",
        type=float,
        default=None,
        help="fusion_modality_dropout: probability of dropping audio and vision from the "
        "fusion input in training (preset 0, Self-MM)",
    )
    if ablation:
        model.add_argument(
            "--specs",
            nargs="+",
            choices=list(TABLE_II),
            default=None,
            metavar="SPEC",
            help="Table II specs to run (default all 16); the reference row without alignment "
            "always runs",
        )
    runs = p.add_argument_group("runs")
    runs.add_argument(
        "--seeds",
        type=_seed_list,
        nargs="+",
        default=None,
        help="seeds, e.g. 1111 1112 or 1111..1120 (default 1111-1115; 3 on synthetic data)",
    )
    runs.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"max_epochs (default: the preset's; {SYNTHETIC_EPOCHS} on synthetic data)",
    )
    runs.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if not ablation:
        runs.add_argument(
            "--baseline",
            action="store_true",
            help="also run without alignment (Self-MM) on the same seeds, with paired differences",
        )
    runs.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"synthetic train size (default {SYNTHETIC_TRAIN})",
    )
    runs.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/<example>/<dataset>-<data>-<hash of the options>)",
    )
    runs.add_argument(
        "--resume",
        action="store_true",
        help="read the finished runs in --out and continue the unfinished ones",
    )
    runs.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep finished runs' checkpoints (deleted by default: results.json is what "
        "--resume reads, and a checkpoint with a text encoder is hundreds of MB)",
    )
    runs.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run in seconds: {QUICK_EPOCHS} epochs, batch size {QUICK_BATCH_SIZE}, "
        f"one seed; tiny synthetic data, or {QUICK_BATCHES} batches of each split of --data",
    )
    runs.add_argument("--quiet", action="store_true", help="no progress output")
    runs.add_argument(
        "--config", type=Path, default=None, help="JSON file of config fields (flat, MMSA style)"
    )
    runs.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any MSAConfig or TrainConfig field (repeatable), e.g. --set lr_text=2e-5",
    )
    return p


def _default_data_path(dataset: str) -> Path:
    root = Path(os.environ.get("DEEPALIGN_DATA", "data"))
    file = "unaligned_39.pkl" if dataset == "sims" else "unaligned_50.pkl"
    return root / DATA_FILES[dataset] / "Processed" / file


@dataclass
class LoadedData:
    """What :func:`load_data` returns.

    Attributes:
        splits: ``{"train": ..., "valid": ..., "test": ...}``.
        synthetic: whether the data is synthetic.
        source: the file's path, or ``"synthetic data"`` (for titles).
        tag: a short name for folder names (the file's stem, ``"synthetic"``, ...).
        data_id: what identifies the data (for a file: its path, size and the SHA-256 of its
            first MiB; ``quick_head`` with ``--quick``), stored with every run.
    """

    splits: dict[str, MMSADataset]
    synthetic: bool
    source: str
    tag: str
    data_id: dict[str, Any]


def _file_id(path: Path) -> dict[str, Any]:
    """The file's path, size and the SHA-256 of its first MiB (cheap, and enough to tell two
    releases apart)."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_MIB)).hexdigest()
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256_first_mib": head}


def _head(splits: Mapping[str, MMSADataset], n: int) -> dict[str, MMSADataset]:
    """The first ``n`` samples of every split (``--quick`` on a file)."""
    out = {}
    for name, data in splits.items():
        k = min(n, len(data))
        out[name] = MMSADataset(
            name,
            {key: value[:k] for key, value in data.tensors.items()},
            {key: value[:k] for key, value in data.labels.items()},
            data.ids[:k],
            data.raw_text[:k],
        )
    return out


def load_data(args: argparse.Namespace, dataset: str) -> LoadedData:
    """The data the options ask for.

    ``args.data`` when given (a missing file is an error, never a fallback), else
    ``$DEEPALIGN_DATA/<DATASET>/Processed/unaligned_*.pkl`` when it exists, else synthetic
    data (``args.n_train`` samples of training data). With ``args.quick``, a file is cut to
    its first few batches per split (a smoke test of that file) and synthetic data is tiny.

    Args:
        args: parsed options with ``data``, ``quick`` and ``n_train``.
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (the synthetic layout and the default
            path).

    Returns:
        A :class:`LoadedData`.

    Raises:
        ConfigError: if ``args.data`` is not a file, or ``n_train`` is given with a file.
    """
    if args.data is not None:
        if not args.data.is_file():
            raise ConfigError(f"--data: no such file: {args.data}")
        path: Path | None = args.data
    else:
        default = _default_data_path(dataset)
        path = default if default.is_file() else None
    if path is None:
        n_train = (
            QUICK_BATCHES * QUICK_BATCH_SIZE if args.quick else args.n_train or SYNTHETIC_TRAIN
        )
        options = {"seq_len": 6, "text_dim": 16} if args.quick else {}
        splits = make_synthetic(dataset, n_train=n_train, seed=0, **options)
        data_id = {"synthetic": dataset, "n_train": n_train, "seed": 0, **options}
        tag = "synthetic-quick" if args.quick else "synthetic"
        return LoadedData(splits, True, "synthetic data", tag, data_id)
    if args.n_train is not None:
        raise ConfigError("--n-train: sets the size of synthetic data; it has no use with a file")
    limit = DATA_PRESETS[dataset].label_limit
    try:
        splits = load_mmsa(path, label_range=(-limit, limit))
    except (DataFormatError, UnsafePickleError, CorruptPickleError) as error:
        raise ConfigError(f"--data: {error}") from None
    data_id = _file_id(path)
    tag = _slug(path.stem)
    if args.quick:
        n = QUICK_BATCHES * QUICK_BATCH_SIZE
        splits = _head(splits, n)
        data_id["quick_head"] = n
        tag += "-quick"
    return LoadedData(splits, False, str(path), tag, data_id)


def warn_synthetic(what: str) -> None:
    """Say loudly, on stderr and as a :class:`UserWarning`, that a run uses synthetic data."""
    banner = "=" * 78
    print(
        f"\n{banner}\nNO DATASET FILE: running on SYNTHETIC data ({what}).\nThese numbers say "
        "nothing about the paper's claims. Pass --data PATH to an MMSA pickle or set "
        f"DEEPALIGN_DATA.\n{banner}",
        file=sys.stderr,
    )
    warnings.warn(f"running on synthetic data ({what})", UserWarning, stacklevel=3)


def _option_overrides(args: argparse.Namespace, *, ablation: bool) -> dict[str, Any]:
    """The fields that the dedicated options set (only those given)."""
    out: dict[str, Any] = {}
    if args.bert:
        out["text_encoder"] = str(minilm_path()) if args.bert == "minilm" else args.bert
    if not ablation:
        if args.alignment is not None:
            out["alignment"] = None if args.alignment.lower() == "none" else args.alignment
        if args.estimator is not None:
            out["align_estimator"] = args.estimator
    optional = {
        "text_mode": args.text_mode,
        "text_pooling": args.text_pooling,
        "finetune_text": args.finetune_text,
        "alignment_weight": args.alignment_weight,
        "align_private": args.private,
        "align_on": args.align_on,
        "fusion_modality_dropout": args.modality_dropout,
        "max_epochs": args.epochs,
    }
    return out | {key: value for key, value in optional.items() if value is not None}


def _resolve(
    args: argparse.Namespace, dataset: str, data: LoadedData, *, ablation: bool
) -> tuple[MSAConfig, TrainConfig]:
    """Both configurations: preset < data < --quick < --config < the options < --set."""
    dims = data.splits["train"].dims
    preset_model = MSAConfig.preset(dataset)
    has_ids = "text_bert" in data.splits["train"].tensors
    from_data: dict[str, Any] = {
        "feature_dims": (dims.get("text", preset_model.feature_dims[0]), dims["audio"],
                         dims["vision"]),
        "text_mode": "bert" if has_ids and not data.synthetic else "features",
    }  # fmt: skip
    if data.synthetic and not args.quick:
        from_data["max_epochs"] = SYNTHETIC_EPOCHS
    if not ablation:
        from_data["alignment"] = "V-A"  # the paper's choice for Table III
    sources: list[tuple[str, Mapping[str, Any]]] = [("the data", from_data)]
    if args.quick:
        sources.append(("--quick", {"batch_size": QUICK_BATCH_SIZE, "max_epochs": QUICK_EPOCHS}))
    if args.config is not None:
        sources.append((f"--config {args.config}", read_config_file(args.config)))
    sources.append(("the options", _option_overrides(args, ablation=ablation)))
    assignments = dict(parse_assignment(text) for text in args.assignments)
    sources.append(("--set", assignments))
    if ablation:
        for source, items in sources[1:]:
            if "alignment" in items:
                raise ConfigError(
                    f"{source}: alignment is set per row by ablation_table2 (use --specs)"
                )
    return build_configs(dataset, sources)


def main(
    argv: Sequence[str] | None,
    *,
    dataset: str | None = None,
    description: str,
    example: str,
    ablation: bool = False,
) -> list[RunSummary]:
    """The command line of ``examples/reproduce_<dataset>.py`` and, with ``ablation``, of
    ``examples/ablation_table2.py`` (dataset from its ``--dataset`` option).

    Parses the options, loads the data, resolves both configurations, runs every row on every
    seed (one folder per run), then prints the table and writes, in the output folder:
    ``table.md``, ``results.json`` (every seed's metrics, the paired differences),
    ``seeds.csv``, ``config.json`` (the resolved configuration, readable by ``--config``),
    ``curves.png`` (one axis per loss term) and, with a reference row,
    ``paired_differences.png``.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"``; ``None`` with ``ablation``.
        description: the ``--help`` text's first line.
        example: the example's name, the first part of the default output folder.
        ablation: the Table II ablation (``--dataset``, ``--specs``, several estimators)
            instead of one row (and ``--baseline``).

    Returns:
        The rows' :class:`RunSummary` objects.
    """
    p = _parser(dataset, description, ablation=ablation)
    args = p.parse_args(argv)
    dataset = args.dataset if ablation else dataset
    assert dataset is not None
    started = distributed.init_from_env()
    try:
        try:
            data = load_data(args, dataset)
            model_config, train_config = _resolve(args, dataset, data, ablation=ablation)
            rows = _rows(args, model_config, ablation=ablation)
        except ConfigError as error:
            p.error(str(error))
        if data.synthetic and distributed.is_main():
            warn_synthetic("tiny, --quick" if args.quick else f"the {dataset.upper()} generator")
        try:
            return _run_all(
                args, example, dataset, data, model_config, train_config, rows, ablation
            )
        except ConfigError as error:
            p.error(str(error))
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _rows(
    args: argparse.Namespace, config: MSAConfig, *, ablation: bool
) -> list[tuple[str, MSAConfig]]:
    """(row name, model config) of every row; the reference (no alignment) row last."""
    if not ablation:
        if config.alignment is None:
            if args.baseline:
                raise ConfigError("--baseline: the main row has no alignment already")
            return [("Self_MM (deepalign)", config)]
        rows = [(f"deepalign {config.alignment}", config)]
        if args.baseline:
            rows.append(("Self_MM (deepalign)", dataclasses.replace(config, alignment=None)))
        return rows
    estimators = list(dict.fromkeys(args.estimator or [config.align_estimator]))
    rows = []
    for spec in dict.fromkeys(args.specs or TABLE_II):
        for estimator in estimators:
            # The paper's estimator keeps the bare spec as its name (and run folder), so that
            # adding an estimator later resumes the runs already made.
            name = spec if estimator == "plugin" else f"{spec} ({estimator})"
            rows.append(
                (name, dataclasses.replace(config, alignment=spec, align_estimator=estimator))
            )
    rows.append(("none", dataclasses.replace(config, alignment=None)))
    return rows


def _default_out(
    example: str, dataset: str, data: LoadedData, flat: dict[str, Any], seeds: list[int], rows: list
) -> Path:
    """``runs/<example>/<dataset>-<data>-<8 hex>``: the same options give the same folder."""
    key = {
        "example": example,
        "dataset": dataset,
        "data": data.data_id,
        "config": flat,
        "seeds": seeds,
        "rows": [[name, asdict(config)] for name, config in rows],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / example / f"{dataset}-{data.tag}-{digest}"


def _run_all(
    args: argparse.Namespace,
    example: str,
    dataset: str,
    data: LoadedData,
    model_config: MSAConfig,
    train_config: TrainConfig,
    rows: list[tuple[str, MSAConfig]],
    ablation: bool,
) -> list[RunSummary]:
    if args.seeds:
        seeds = list(dict.fromkeys(s for group in args.seeds for s in group))
    else:
        seeds = [SEEDS[0]] if args.quick else list(SEEDS[: 3 if data.synthetic else 5])
    flat = _flat(model_config, train_config)
    if ablation:
        flat.pop("alignment")
    out = args.out or _default_out(example, dataset, data, flat, seeds, rows)
    progress = not args.quiet
    if distributed.is_main():
        print(f"{example}: {len(rows)} rows x {len(seeds)} seeds, output in {out}", file=sys.stderr)
    summaries = [
        run(data.splits, config, train_config, seeds=seeds, device=args.device,
            out_dir=out, name=name, progress=progress, resume=args.resume,
            data_id=data.data_id, keep_checkpoints=args.keep_checkpoints)
        for name, config in rows
    ]  # fmt: skip
    if distributed.is_main():
        reference = next((n for n, c in rows if c.alignment is None), None)
        if len(rows) < 2:
            reference = None
        _report(args, out, dataset, data, summaries, flat, reference, ablation=ablation)
    return summaries


def _report(
    args: argparse.Namespace,
    out: Path,
    dataset: str,
    data: LoadedData,
    summaries: list[RunSummary],
    flat: dict[str, Any],
    reference: str | None,
    *,
    ablation: bool,
) -> None:
    title = f"{dataset.upper()} — {data.source}, test split, mean ± std over seeds"
    note = _config_note(dataset, flat)
    if ablation:
        table = format_ablation(dataset, summaries, title=title, reference=reference, note=note)
    else:
        table = format_table(dataset, summaries, title=title, reference=reference, note=note)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "seeds.csv").write_text(format_seeds_csv(summaries))
    (out / "config.json").write_text(json.dumps(flat, indent=2) + "\n")
    deltas = compare(summaries, reference) if reference else {}
    record = {
        "dataset": dataset,
        "source": data.source,
        "data": data.data_id,
        "argv": list(sys.argv),
        "torch": torch.__version__,
        "deepalign": deepalign.__version__,
        "config": flat,
        "reference": reference,
        "runs": [asdict(s) for s in summaries],
        "paired": {row: {k: asdict(d) for k, d in ds.items()} for row, ds in deltas.items()},
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    written = ["table.md", "results.json", "seeds.csv", "config.json"]
    if _plot_curves(summaries, out / "curves.png"):
        written.append("curves.png")
    if deltas:
        columns = _ablation_columns(dataset) if ablation else table_columns(dataset)
        if _plot_paired(summaries, deltas, columns, reference, out / "paired_differences.png"):
            written.append("paired_differences.png")
    print(f"Wrote {', '.join(written)} and the runs' folders (seed*/) to {out}")


def _config_note(dataset: str, flat: Mapping[str, Any]) -> str:
    """The fields that differ from the dataset's presets, for the reader of a table."""
    preset = _flat(MSAConfig.preset(dataset), TrainConfig.preset(dataset))
    changed = [f"{k}={json.dumps(v)}" for k, v in flat.items() if preset.get(k) != v]
    return f"Configuration: the {dataset.upper()} presets with " + (
        ", ".join(changed) if changed else "no change"
    )


# ---------------------------------------------------------------------- plots


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (extra deepalign[plot]): no plots", file=sys.stderr)
        return None
    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


_UNIMODAL_TERMS = ("train_text", "train_audio", "train_vision")
_ZERO_START_NOTE = (
    "Self-MM's unimodal terms (text, audio, vision) are exactly 0 in epochs 1 and 2: the "
    "generated labels start equal to the multimodal label and a sample's label moves only "
    "after its loss is taken (docs/ulgm.rst). The summed training loss therefore rises at "
    "epoch 3; that is not a divergence."
)


def _plot_curves(summaries: Sequence[RunSummary], path: Path) -> bool:
    """Write :func:`_curves_figure` to ``path``; ``False`` without matplotlib."""
    if _pyplot() is None:
        return False
    _save(_curves_figure(summaries), path)
    return True


def _curve_keys(summaries: Sequence[RunSummary]) -> list[str]:
    keys = dict.fromkeys(k for s in summaries for h in s.curves for r in h for k in r)
    return [k for k in keys if k.startswith("train_")] + ["valid_loss"]


def _curves_figure(summaries: Sequence[RunSummary]) -> Any:
    """Each training loss term and the validation loss on its own axis, one line per seed,
    with the note on Self-MM's unimodal terms."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    keys = _curve_keys(summaries)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.9), sharex=True, squeeze=False
    )
    for axis, key in zip(axes.flat, keys, strict=False):
        for index, summary in enumerate(summaries):
            for seed, history in zip(summary.seeds, summary.curves, strict=True):
                epochs = [r["epoch"] for r in history if key in r]
                values = [r[key] for r in history if key in r]
                label = summary.name if seed == summary.seeds[0] else None
                axis.plot(epochs, values, f"C{index}", marker=".", label=label)
        title = f"{key.removeprefix('train_')} (train)"
        if key == "valid_loss":
            title = "validation L1 (fusion)"
        elif key == "train_loss":
            title = "total training loss"
        axis.set_title(title, fontsize=10)
        if key in _UNIMODAL_TERMS:
            axis.text(0.98, 0.04, "0 in epochs 1–2 (note below)", transform=axis.transAxes,
                      ha="right", fontsize=8, color="0.3")  # fmt: skip
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    for index, axis in enumerate(axes.flat[: len(keys)]):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if index + ncols >= len(keys):  # nothing visible below it
            axis.set_xlabel("epoch")
            axis.tick_params(labelbottom=True)
    axes.flat[0].legend(fontsize=8)
    fig.text(0.01, 0.005, "\n".join(_wrap(_ZERO_START_NOTE, 150)), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.9 / (3.0 * nrows + 0.9), 1, 1))
    return fig


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


def _plot_paired(
    summaries: Sequence[RunSummary],
    deltas: Mapping[str, Mapping[str, PairedDifference]],
    columns: Sequence[tuple[str, str, float]],
    reference: str,
    path: Path,
) -> bool:
    """Write :func:`_paired_figure` to ``path``; ``False`` without matplotlib."""
    if _pyplot() is None:
        return False
    _save(_paired_figure(summaries, deltas, columns, reference), path)
    return True


def _paired_figure(
    summaries: Sequence[RunSummary],
    deltas: Mapping[str, Mapping[str, PairedDifference]],
    columns: Sequence[tuple[str, str, float]],
    reference: str,
) -> Any:
    """One axis per metric: each row's mean paired difference (marker) and its interval
    (error bar), filled where the interval excludes 0; a line at 0."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    names = [s.name for s in summaries if s.name in deltas]
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    height = 0.3 * len(names) + 1.3
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols + 1.8, height * nrows + 0.5), sharey=True,
        squeeze=False,
    )  # fmt: skip
    for axis, (title, key, scale) in zip(axes.flat, columns, strict=False):
        for y, name in enumerate(names):
            d = deltas[name][key]
            mean = scale * d.mean
            colour = f"C{_estimator_index(summaries, name)}"
            if not math.isnan(d.low):
                axis.errorbar(
                    mean, y, xerr=[[mean - scale * d.low], [scale * d.high - mean]], fmt="none",
                    ecolor=colour, capsize=2, lw=1,
                )  # fmt: skip
            axis.plot(mean, y, "o", color=colour, mfc=colour if d.excludes_zero else "white")
        axis.axvline(0.0, color="0.4", lw=0.8)
        axis.xaxis.set_major_locator(MaxNLocator(4))
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        axis.tick_params(labelsize=8)
        better = "lower" if key in _LOWER_IS_BETTER else "higher"
        unit = " (points)" if scale != 1 else ""
        axis.set_title(f"Δ {title}{unit}\n({better} is better)", fontsize=9)
    for axis in axes.flat[len(columns) :]:
        axis.set_visible(False)
    for row in axes:
        row[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].set_ylim(len(names) - 0.5, -0.5)
    fig.suptitle(
        f"Paired differences against {reference!r} (mean over seeds, 95 % Student-t interval; "
        "filled: the interval excludes 0)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _estimator_index(summaries: Sequence[RunSummary], name: str) -> int:
    estimators = list(dict.fromkeys(s.estimator for s in summaries if s.estimator))
    summary = next(s for s in summaries if s.name == name)
    return estimators.index(summary.estimator) if summary.estimator in estimators else 0
