"""deepalign in a Lightning training loop: covariance alignment and Self-MM's ULGM.

A ``LightningModule`` that trains a small late-fusion network with

- :class:`deepalign.ModalityAlignment` added to the loss (the paper's ``"V-A"`` term), and
- :class:`deepalign.ULGM` generating the unimodal labels: its loss in ``training_step``, its
  update in ``on_train_batch_end`` (after the optimizer step), its banks in the checkpoint (it
  is a submodule, so its buffers are in ``state_dict``).

Under DDP both components are global without any code here: a process group of more than one
rank is initialised, so the covariance statistics and the ULGM's banks cover every rank's batch.

It runs on SYNTHETIC data (a latent sentiment seen through three noisy views), on CPU:

    python examples/lightning_module.py                            # one process
    python examples/lightning_module.py --devices 2 --strategy ddp # two processes (gloo)
    python examples/lightning_module.py --quick                    # a few seconds

Needs Lightning (``pip install lightning``; it is in deepalign's ``dev`` extra, never a core
dependency). Writes the checkpoint and ``metrics.csv`` under ``--out`` (default
``runs/lightning``) and prints where.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import deepalign

MODALITIES = ("text", "audio", "vision")
DIMS = {"text": 12, "audio": 6, "vision": 10}


class SyntheticMSA(Dataset):
    """A toy multimodal sentiment set: a label in [-3, 3] seen through three noisy linear views
    (text the clearest, vision the faintest). Items are dicts with the sample's ``index``, which
    the ULGM addresses its banks with.

    Args:
        n: number of samples.
        dims: modality -> feature width.
        seed: seed of the labels, the views and the noise.
    """

    def __init__(self, n: int, dims: Mapping[str, int] = DIMS, *, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.rand(n, generator=g) * 6 - 3
        noise = {"text": 0.5, "audio": 1.0, "vision": 2.0}
        self.features = {}
        for name, width in dims.items():
            view = torch.randn(width, generator=g) / width**0.5
            self.features[name] = self.labels[:, None] * view + noise[name] * torch.randn(
                n, width, generator=g
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {name: f[i] for name, f in self.features.items()}
        return {"index": torch.tensor(i), "label": self.labels[i], **item}


class LateFusionNet(nn.Module):
    """One encoder per modality, a fusion layer over their concatenation, one head per feature.

    ``forward(batch)`` returns ``(predictions, features)``: dicts keyed ``fusion``, ``text``,
    ``audio``, ``vision``, predictions of shape ``(B,)``.
    """

    def __init__(self, dims: Mapping[str, int], hidden: int, fusion_hidden: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dims[m], hidden), nn.ReLU()) for m in MODALITIES}
        )
        self.fusion = nn.Sequential(nn.Linear(hidden * len(MODALITIES), fusion_hidden), nn.ReLU())
        widths = {"fusion": fusion_hidden, **dict.fromkeys(MODALITIES, hidden)}
        self.heads = nn.ModuleDict({name: nn.Linear(w, 1) for name, w in widths.items()})

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        features = {m: self.encoders[m](batch[m]) for m in MODALITIES}
        features["fusion"] = self.fusion(torch.cat([features[m] for m in MODALITIES], dim=1))
        predictions = {name: head(features[name]).squeeze(1) for name, head in self.heads.items()}
        return predictions, features


class AlignedMSAModule(L.LightningModule):
    """A late-fusion network trained with Self-MM's ULGM loss plus a covariance alignment term.

    Args:
        train_labels: the training set's multimodal labels, indexed like the dataset's
            ``index``; they size the ULGM and start its banks. A checkpoint restores the banks.
        dims: modality -> input width.
        hidden: width of each modality's features.
        fusion_hidden: width of the fusion features.
        spec: the alignment terms, in the paper's notation.
        alignment_weight: weight of the alignment loss.
        lr: Adam's learning rate.
        H: bound of the generated unimodal labels.
    """

    def __init__(
        self,
        train_labels: Tensor,
        dims: Mapping[str, int] = DIMS,
        *,
        hidden: int = 16,
        fusion_hidden: int = 32,
        spec: str = "V-A",
        alignment_weight: float = 0.1,
        lr: float = 1e-2,
        H: float = 3.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_labels"])
        self.net = LateFusionNet(dims, hidden, fusion_hidden)
        self.alignment = deepalign.ModalityAlignment(
            spec, dict.fromkeys(MODALITIES, hidden), weight=alignment_weight
        )
        widths = {"fusion": fusion_hidden, **dict.fromkeys(MODALITIES, hidden)}
        # A submodule: its label and feature banks and class centres are buffers, so they are
        # in state_dict() and in every Lightning checkpoint.
        self.ulgm = deepalign.ULGM(len(train_labels), widths, H=H)
        self.ulgm.init_labels(torch.arange(len(train_labels)), train_labels.float())

    def losses(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict, dict]:
        """The training loss of a batch, its features (detached) and every term (detached).

        Plain PyTorch, no Lightning: the same call serves a hand-written or an accelerate loop.
        """
        predictions, features = self.net(batch)
        ulgm_loss, terms = self.ulgm.loss(predictions, batch["index"], return_terms=True)
        align_loss, align_terms = self.alignment(
            {m: features[m] for m in MODALITIES}, return_terms=True
        )
        terms = {**terms, **align_terms, "alignment": align_loss.detach()}
        detached = {name: f.detach() for name, f in features.items()}
        return ulgm_loss + align_loss, detached, terms

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict:
        loss, features, terms = self.losses(batch)
        size = len(batch["index"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict(
            {f"train/{name}": value for name, value in terms.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=size,
        )
        # Extra keys reach on_train_batch_end as `outputs`.
        return {"loss": loss, "features": features, "terms": terms}

    def on_train_batch_end(
        self, outputs: dict, batch: Mapping[str, Tensor], batch_idx: int
    ) -> None:
        # Lightning calls this after the optimizer step. Self-MM's order: the loss above used
        # the labels as they stood; now the batch's labels, features and the centres move on.
        # Under DDP every rank calls it and the ULGM applies the union of the ranks' batches.
        self.ulgm.step(outputs["features"], batch["index"], epoch=self.current_epoch + 1)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        predictions, _ = self.net(batch)
        mae = (predictions["fusion"] - batch["label"]).abs().mean()
        self.log("val/mae", mae, prog_bar=True, sync_dist=True, batch_size=len(batch["index"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def make_strategy(name: str) -> str | DDPStrategy:
    """``"ddp"``: DDP on gloo that does not copy rank 0's buffers to the others at every forward.

    deepalign keeps the ULGM's banks identical on every rank by itself; re-sending them (a
    training set's worth of features) at every step would only cost time.
    """
    if name != "ddp":
        return name
    # torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers.
    parameters = inspect.signature(DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return DDPStrategy(process_group_backend="gloo", **{key: False})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1, help="CPU processes")
    parser.add_argument(
        "--strategy",
        choices=("auto", "ddp"),
        default="auto",
        help="Lightning's strategy: auto (one process) or ddp (--devices processes, gloo)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--samples", type=int, default=512, help="training samples")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch and process")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the model")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/lightning"), help="Lightning's log folder"
    )
    parser.add_argument("--quick", action="store_true", help="2 epochs on 128 samples")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.samples = 2, 128
    print(
        "lightning_module.py: SYNTHETIC data (a toy latent-sentiment set, not a real dataset)",
        file=sys.stderr,
    )
    L.seed_everything(args.seed, verbose=False)
    train = SyntheticMSA(args.samples, seed=args.seed)
    valid = SyntheticMSA(args.samples // 4, seed=args.seed + 1)
    model = AlignedMSAModule(train.labels)
    logger = CSVLogger(args.out, name="logs")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=make_strategy(args.strategy),
        max_epochs=args.epochs,
        default_root_dir=args.out,
        logger=logger,
        enable_progress_bar=not args.quiet,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(
        model,
        DataLoader(train, batch_size=args.batch_size, shuffle=True),
        DataLoader(valid, batch_size=args.batch_size),
    )
    if trainer.is_global_zero:
        checkpoint = trainer.checkpoint_callback.best_model_path  # no monitor: the last epoch
        restored = AlignedMSAModule.load_from_checkpoint(checkpoint, train_labels=train.labels)
        same = all(
            torch.equal(value, model.ulgm.state_dict()[key])
            for key, value in restored.ulgm.state_dict().items()
        )
        print(f"val MAE (fusion head): {trainer.callback_metrics['val/mae'].item():.3f}")
        print(f"ULGM banks restored from the checkpoint equal the trained ones: {same}")
        print(f"checkpoint (network, alignment, ULGM banks): {checkpoint}")
        print(f"metrics: {Path(logger.log_dir) / 'metrics.csv'}")


if __name__ == "__main__":
    main()
