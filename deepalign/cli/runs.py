"""Multi-seed runs: one configuration over several seeds, one folder per run, with the
resume policy of :mod:`deepalign.rundir`; and the pipeline of the table jobs (rows, runs,
report)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepalign import distributed, rundir
from deepalign.cli.options import ConfigError, slug
from deepalign.data import (
    MMSADataset,
)
from deepalign.model import MSAConfig, MultiTaskMSA
from deepalign.training import TrainConfig, Trainer

__all__ = ["SEEDS", "RunSummary", "run"]

SEEDS = (1111, 1112, 1113, 1114, 1115)
"""The seeds of the paper's tables (MMSA's first five)."""
_RESUME_ADVICE = (
    "(--resume needs the options the runs were started with; without --resume they start afresh)"
)


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
        ran: per seed, what the run used (:meth:`deepalign.MultiTaskMSA.describe`: the text
            encoder and the feature widths), ``None`` where a record does not say.
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
    ran: list[dict[str, Any] | None] = field(default_factory=list)

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
        folder = None if out_dir is None else out_dir / f"seed{seed}" / slug(name)
        identity = rundir.run_identity(model_config, train_config, seed, data_id)
        finished = rundir.finished_run(folder, identity) if resume else None
        if resume and finished is None:
            try:
                rundir.refuse_other_finished_run(folder, identity)
            except rundir.RunMismatchError as error:
                raise ConfigError(f"--resume: {error}\n{_RESUME_ADVICE}") from None
        if progress and distributed.is_main():
            what = "finished, read back" if finished else "training"
            where = f" in {folder}" if folder else ""
            print(f"[{name}] seed {seed} ({position}/{len(seeds)}): {what}{where}", file=sys.stderr)
        if finished is None:
            torch.manual_seed(seed)
            try:
                model = MultiTaskMSA(model_config)
            except (OSError, ImportError) as error:  # the text encoder: say why, stop
                raise ConfigError(f"text encoder (--bert, text_encoder): {error}") from None
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
                raise ConfigError(f"--resume: {error}\n{_RESUME_ADVICE}") from None
            if folder is not None and not keep_checkpoints and distributed.is_main():
                rundir.remove_checkpoints(folder)
            finished = {
                "best_epoch": result.best_epoch,
                "epochs": result.epochs,
                "valid": result.valid,
                "test": result.test,
                "history": result.history,
                "ran": model.describe(),
            }
        for key, value in finished["test"].items():
            summary.test.setdefault(key, []).append(value)
        for key, value in finished["valid"].items():
            summary.valid.setdefault(key, []).append(value)
        summary.curves.append(finished["history"])
        summary.best_epochs.append(finished["best_epoch"])
        summary.epochs.append(finished["epochs"])
        summary.ran.append(finished.get("ran"))
    return summary


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
