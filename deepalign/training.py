r"""The training loop that ties :class:`~deepalign.MultiTaskMSA`, the :class:`~deepalign.ULGM`,
the alignment loss and the metrics together (paper Eq. 30–34), as MMSA's Self-MM trains.

Per batch, the objective is

.. math::

    L = \underbrace{\tfrac1B\textstyle\sum_i |\hat y_M^i - y_M^i|}_{\text{fusion}}
        + \underbrace{\textstyle\sum_s \tfrac1B\sum_i w_s^i |\hat y_s^i - y_s^i|}_{\text{ULGM}}
        + w_\text{align}\textstyle\sum_\text{terms}\theta_\text{term},

followed by the ULGM's label update. :class:`TrainConfig` holds what training needs (batch
size, Adam's per-group rates and decays, gradient accumulation, patience, the metric set, the
ULGM bound); :class:`Trainer` accumulates gradients over ``accumulate_grad_batches`` batches as
MMSA does, stops early on the validation L1 loss of the fusion head, evaluates with
:func:`deepalign.metrics.msa_metrics`, logs every epoch (JSON, CSV and callbacks), writes a
crash-safe checkpoint each epoch and resumes to exactly the result of an uninterrupted run.
Under ``torchrun`` it trains data-parallel with one shared ULGM state (:doc:`/distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

import deepalign
from deepalign import distributed, rundir
from deepalign._checks import check_choice, check_in_range, check_positive_int
from deepalign.data import LABEL_KEYS, MMSADataset, collate
from deepalign.functional import MIN_ROWS
from deepalign.metrics import DATASETS, msa_metrics
from deepalign.model import MultiTaskMSA, _preset
from deepalign.ulgm import ULGM

__all__ = [
    "CHECKPOINT",
    "PREVIOUS_CHECKPOINT",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "parameter_groups",
]

CHECKPOINT = rundir.CHECKPOINT
"""File name of the checkpoint in ``out_dir`` (the last finished epoch;
:data:`deepalign.rundir.CHECKPOINT`)."""
PREVIOUS_CHECKPOINT = rundir.PREVIOUS_CHECKPOINT
"""File name of the checkpoint of the epoch before :data:`CHECKPOINT`'s, kept as a fallback
(:data:`deepalign.rundir.PREVIOUS_CHECKPOINT`)."""
RESUME_MISMATCH = ("error", "override")

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "mosi": {
        "dataset": "mosi",
        "batch_size": 16,
        "lr_text": 5e-5,
        "lr_audio": 5e-3,
        "lr_vision": 5e-3,
        "lr_other": 1e-3,
        "weight_decay_text": 1e-3,
        "weight_decay_audio": 1e-3,
        "weight_decay_vision": 1e-3,
        "weight_decay_other": 1e-3,
        "patience": 8,
        "accumulate_grad_batches": 4,
        "H": 3.0,
    },
    "mosei": {
        "dataset": "mosei",
        "batch_size": 32,
        "lr_text": 5e-5,
        "lr_audio": 5e-3,
        "lr_vision": 1e-4,
        "lr_other": 1e-3,
        "weight_decay_text": 1e-3,
        "weight_decay_audio": 0.0,
        "weight_decay_vision": 0.0,
        "weight_decay_other": 1e-2,
        "patience": 8,
        "accumulate_grad_batches": 4,
        "H": 3.0,
    },
    "sims": {
        "dataset": "sims",
        "batch_size": 32,
        "lr_text": 5e-5,
        "lr_audio": 5e-3,
        "lr_vision": 5e-3,
        "lr_other": 1e-3,
        "weight_decay_text": 1e-3,
        "weight_decay_audio": 1e-2,
        "weight_decay_vision": 1e-2,
        "weight_decay_other": 1e-3,
        "patience": 8,
        "accumulate_grad_batches": 4,
        "H": 1.0,
    },
}
"""Dataset name -> the fields :meth:`TrainConfig.preset` sets (MMSA 2.2.1's Self-MM values)."""

_RATES = tuple(
    f"{kind}_{group}"
    for kind in ("lr", "weight_decay")
    for group in ("text", "audio", "vision", "other")
)


@dataclass(frozen=True)
class TrainConfig:
    """What :class:`Trainer` needs besides the model (defaults: the MOSI preset); immutable.

    Build one with :meth:`preset`; change a field with :func:`dataclasses.replace`, which
    validates as the constructor does. The values of the presets are MMSA 2.2.1's Self-MM
    configuration ([Mao2022]_, [Yu2021]_).

    Attributes:
        dataset: the metric set, ``"mosi"``, ``"mosei"`` or ``"sims"``
            (:func:`deepalign.metrics.msa_metrics`); the trainer checks it against the data.
        batch_size: samples per batch (at least 2 with an alignment: a covariance needs 2).
        lr_text, lr_audio, lr_vision, lr_other: Adam learning rates of the parameter groups of
            :func:`parameter_groups` (text encoder, audio encoder,
            vision encoder, everything else).
        weight_decay_text, weight_decay_audio, weight_decay_vision, weight_decay_other: their
            weight decays (text-encoder biases and LayerNorm weights always get 0).
        patience: early stopping after this many epochs without a better validation loss.
        max_epochs: upper bound on the epochs.
        accumulate_grad_batches: ``k``, batches whose gradients are summed into one optimiser
            step (MMSA's ``update_epochs``; an incomplete trailing group is never stepped,
            see :doc:`/training`).
        H: bound of the generated unimodal labels (:class:`deepalign.ULGM`'s ``H``).
        num_workers: worker processes of the DataLoaders (0: load in the main process).
        pin_memory: pin the batches in page-locked memory (used on CUDA only).
        cache_text_features: with a frozen text encoder
            (:attr:`MSAConfig.finetune_text <deepalign.MSAConfig>` false), compute its output
            once per split and train on the cached features; ignored otherwise.

    Raises:
        ValueError: from ``__post_init__`` (also under :func:`dataclasses.replace`) for an
            unknown ``dataset``, a negative or non-finite rate, a count below its minimum or a
            non-positive ``H``.
        TypeError: for a field of the wrong type.

    Example:
        >>> import dataclasses
        >>> from deepalign.training import TrainConfig
        >>> config = TrainConfig.preset("sims")
        >>> config.batch_size, config.lr_vision, config.H, config.accumulate_grad_batches
        (32, 0.005, 1.0, 4)
        >>> dataclasses.replace(config, patience=3).patience
        3
    """

    dataset: str = "mosi"
    batch_size: int = 16
    lr_text: float = 5e-5
    lr_audio: float = 5e-3
    lr_vision: float = 5e-3
    lr_other: float = 1e-3
    weight_decay_text: float = 1e-3
    weight_decay_audio: float = 1e-3
    weight_decay_vision: float = 1e-3
    weight_decay_other: float = 1e-3
    patience: int = 8
    max_epochs: int = 50
    accumulate_grad_batches: int = 4
    H: float = 3.0
    num_workers: int = 0
    pin_memory: bool = False
    cache_text_features: bool = True

    def __post_init__(self) -> None:
        check_choice(self.dataset, "dataset", DATASETS)
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.patience, "patience")
        check_positive_int(self.max_epochs, "max_epochs")
        check_positive_int(self.accumulate_grad_batches, "accumulate_grad_batches")
        check_positive_int(self.num_workers, "num_workers", minimum=0)
        for name in _RATES:
            check_in_range(getattr(self, name), name, 0.0, math.inf)
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")
        check_in_range(self.H, "H", 0.0, math.inf)
        if not 0 < self.H < math.inf:
            raise ValueError(f"H: expected a positive finite number, got {self.H}")
        for name in ("pin_memory", "cache_text_features"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{name}: expected a bool, got {type(getattr(self, name)).__name__}"
                )

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """MMSA's Self-MM training configuration of ``dataset``, with ``overrides`` applied.

        Args:
            dataset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (case-insensitive); it is also the
                :attr:`dataset` field.
            **overrides: field values that replace the preset's.

        Returns:
            A new :class:`TrainConfig`.

        Raises:
            ValueError: for an unknown ``dataset`` (and as the class for bad values).
            TypeError: for an override that is not a field.

        Example:
            >>> TrainConfig.preset("MOSEI", max_epochs=3).batch_size
            32
        """
        return _preset(cls, TRAIN_PRESETS, dataset, overrides)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        best_epoch: the epoch whose model had the lowest validation loss (1-based).
        epochs: epochs trained (early stopping may end before ``max_epochs``).
        valid: metrics of the best epoch on the validation split (plus ``loss``).
        test: metrics of the best epoch's model on the test split (plus ``loss``).
        history: one dict per epoch: the mean of every training loss term, the validation loss
            and metrics, the wall time.
    """

    best_epoch: int
    epochs: int
    valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]]


class Trainer:
    """Train a :class:`~deepalign.MultiTaskMSA` with the ULGM and its alignment terms.

    The :class:`TrainConfig` supplies the batch size, the optimiser groups, gradient
    accumulation, early stopping, the metric set and the ULGM bound ``H``; the model's
    :class:`~deepalign.MSAConfig` the widths. Build the model after :func:`torch.manual_seed`
    for a reproducible run: on the CPU, the same seed gives the same result, also across
    :meth:`fit` with ``resume=True``, and also after the process was killed at any moment
    (:doc:`/reliability`).

    **Callbacks** receive, after each epoch, a copy of that epoch's record (the dict appended
    to :attr:`TrainResult.history <TrainResult>`: ``epoch``, every ``train_*`` loss term,
    every ``valid_*`` metric, ``seconds``); with ``log_every_step=True`` also, after each
    optimiser step, a record with ``step`` (1-based, counted over the run), ``epoch`` and the
    ``train_*`` loss terms averaged over the step's batches. Step records are the ones with a
    ``step`` key. :doc:`/training` shows TensorBoard's ``SummaryWriter`` fed this way.

    Args:
        model: the model to train (moved to ``device``).
        splits: ``"train"``, ``"valid"`` and ``"test"`` datasets, e.g. from
            :func:`deepalign.data.load_mmsa` or :func:`deepalign.data.make_synthetic`.
        config: the training configuration; ``None`` (default) is ``TrainConfig()``, MOSI's.
        seed: seeds the order of the training batches. Default 1111.
        device: where to train. Default ``"cpu"``.
        out_dir: where the checkpoints, the logs (``history.json``, ``history.csv``,
            ``run.json``) and ``results.json`` go; ``None`` (default) writes nothing (and
            cannot resume).
        progress: print one line per epoch to stderr (run name, seed, epoch, train loss,
            validation loss, seconds) and, when stderr is a terminal, tqdm bars (needs the
            ``progress`` extra). Default ``False``.
        callbacks: callables that receive each epoch's record (and each step's, see above).
        log_every_step: also call the callbacks after every optimiser step (one host
            synchronisation per step). Default ``False``.
        resume_mismatch: what :meth:`fit` with ``resume=True`` does when the checkpoint's
            configuration differs from this one: ``"error"`` (default) raises with the
            differences; ``"override"`` warns, continues and records the differences in
            ``run.json``.
        data_id: what identifies the data (e.g. the file's size and a hash), stored in the
            checkpoint and compared on resume; JSON values only. Default ``None``.

    Raises:
        ValueError: if a split is missing, ``config.dataset`` contradicts the labels (a SIMS
            file scored as MOSI or the reverse), ``batch_size`` is below what the alignment's
            estimator needs (2 rows, 4 for ``"unbiased"``), an epoch has fewer batches than
            ``accumulate_grad_batches``, or ``resume_mismatch`` is unknown.
        TypeError: if ``model``, ``config``, ``callbacks`` or ``data_id`` has the wrong type.

    Example:
        >>> from deepalign import MSAConfig, MultiTaskMSA
        >>> from deepalign.data import make_synthetic
        >>> splits = make_synthetic("mosi", n_train=32, seq_len=4, text_dim=8, seed=0)
        >>> model_config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20),
        ...                                 alignment="V-A")
        >>> config = TrainConfig.preset("mosi", batch_size=8, max_epochs=2)
        >>> _ = torch.manual_seed(0)
        >>> result = Trainer(MultiTaskMSA(model_config), splits, config).fit()
        >>> result.epochs, sorted(result.test)[:3]
        (2, ['Corr', 'Has0_F1_score', 'Has0_acc_2'])
    """

    def __init__(
        self,
        model: MultiTaskMSA,
        splits: Mapping[str, MMSADataset],
        config: TrainConfig | None = None,
        *,
        seed: int = 1111,
        device: str | torch.device = "cpu",
        out_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
        callbacks: Sequence[Callable[[dict[str, float]], object]] = (),
        log_every_step: bool = False,
        resume_mismatch: str = "error",
        data_id: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, MultiTaskMSA):
            raise TypeError(f"model: expected a MultiTaskMSA, got {type(model).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig or None, got {type(config).__name__}")
        missing = [s for s in ("train", "valid", "test") if s not in splits]
        if missing:
            raise ValueError(f"splits: expected train, valid and test, missing {missing}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.callbacks = _check_callbacks(callbacks)
        self.resume_mismatch = check_choice(resume_mismatch, "resume_mismatch", RESUME_MISMATCH)
        self.data_id = _check_data_id(data_id)
        _check_dataset(config.dataset, splits)
        self.min_batch = _min_batch(model)
        if model.alignment is not None and config.batch_size < self.min_batch:
            raise ValueError(
                f"batch_size: expected at least {self.min_batch} with the alignment's "
                f"{model.config.align_estimator!r} estimator, got {config.batch_size}"
            )
        per_rank = -(-len(splits["train"]) // distributed.world_size())
        batches = _train_batches(per_rank, config.batch_size, self.min_batch)
        if batches < config.accumulate_grad_batches:
            raise ValueError(
                f"accumulate_grad_batches: expected at most the {batches} training batches of "
                f"an epoch (the optimiser steps after every {config.accumulate_grad_batches}), "
                f"got {config.accumulate_grad_batches}"
            )
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.splits = splits
        self.seed = seed
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.run_name = "run" if self.out_dir is None else self.out_dir.name
        self.progress = progress
        self.log_every_step = bool(log_every_step)
        self.ulgm = self._build_ulgm(splits["train"]).to(self.device)
        self.optimizer = torch.optim.Adam(parameter_groups(model, config))
        self.network = self._wrap(model)
        self.state: dict[str, Any] = {
            "epoch": 0, "best_epoch": 0, "best_loss": math.inf, "bad_epochs": 0, "step": 0,
        }  # fmt: skip
        self.best_model: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self.overrides: list[dict[str, Any]] = []
        self.use_text_cache = model.text_frozen and config.cache_text_features
        self._text_cache: dict[str, torch.Tensor] = {}

    def _build_ulgm(self, train: MMSADataset) -> ULGM:
        c = self.model.config
        dims = {"fusion": c.post_fusion_dim, "text": c.post_text_dim}
        dims |= {"audio": c.post_audio_dim, "vision": c.post_vision_dim}
        ulgm = ULGM(len(train), dims, H=self.config.H)
        ulgm.init_labels(torch.arange(len(train)), train.labels["fusion"])
        return ulgm

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not distributed.is_active():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def run_identity(self) -> dict[str, Any]:
        """The resolved configuration of the run, as the checkpoint stores and resume compares it.

        Returns:
            ``{"model": ..., "train": ..., "seed": ..., "version": ..., "data": ...}`` with
            JSON values: the two configs as dicts, the seed, ``deepalign.__version__`` and
            ``data_id`` (or ``None``); see :func:`deepalign.rundir.run_identity`.
        """
        return rundir.run_identity(
            self.model.config, self.config, self.seed, self.data_id, version=deepalign.__version__
        )

    # ------------------------------------------------------------------ the loop

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train until early stopping or ``max_epochs``, then test the best epoch's model.

        Args:
            resume: continue from ``out_dir/checkpoint.pt`` when it exists (a missing one
                starts afresh). The checkpoint's configuration must equal this trainer's
                (:meth:`run_identity`; ``max_epochs`` may grow, ``num_workers`` and
                ``pin_memory`` may change) unless ``resume_mismatch="override"``.

        Returns:
            The :class:`TrainResult`.

        Raises:
            ValueError: with ``resume=True``: no ``out_dir``; a checkpoint that cannot be read
                (the message names the file and what to do) or that does not fit the model;
                a configuration that differs from the checkpoint's (the message lists the
                differences), unless ``resume_mismatch="override"``.
        """
        if resume:
            if self.out_dir is None:
                raise ValueError("resume: expected an out_dir to resume from, got out_dir=None")
            self._load_checkpoint()
        self._write_run()
        while not self._finished():
            epoch = self.state["epoch"] + 1
            started = time.perf_counter()
            record: dict[str, float] = {"epoch": epoch, **self._train_epoch(epoch)}
            valid = self.evaluate("valid")
            record |= {f"valid_{k}": v for k, v in valid.items()}
            record["seconds"] = time.perf_counter() - started
            self._end_epoch(epoch, valid["loss"], record)
            self._report(record)
        self.model.load_state_dict(self.best_model)
        result = TrainResult(
            best_epoch=self.state["best_epoch"],
            epochs=self.state["epoch"],
            valid=self._best_valid(),
            test=self.evaluate("test"),
            history=self.history,
        )
        self._write(result)
        return result

    def _finished(self) -> bool:
        s = self.state
        return s["epoch"] >= self.config.max_epochs or s["bad_epochs"] >= self.config.patience

    def _end_epoch(self, epoch: int, valid_loss: float, record: dict[str, float]) -> None:
        self.state["epoch"] = epoch
        if valid_loss < self.state["best_loss"]:
            self.state |= {"best_epoch": epoch, "best_loss": valid_loss, "bad_epochs": 0}
            self.best_model = copy.deepcopy(self.model.state_dict())
        else:
            self.state["bad_epochs"] += 1
        self.history.append(record)
        self._save_checkpoint()

    def _report(self, record: dict[str, float]) -> None:
        """The epoch's progress line, then the callbacks."""
        if self.progress and distributed.is_main():
            print(
                f"{self.run_name} seed {self.seed}: epoch {record['epoch']}/"
                f"{self.config.max_epochs}  train loss {record['train_loss']:.4f}  "
                f"valid loss {record['valid_loss']:.4f}  {record['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        for callback in self.callbacks:
            callback(dict(record))

    def _best_valid(self) -> dict[str, float]:
        record = self.history[self.state["best_epoch"] - 1]
        return {k[6:]: v for k, v in record.items() if k.startswith("valid_")}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch as MMSA's Self-MM: gradients summed over groups of ``k`` batches.

        ``zero_grad`` at the first batch of each group, ``backward`` on every batch, the ULGM
        update after every batch, ``optimizer.step`` after the ``k``-th; the gradients of an
        incomplete trailing group are dropped at the next epoch's first ``zero_grad``.
        """
        self.network.train()
        k = self.config.accumulate_grad_batches
        epoch_means, step_means = _Means(), _Means()
        for position, batch in enumerate(self._batches("train", epoch)):
            if position % k == 0:
                self.optimizer.zero_grad(set_to_none=True)
            steps = position % k == k - 1
            with self._sync_gradients(steps):
                terms = self._train_step(batch, epoch)
            size = len(batch["index"])
            epoch_means.add(terms, size)
            if self.log_every_step:
                step_means.add(terms, size)
            if steps:
                self.optimizer.step()
                self.state["step"] += 1
                if self.log_every_step:
                    self._step_record(epoch, step_means)
                    step_means = _Means()
        # One host synchronisation per epoch, not one per term and step.
        return epoch_means.result()

    def _sync_gradients(self, steps: bool) -> contextlib.AbstractContextManager[None]:
        """Under DDP, all-reduce the gradients only on the batch that ends a group."""
        if steps or not isinstance(self.network, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.network.no_sync()

    def _step_record(self, epoch: int, means: _Means) -> None:
        record: dict[str, float] = {"step": self.state["step"], "epoch": epoch}
        record |= means.result()
        for callback in self.callbacks:
            callback(dict(record))

    def _train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        """Forward, backward and the ULGM update of one batch; no optimiser step."""
        args, kwargs = self._inputs(batch, "train")
        outputs = self.network(*args, **kwargs)
        index = batch["index"].to(self.device, non_blocking=True)
        ulgm_loss, ulgm_terms = self.ulgm.loss(outputs["predictions"], index, return_terms=True)
        # One computation of the alignment's statistics gives the loss and what is logged.
        if outputs["predictions"]["fusion"].shape[0] < MIN_ROWS["unbiased"]:
            align_loss, align_terms = self.model.alignment_loss(outputs, return_terms=True)
            diagnostics = {}
        else:
            align_loss, align_terms, diagnostics = self.model.alignment_loss_and_diagnostics(
                outputs
            )
        loss = ulgm_loss + align_loss
        loss.backward()
        features = {name: value.detach() for name, value in outputs["post"].items()}
        self.ulgm.step(features, index, epoch)
        terms = {"loss": loss, "alignment": align_loss} | ulgm_terms
        terms |= {f"align_{name}": value for name, value in align_terms.items()}
        terms |= self._diagnostics(diagnostics)
        return {name: value.detach() for name, value in terms.items()}

    def _diagnostics(self, diagnostics: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per term the plug-in and unbiased theta and the floor; per modality its scale, from
        the diagnostics that the step's alignment loss computed with it.

        Empty for a batch below the unbiased estimator's minimum of rows (a short last
        batch); the epoch's means then cover the other batches.
        """
        found: dict[str, torch.Tensor] = {}
        for term, (name, d) in zip(self.model.alignment.terms if diagnostics else (),
                                   diagnostics.items(), strict=True):  # fmt: skip
            found[f"align_{name}_plugin"] = d.plugin
            found[f"align_{name}_unbiased"] = d.unbiased
            found[f"align_{name}_floor"] = d.floor
            found[f"scale_{term.first}"] = d.scale_a
            found[f"scale_{term.second}"] = d.scale_b
        return found

    def _inputs(
        self, batch: dict[str, Any], split: str
    ) -> tuple[tuple[torch.Tensor | None, ...], dict[str, torch.Tensor]]:
        """Positional and keyword arguments of the model for ``batch`` of ``split``."""
        move = self._move
        audio, vision = move(batch["audio"]), move(batch["vision"])
        kwargs = {}
        if self.use_text_cache:
            text = None
            kwargs["text_features"] = self.text_cache(split)[move(batch["index"])]
        elif self.model.config.text_mode == "bert":
            text = batch["text_bert"]  # the model trims it on the CPU, then moves it
        else:
            text = move(batch["text"])
        return (text, audio, batch["audio_lengths"], vision, batch["vision_lengths"]), kwargs

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=self._pin_memory)

    @property
    def _pin_memory(self) -> bool:
        return self.config.pin_memory and self.device.type == "cuda"

    @torch.no_grad()
    def text_cache(self, split: str) -> torch.Tensor:
        """The frozen text encoder's output for every sample of ``split``, computed once.

        Row ``i`` is :meth:`MultiTaskMSA.encode_text <deepalign.MultiTaskMSA.encode_text>` of
        sample ``i``, computed in evaluation mode without gradient, in batches of
        ``batch_size`` in split order. The trainer uses it instead of running the encoder when
        the encoder is frozen and ``cache_text_features`` is set.

        Shape:
            - output: :math:`(N, d_t)` on the trainer's device.

        Raises:
            ValueError: if the model has no frozen text encoder.
        """
        if not self.model.text_frozen:
            raise ValueError(
                "text_cache: expected a model with a frozen text encoder (text_mode='bert', "
                "finetune_text=False)"
            )
        if split not in self._text_cache:
            loader = self._ordered_loader(self.splits[split])
            rows = [self.model.encode_text(batch["text_bert"]) for batch in loader]
            self._text_cache[split] = torch.cat(rows)
        return self._text_cache[split]

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """The metrics of the current model on ``split`` and its fusion-head L1 ``loss``.

        Under ``torchrun`` each rank predicts a share and the predictions are gathered, so every
        rank returns the metrics of the whole split.
        """
        self.network.eval()
        preds, truths, indexes = [], [], []
        for batch in self._batches(split):
            args, kwargs = self._inputs(batch, split)
            fusion = self.model(*args, **kwargs)["predictions"]["fusion"]
            preds.append(fusion.reshape(-1).cpu())
            truths.append(batch["labels"]["fusion"])
            indexes.append(batch["index"])
        pred, truth = self._gather(torch.cat(preds), torch.cat(truths), torch.cat(indexes))
        metrics = msa_metrics(pred, truth, dataset=self.config.dataset)
        return {"loss": float((pred - truth).abs().mean()), **metrics}

    def _gather(self, *columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and truths of all ranks, in split order."""
        pred, truth, index = (distributed.gather_rows(c.to(self.device)).cpu() for c in columns)
        order = index.argsort()
        return pred[order], truth[order]

    def _batches(self, split: str, epoch: int | None = None) -> Iterator[dict[str, Any]]:
        data = self.splits[split]
        world, rank = distributed.world_size(), distributed.rank()
        if epoch is None:  # evaluation: a strided share per rank, no padding duplicates
            loader = self._ordered_loader(Subset(data, range(rank, len(data), world)))
        else:
            loader = self._train_loader(data, epoch, world, rank)
        if self.progress and distributed.is_main() and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # the bars are optional (extra "progress"); the lines remain
                return iter(loader)
            where = f"epoch {epoch}/{self.config.max_epochs}" if epoch else split
            desc = f"{self.run_name} seed {self.seed} {where}"
            return iter(tqdm(loader, desc=desc, leave=False, file=sys.stderr))
        return iter(loader)

    def _ordered_loader(self, data: Dataset) -> DataLoader:
        """Batches in order. The loader gets its own generator: a DataLoader without one draws
        its workers' base seed from the global RNG, so evaluating (or filling the text cache)
        would shift the dropout masks of the training that follows."""
        return DataLoader(
            data, batch_size=self.config.batch_size, collate_fn=collate,
            num_workers=self.config.num_workers, pin_memory=self._pin_memory,
            generator=torch.Generator(),
        )  # fmt: skip

    def _train_loader(self, data: MMSADataset, epoch: int, world: int, rank: int) -> DataLoader:
        per_rank = -(-len(data) // world)  # DistributedSampler pads every rank to this
        drop_last = _drops_last(per_rank, self.config.batch_size, self.min_batch)
        options = {
            "batch_size": self.config.batch_size, "collate_fn": collate, "drop_last": drop_last,
            "num_workers": self.config.num_workers, "pin_memory": self._pin_memory,
        }  # fmt: skip
        if world > 1:
            sampler = DistributedSampler(data, world, rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            return DataLoader(data, sampler=sampler, **options)
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(data, shuffle=True, generator=generator, **options)

    # ------------------------------------------------------------------ files

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ulgm": self.ulgm.state_dict(),
            "best_model": self.best_model,
            "state": dict(self.state),
            "history": self.history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "run": self.run_identity(),
            "overrides": self.overrides,
        }

    def _save_checkpoint(self) -> None:
        if self.out_dir is None or not distributed.is_main():
            return
        rundir.write_checkpoint(self.out_dir, self._checkpoint())
        rundir.write_history(self.history, self.out_dir)

    def _load_checkpoint(self) -> None:
        assert self.out_dir is not None
        saved = rundir.load_checkpoint(self.out_dir, self.device)
        if saved is None:
            return  # nothing to resume: a fresh run
        path = self.out_dir / CHECKPOINT
        self._check_identity(saved, path)
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.ulgm.load_state_dict(saved["ulgm"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path}: the checkpoint does not fit this model ({error}); resume with the "
                f"configuration it was written with, or delete it to start afresh"
            ) from None
        self.best_model = saved["best_model"]
        self.state = {"step": 0, **saved["state"]}
        self.history = saved["history"]
        self.overrides = [*saved.get("overrides", []), *self.overrides]
        torch.set_rng_state(saved["rng"].cpu())
        if saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])

    def _check_identity(self, saved: Mapping[str, Any], path: Path) -> None:
        """Compare the checkpoint's run identity with this trainer's; raise or record."""
        done = saved["state"]["epoch"]
        differences = rundir.identity_differences(
            saved["run"], self.run_identity(), epochs_done=done
        )
        if not differences:
            return
        listing = rundir.format_differences(differences, stored="checkpoint")
        if self.resume_mismatch == "error":
            raise rundir.RunMismatchError(
                f"{path}: the checkpoint was written by another configuration; resuming would "
                f"mix two runs. Differences:\n{listing}\nResume with the checkpoint's "
                f"configuration, use another out_dir, or pass resume_mismatch='override' to "
                f"continue on purpose (it is recorded in run.json)."
            )
        warnings.warn(
            f"{path}: resuming with a configuration that differs from the checkpoint's "
            f"(resume_mismatch='override'):\n{listing}",
            UserWarning,
            stacklevel=3,
        )
        self.overrides.append(
            {"epoch": done, "differences": {k: list(v) for k, v in differences.items()}}
        )

    def _write_run(self) -> None:
        """``run.json``: the resolved configuration and any overridden resumes."""
        if self.out_dir is None or not distributed.is_main():
            return
        run = {**self.run_identity(), "ran": self.model.describe()}
        run["resume_overrides"] = self.overrides
        rundir.write_json(self.out_dir / "run.json", run)

    def _write(self, result: TrainResult) -> None:
        if self.out_dir is None or not distributed.is_main():
            return
        summary = {k: v for k, v in asdict(result).items() if k != "history"}
        rundir.write_json(self.out_dir / "results.json", summary)


# ---------------------------------------------------------------------- parameter groups

_NO_DECAY = ("bias", "LayerNorm")


def parameter_groups(model: MultiTaskMSA, train_config: TrainConfig) -> list[dict[str, Any]]:
    """Adam parameter groups with per-group learning rate and weight decay (Self-MM's).

    ========================  =====================  ==========================
    group                     learning rate          weight decay
    ========================  =====================  ==========================
    ``text_decay``            ``lr_text``            ``weight_decay_text``
    ``text_no_decay``         ``lr_text``            0 (names with ``bias``/``LayerNorm``)
    ``audio``                 ``lr_audio``           ``weight_decay_audio``
    ``vision``                ``lr_vision``          ``weight_decay_vision``
    ``other``                 ``lr_other``           ``weight_decay_other``
    ========================  =====================  ==========================

    The audio and vision groups are the sequence encoders (LSTM and output layer);
    ``other`` is the heads and any learned alignment projection. Frozen parameters
    (``finetune_text=False``) and empty groups are left out.

    Args:
        model: the model whose parameters are grouped.
        train_config: where to read the rates, a
            :class:`~deepalign.training.TrainConfig`.

    Returns:
        A list of dicts with keys ``name``, ``params``, ``lr``, ``weight_decay``, ready for
        :class:`torch.optim.Adam`.

    Raises:
        TypeError: if ``model`` is not a :class:`~deepalign.MultiTaskMSA` or
            ``train_config`` not a :class:`~deepalign.training.TrainConfig`.

    Example:
        >>> from deepalign import MSAConfig, MultiTaskMSA
        >>> from deepalign.training import TrainConfig, parameter_groups
        >>> config = MSAConfig.preset("mosei", text_mode="features", feature_dims=(8, 74, 35))
        >>> groups = parameter_groups(MultiTaskMSA(config), TrainConfig.preset("mosei"))
        >>> [(g["name"], g["lr"], g["weight_decay"]) for g in groups]
        [('audio', 0.005, 0.0), ('vision', 0.0001, 0.0), ('other', 0.001, 0.01)]
    """
    if not isinstance(model, MultiTaskMSA):
        raise TypeError(f"model: expected a MultiTaskMSA, got {type(model).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config: expected a TrainConfig, got {type(train_config).__name__}")
    c = train_config
    text = [] if model.text_encoder is None else list(model.text_encoder.named_parameters())
    text_decay, text_no_decay = _split_no_decay(text)
    encoders = {"text_encoder", "audio_encoder", "vision_encoder"}
    other = [p for n, p in model.named_parameters() if n.split(".")[0] not in encoders]
    audio = list(model.audio_encoder.parameters())
    vision = list(model.vision_encoder.parameters())
    groups = [
        ("text_decay", text_decay, c.lr_text, c.weight_decay_text),
        ("text_no_decay", text_no_decay, c.lr_text, 0.0),
        ("audio", audio, c.lr_audio, c.weight_decay_audio),
        ("vision", vision, c.lr_vision, c.weight_decay_vision),
        ("other", other, c.lr_other, c.weight_decay_other),
    ]
    return [
        {"name": name, "params": trainable, "lr": lr, "weight_decay": decay}
        for name, params, lr, decay in groups
        if (trainable := [p for p in params if p.requires_grad])
    ]


def _split_no_decay(
    named: list[tuple[str, nn.Parameter]],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split BERT parameters into (decayed, not decayed): biases and LayerNorms get no decay."""
    no_decay = [p for n, p in named if any(word in n for word in _NO_DECAY)]
    ids = {id(p) for p in no_decay}
    return [p for _, p in named if id(p) not in ids], no_decay


# ---------------------------------------------------------------------- helpers


def _min_batch(model: MultiTaskMSA) -> int:
    """The smallest training batch: what the alignment's estimator needs, and 2 without one
    (a batch of one sample was always dropped)."""
    if model.alignment is None:
        return 2
    return max(2, MIN_ROWS[model.config.align_estimator])


def _drops_last(samples: int, batch_size: int, min_batch: int) -> bool:
    """A last batch too small for the loss (e.g. one sample: no covariance) is dropped."""
    return 0 < samples % batch_size < min_batch


def _train_batches(samples: int, batch_size: int, min_batch: int) -> int:
    """Training batches per epoch (per rank) of ``samples`` samples."""
    full, rest = divmod(samples, batch_size)
    return full + (rest > 0 and not _drops_last(samples, batch_size, min_batch))


class _Means:
    """Sample-weighted means of the loss terms, summed on the device; a term missing from a
    batch (a diagnostic left out) does not count that batch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: Mapping[str, torch.Tensor], size: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * size
            self.counts[name] = self.counts.get(name, 0) + size

    def result(self) -> dict[str, float]:
        """``{"train_<name>": mean}`` with one host synchronisation for all terms."""
        if not self.sums:
            return {}
        stacked = torch.stack([torch.as_tensor(v).float() for v in self.sums.values()])
        values = stacked.cpu().tolist()
        return {
            f"train_{name}": value / self.counts[name]
            for name, value in zip(self.sums, values, strict=True)
        }


def _check_callbacks(callbacks: object) -> tuple[Callable[[dict[str, float]], object], ...]:
    if callable(callbacks) or not isinstance(callbacks, Sequence):
        raise TypeError(
            f"callbacks: expected a sequence of callables, got {type(callbacks).__name__}"
        )
    for position, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(
                f"callbacks[{position}]: expected a callable, got {type(callback).__name__}"
            )
    return tuple(callbacks)


def _check_data_id(data_id: object) -> dict[str, Any] | None:
    if data_id is None:
        return None
    if not isinstance(data_id, Mapping):
        raise TypeError(f"data_id: expected a mapping or None, got {type(data_id).__name__}")
    try:
        return json.loads(json.dumps(dict(data_id)))
    except (TypeError, ValueError) as error:
        raise TypeError(f"data_id: expected JSON values (str, numbers, lists), {error}") from None


def _check_dataset(dataset: str, splits: Mapping[str, MMSADataset]) -> None:
    """Raise if ``dataset``'s metric set contradicts the labels of ``splits``.

    SIMS data carries unimodal labels and multimodal labels in [-1, 1]; MOSI and MOSEI carry
    multimodal labels in [-3, 3] and no unimodal ones (unless planted, as the synthetic
    generator can). Data that fits both (no unimodal labels, all labels in [-1, 1]) passes.
    """
    labels = [splits[name].labels for name in ("train", "valid", "test")]
    unimodal = sorted(
        {key for split in labels for key in split if key in LABEL_KEYS and key != "fusion"}
    )
    largest = max(
        (float(split["fusion"].abs().max()) for split in labels if len(split["fusion"])), default=0
    )
    if unimodal and largest <= 1:
        looks, evidence = "sims", f"unimodal labels {unimodal} and labels in [-1, 1]"
    elif largest > 1:
        looks = "mosi/mosei"
        evidence = f"labels up to |y| = {largest:g}, beyond SIMS's [-1, 1]"
    else:
        return
    if (dataset == "sims") != (looks == "sims"):
        raise ValueError(
            f"config.dataset: got {dataset!r}, but the data looks like {looks} ({evidence}); "
            f"its metrics would be the wrong ones. Use TrainConfig.preset("
            f"{looks.split('/')[0]!r}) or set dataset to match the data."
        )
