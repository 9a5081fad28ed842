"""The table jobs' pipeline (``reproduce`` and ``ablation``): their options, the rows, the
runs, and the report (``table.md``, ``results.json``, ``seeds.csv``, ``config.json``, plots).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import deepalign
from deepalign import distributed
from deepalign.alignment import ESTIMATORS, PRIVATE_MODES
from deepalign.cli.data import (
    QUICK_BATCH_SIZE,
    QUICK_BATCHES,
    QUICK_EPOCHS,
    SYNTHETIC_EPOCHS,
    SYNTHETIC_TRAIN,
    LoadedData,
    load_data,
    warn_synthetic,
)
from deepalign.cli.options import (
    ConfigError,
    build_configs,
    flat_config,
    parse_assignment,
    read_config_file,
    seed_list,
)
from deepalign.cli.plots import plot_curves, plot_paired
from deepalign.cli.runs import SEEDS, RunSummary, run
from deepalign.cli.tables import (
    TABLE_II,
    ablation_columns,
    compare,
    format_ablation,
    format_seeds_csv,
    format_table,
    table_columns,
)
from deepalign.model import ALIGN_ON, TEXT_MODES, TEXT_POOLING, MSAConfig
from deepalign.training import TrainConfig

__all__ = ["add_options", "execute"]

EPILOG = (
    "Every field of MSAConfig and TrainConfig: --config FILE.json and --set field=value (later "
    "wins: preset < data < --config < options < --set). The resolved configuration is written "
    "to config.json beside the results."
)


def add_options(p: argparse.ArgumentParser, *, ablation: bool = False) -> None:
    """Add the options of a table job to ``p`` (with ``ablation``, those of Table II)."""
    where = "$DEEPALIGN_DATA/<DATASET>/Processed/unaligned_50.pkl (unaligned_39.pkl for SIMS)"
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"MMSA pickle; None: {where} when it exists, synthetic data otherwise (with a "
        "notice). A missing file is an error.",
    )
    model = p.add_argument_group("model (MSAConfig)")
    model.add_argument(
        "--bert",
        "--text-encoder",
        dest="bert",
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
        type=seed_list,
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
    runs.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train (a torch device: cpu, cuda, cuda:1, ...; the default is this "
        "machine's: cuda when available)",
    )
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


def _option_overrides(args: argparse.Namespace, *, ablation: bool) -> dict[str, Any]:
    """The fields that the dedicated options set (only those given)."""
    out: dict[str, Any] = {}
    if args.bert:
        out["text_encoder"] = args.bert
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


def execute(
    args: argparse.Namespace, *, job: str, dataset: str, ablation: bool = False
) -> list[RunSummary]:
    """Run a table job: load the data, resolve both configurations, run every row on every
    seed (one folder per run), then print the table and write, in the output folder,
    ``table.md``, ``results.json`` (every seed's metrics, the paired differences, what ran),
    ``seeds.csv``, ``config.json`` (the resolved configuration, readable by ``--config``),
    ``curves.png`` and, with a reference row, ``paired_differences.png``.

    Args:
        args: the options of :func:`add_options`.
        job: the job's name, the first part of the default output folder
            (``reproduce_mosi``, ``ablation_table2``).
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"``.
        ablation: the Table II rows (every spec and the reference) instead of one row.

    Returns:
        The rows' :class:`~deepalign.cli.runs.RunSummary` objects.

    Raises:
        ConfigError: for options that cannot be used together, data that cannot be read, or a
            resume refused.
    """
    started = distributed.init_from_env()
    try:
        data = load_data(args, dataset)
        model_config, train_config = _resolve(args, dataset, data, ablation=ablation)
        rows = _rows(args, model_config, ablation=ablation)
        if data.synthetic and distributed.is_main():
            warn_synthetic("tiny, --quick" if args.quick else f"the {dataset.upper()} generator")
        return _run_all(args, job, dataset, data, model_config, train_config, rows, ablation)
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
    job: str, dataset: str, data: LoadedData, flat: dict[str, Any], seeds: list[int], rows: list
) -> Path:
    """``runs/<job>/<dataset>-<data>-<8 hex>``: the same options give the same folder."""
    key = {
        "example": job,
        "dataset": dataset,
        "data": data.data_id,
        "config": flat,
        "seeds": seeds,
        "rows": [[name, asdict(config)] for name, config in rows],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / job / f"{dataset}-{data.tag}-{digest}"


def _run_all(
    args: argparse.Namespace,
    job: str,
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
    flat = flat_config(model_config, train_config)
    if ablation:
        flat.pop("alignment")
    out = args.out or _default_out(job, dataset, data, flat, seeds, rows)
    progress = not args.quiet
    if distributed.is_main():
        print(f"{job}: {len(rows)} rows x {len(seeds)} seeds, output in {out}", file=sys.stderr)
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
    ran = _what_ran(summaries)
    if ran:  # the configuration as it ran: the encoder and the widths actually used
        flat = {**flat, "feature_dims": ran["feature_dims"]}
        if ran["text_encoder"] is not None:
            flat["text_encoder"] = _encoder_field(flat["text_encoder"], ran["text_encoder"])
    title = f"{dataset.upper()} — {data.source}, test split, mean ± std over seeds"
    note = _config_note(dataset, flat) + "\n\n" + _ran_note(ran)
    paper = not data.synthetic
    if ablation:
        table = format_ablation(
            dataset, summaries, title=title, reference=reference, note=note, paper=paper
        )
    else:
        table = format_table(
            dataset, summaries, title=title, reference=reference, note=note, paper=paper
        )
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "seeds.csv").write_text(format_seeds_csv(summaries))
    (out / "config.json").write_text(json.dumps(flat, indent=2) + "\n")
    deltas = compare(summaries, reference) if reference else {}
    record = {
        "dataset": dataset,
        "source": data.source,
        "synthetic": data.synthetic,
        "data": data.data_id,
        "argv": _portable_argv(getattr(args, "argv", sys.argv)),
        "torch": torch.__version__,
        "deepalign": deepalign.__version__,
        "ran": ran,
        "config": flat,
        "reference": reference,
        "runs": [asdict(s) for s in summaries],
        "paired": {row: {k: asdict(d) for k, d in ds.items()} for row, ds in deltas.items()},
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    written = ["table.md", "results.json", "seeds.csv", "config.json"]
    if plot_curves(summaries, out / "curves.png"):
        written.append("curves.png")
    if deltas:
        columns = ablation_columns(dataset) if ablation else table_columns(dataset)
        if plot_paired(summaries, deltas, columns, reference, out / "paired_differences.png"):
            written.append("paired_differences.png")
    print(f"Wrote {', '.join(written)} and the runs' folders (seed*/) to {out}")


def _what_ran(summaries: list[RunSummary]) -> dict[str, Any] | None:
    """The text encoder and feature widths the runs used (the same for every row)."""
    return next((r for s in summaries for r in s.ran if r), None)


def _encoder_field(configured: str, ran: Mapping[str, Any]) -> str:
    """The ``text_encoder`` value of the encoder that ran, without a machine path."""
    if ran.get("source") == "package":
        return "minilm"
    if ran.get("source") == "local directory" or Path(configured).is_absolute():
        return ran["name"]
    return ran["name"] if ran.get("name") else configured


def _ran_note(ran: Mapping[str, Any] | None) -> str:
    """One sentence on what ran: the text encoder (or features) and the widths."""
    if not ran:
        return "Ran: nothing (every run was read back from an earlier record)."
    widths = ", ".join(
        f"{m} {w}" for m, w in zip(("text", "audio", "vision"), ran["feature_dims"], strict=True)
    )
    encoder = ran["text_encoder"]
    if encoder is None:
        what = "text features (no text encoder)"
    else:
        origin = encoder["source"]
        if "package" in encoder:
            origin = f"package {encoder['package']} {encoder['version']}"
        what = f"text encoder {encoder['name']} ({encoder['width']}-d, {origin})"
    return f"Ran: {what}; feature widths {widths}."


def _portable_argv(argv: list[str]) -> list[str]:
    """The command line without the machine's paths: absolute paths become their names."""
    out = []
    for arg in argv:
        key, sep, value = arg.rpartition("=")
        if Path(value).is_absolute():
            arg = f"{key}{sep}{Path(value).name}"
        out.append(arg)
    return out


def _config_note(dataset: str, flat: Mapping[str, Any]) -> str:
    """The fields that differ from the dataset's presets, for the reader of a table."""
    preset = flat_config(MSAConfig.preset(dataset), TrainConfig.preset(dataset))
    changed = [f"{k}={json.dumps(v)}" for k, v in flat.items() if preset.get(k) != v]
    return f"Configuration: the {dataset.upper()} presets with " + (
        ", ".join(changed) if changed else "no change"
    )
