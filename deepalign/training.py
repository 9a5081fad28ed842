r"""The training loop that ties :class:`~deepalign.MultiTaskMSA`, the :class:`~deepalign.ULGM`,
the alignment loss and the metrics together (paper Eq. 30–34).

Per step, the objective is

.. math::

    L = \underbrace{\tfrac1B\textstyle\sum_i |\hat y_M^i - y_M^i|}_{\text{fusion}}
        + \underbrace{\textstyle\sum_s \tfrac1B\sum_i w_s^i |\hat y_s^i - y_s^i|}_{\text{ULGM}}
        + w_\text{align}\textstyle\sum_\text{terms}\theta_\text{term},

followed by the ULGM's label update. :class:`Trainer` adds Self-MM's optimiser (Adam with
per-group learning rates and weight decays), early stopping on the validation L1 loss of the
fusion head, evaluation with :func:`deepalign.metrics.msa_metrics`, a per-epoch log (JSON and
CSV), an atomic checkpoint each epoch and resumption that ends where an uninterrupted run ends.
Under ``torchrun`` it trains data-parallel with one shared ULGM state (:doc:`/distributed`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from deepalign import distributed
from deepalign.data import MMSADataset, collate
from deepalign.metrics import msa_metrics
from deepalign.model import MultiTaskMSA
from deepalign.ulgm import ULGM

__all__ = ["TrainResult", "Trainer"]

#: ULGM modality name -> (prediction key, feature key) in MultiTaskMSA's outputs.
HEADS = {
    "fusion": ("M", "Feature_f"),
    "text": ("T", "Feature_t"),
    "audio": ("A", "Feature_a"),
    "vision": ("V", "Feature_v"),
}
CHECKPOINT = "checkpoint.pt"


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

    The model's :class:`~deepalign.MSAConfig` supplies the batch size, the optimiser groups,
    the patience of early stopping and the ULGM bound ``H``. Build the model after
    :func:`torch.manual_seed` for a reproducible run: on the CPU, the same seed gives the same
    result, also across :meth:`fit` with ``resume=True``.

    Args:
        model: the model to train (moved to ``device``).
        splits: ``"train"``, ``"valid"`` and ``"test"`` datasets, e.g. from
            :func:`deepalign.data.load_mmsa` or :func:`deepalign.data.make_synthetic`.
        dataset: metric definitions, ``"mosi"``, ``"mosei"`` or ``"sims"``. Default ``"mosi"``.
        seed: seeds the order of the training batches. Default 1111.
        max_epochs: upper bound on the epochs. Default 50.
        device: where to train. Default ``"cpu"``.
        out_dir: where the checkpoint, the logs and the results go; ``None`` (default) writes
            nothing (and cannot resume).
        progress: show tqdm progress bars (needs the ``progress`` extra). Default ``False``.

    Raises:
        ValueError: if a split is missing, or ``max_epochs`` is not positive.

    Example:
        >>> from deepalign import MSAConfig, MultiTaskMSA
        >>> from deepalign.data import make_synthetic
        >>> splits = make_synthetic("mosi", n_train=24, seq_len=4, text_dim=8, seed=0)
        >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20),
        ...                           alignment="V-A", batch_size=8)
        >>> _ = torch.manual_seed(0)
        >>> result = Trainer(MultiTaskMSA(config), splits, max_epochs=2).fit()
        >>> result.epochs, sorted(result.test)[:3]
        (2, ['Corr', 'Has0_F1_score', 'Has0_acc_2'])
    """

    def __init__(
        self,
        model: MultiTaskMSA,
        splits: Mapping[str, MMSADataset],
        *,
        dataset: str = "mosi",
        seed: int = 1111,
        max_epochs: int = 50,
        device: str | torch.device = "cpu",
        out_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        missing = [s for s in ("train", "valid", "test") if s not in splits]
        if missing:
            raise ValueError(f"splits: expected train, valid and test, missing {missing}")
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs: expected a positive int, got {max_epochs!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = model.config
        self.splits = splits
        self.dataset, self.seed, self.max_epochs = dataset, seed, max_epochs
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = progress
        self.ulgm = self._build_ulgm(splits["train"]).to(self.device)
        self.optimizer = torch.optim.Adam(model.parameter_groups())
        self.network = self._wrap(model)
        self.state = {"epoch": 0, "best_epoch": 0, "best_loss": math.inf, "bad_epochs": 0}
        self.best_model: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []

    def _build_ulgm(self, train: MMSADataset) -> ULGM:
        c = self.config
        dims = {"fusion": c.post_fusion_dim, "text": c.post_text_dim}
        dims |= {"audio": c.post_audio_dim, "vision": c.post_video_dim}
        ulgm = ULGM(len(train), dims, H=c.H)
        ulgm.init_labels(torch.arange(len(train)), train.labels["M"])
        return ulgm

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not distributed.is_active():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ the loop

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train until early stopping or ``max_epochs``, then test the best epoch's model.

        Args:
            resume: continue from ``out_dir/checkpoint.pt`` when it exists.

        Returns:
            The :class:`TrainResult`.
        """
        if resume:
            self._load_checkpoint()
        while not self._finished():
            epoch = self.state["epoch"] + 1
            started = time.perf_counter()
            record = {"epoch": epoch, **self._train_epoch(epoch)}
            valid = self.evaluate("valid")
            record |= {f"valid_{k}": v for k, v in valid.items()}
            record["seconds"] = time.perf_counter() - started
            self._end_epoch(epoch, valid["loss"], record)
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
        return s["epoch"] >= self.max_epochs or s["bad_epochs"] >= self.config.patience

    def _end_epoch(self, epoch: int, valid_loss: float, record: dict[str, float]) -> None:
        self.state["epoch"] = epoch
        if valid_loss < self.state["best_loss"]:
            self.state |= {"best_epoch": epoch, "best_loss": valid_loss, "bad_epochs": 0}
            self.best_model = copy.deepcopy(self.model.state_dict())
        else:
            self.state["bad_epochs"] += 1
        self.history.append(record)
        self._save_checkpoint()

    def _best_valid(self) -> dict[str, float]:
        record = self.history[self.state["best_epoch"] - 1]
        return {k[6:]: v for k, v in record.items() if k.startswith("valid_")}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.network.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self._batches("train", epoch):
            terms = self._train_step(batch, epoch)
            size = len(batch["index"])
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value * size
            count += size
        # One host synchronisation per epoch, not one per term and step.
        return {f"train_{name}": float(total) / count for name, total in sums.items()}

    def _train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        outputs = self.network(*self._inputs(batch))
        index = batch["index"].to(self.device)
        predictions = {name: outputs[pred] for name, (pred, _) in HEADS.items()}
        ulgm_loss, ulgm_terms = self.ulgm.loss(predictions, index, return_terms=True)
        align_loss, align_terms = self.model.alignment_loss(outputs, return_terms=True)
        loss = ulgm_loss + align_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        features = {name: outputs[feat].detach() for name, (_, feat) in HEADS.items()}
        self.ulgm.step(features, index, epoch)
        terms = {"loss": loss, "alignment": align_loss} | ulgm_terms
        terms |= {f"align_{name}": value for name, value in align_terms.items()}
        return {name: value.detach() for name, value in terms.items()}

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        text = batch["text_bert"] if self.config.text_mode == "bert" else batch["text"]
        on_device = (t.to(self.device) for t in (text, batch["audio"], batch["vision"]))
        text, audio, vision = on_device
        return text, audio, batch["audio_lengths"], vision, batch["vision_lengths"]

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
            preds.append(self.model(*self._inputs(batch))["M"].reshape(-1).cpu())
            truths.append(batch["labels"]["M"])
            indexes.append(batch["index"])
        pred, truth = self._gather(torch.cat(preds), torch.cat(truths), torch.cat(indexes))
        metrics = msa_metrics(pred, truth, dataset=self.dataset)
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
            indices = list(range(rank, len(data), world))
            loader = DataLoader(
                torch.utils.data.Subset(data, indices),
                batch_size=self.config.batch_size,
                collate_fn=collate,
            )
        else:
            loader = self._train_loader(data, epoch, world, rank)
        if self.progress and distributed.is_main():
            from tqdm.auto import tqdm

            return iter(tqdm(loader, desc=f"{split} {epoch or ''}".strip(), leave=False))
        return iter(loader)

    def _train_loader(self, data: MMSADataset, epoch: int, world: int, rank: int) -> DataLoader:
        # A last batch of one sample has no covariance: drop it rather than fail.
        per_rank = -(-len(data) // world)  # DistributedSampler pads every rank to this
        drop_last = per_rank % self.config.batch_size == 1
        if world > 1:
            sampler = DistributedSampler(data, world, rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(epoch)
            return DataLoader(
                data, batch_size=self.config.batch_size, sampler=sampler, collate_fn=collate,
                drop_last=drop_last,
            )  # fmt: skip
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(
            data, batch_size=self.config.batch_size, shuffle=True, generator=generator,
            collate_fn=collate, drop_last=drop_last,
        )  # fmt: skip

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
            "config": asdict(self.config),
        }

    def _save_checkpoint(self) -> None:
        if self.out_dir is None or not distributed.is_main():
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(self._checkpoint(), self.out_dir / CHECKPOINT)
        _write_history(self.history, self.out_dir)

    def _load_checkpoint(self) -> None:
        if self.out_dir is None or not (self.out_dir / CHECKPOINT).exists():
            return
        saved = torch.load(self.out_dir / CHECKPOINT, map_location=self.device, weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.ulgm.load_state_dict(saved["ulgm"])
        self.best_model = saved["best_model"]
        self.state = saved["state"]
        self.history = saved["history"]
        torch.set_rng_state(saved["rng"].cpu())
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])

    def _write(self, result: TrainResult) -> None:
        if self.out_dir is None or not distributed.is_main():
            return
        summary = {k: v for k, v in asdict(result).items() if k != "history"}
        (self.out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history(history: list[dict[str, float]], out_dir: Path) -> None:
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    columns = list(dict.fromkeys(k for record in history for k in record))
    with open(out_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
