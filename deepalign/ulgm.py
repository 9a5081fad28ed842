"""Self-MM's Unimodal Label Generation Module (ULGM) [Yu2021]_, model-agnostic.

The module keeps, for every modality, a label bank, a feature bank and a positive and a negative
class centre, all in buffers. Unlike the published implementation it never re-scans the banks: the
centres come from float64 running per-class sums and counts that each step updates from the rows
of its batch only, so a step costs O(B·d) whatever the training-set size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from deepalign import distributed
from deepalign._checks import (
    check_all_finite,
    check_finite,
    check_indexes,
    check_keys,
    check_positive_int,
    check_same_device,
    check_shape,
    check_tensor,
    check_validate,
    compute_dtype,
    reads_values,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN = 1e-8
"""The constant that keeps Self-MM's ratios defined when a distance or offset is zero."""

__all__ = ["MIN", "ULGM", "LabelTrajectory"]


class _RunningClassMean(nn.Module):
    """The mean feature of one class, kept as a float64 running sum and an integer count."""

    center: Tensor
    total: Tensor
    count: Tensor

    def __init__(self, width: int, members: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("total", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(members, dtype=torch.int64))

    def add(self, rows: Tensor, weights: Tensor) -> None:
        """Add ``weights @ rows`` to the sum and ``weights.sum()`` to the count (weights ±1, 0)."""
        self.total.add_(weights @ rows)
        self.count.add_(weights.sum().to(torch.int64))
        # An emptied class restarts from an exact zero instead of accumulated rounding residue.
        self.total.masked_fill_(self.count == 0, 0.0)

    def refresh(self) -> None:
        """Set the centre to the class mean; an empty class keeps its previous centre."""
        mean = (self.total / self.count.clamp_min(1)).to(self.center.dtype)
        self.center.copy_(torch.where(self.count > 0, mean, self.center))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> _RunningClassMean:
        # Module.to(dtype) would cast the running sum too; it must stay float64 (moved, not cast).
        total = self.total
        super()._apply(fn, recurse)
        self.total = total.to(self.center.device)
        return self


class _ModalityBank(nn.Module):
    """One modality's label bank, feature bank and positive/negative running class means."""

    labels: Tensor
    features: Tensor

    def __init__(self, num_samples: int, width: int, *, zero_is_positive: bool) -> None:
        super().__init__()
        self.zero_is_positive = zero_is_positive
        self.register_buffer("labels", torch.zeros(num_samples))
        self.register_buffer("features", torch.zeros(num_samples, width))
        # The banks start as zero rows with label 0: positive members when zero counts as positive.
        self.positive = _RunningClassMean(width, members=num_samples if zero_is_positive else 0)
        self.negative = _RunningClassMean(width, members=0)

    def write(
        self, indexes: Tensor, *, labels: Tensor | None = None, features: Tensor | None = None
    ) -> None:
        """Overwrite rows ``indexes`` of the banks, moving their contributions between the sums."""
        old_labels, old_features = self.labels[indexes], self.features[indexes]
        new_labels = old_labels if labels is None else labels.to(self.labels.dtype)
        new_features = old_features if features is None else features.to(self.features.dtype)
        # Each row leaves its old class with its old features and joins its new class with its
        # new ones: weights -1 and +1 over the stacked (old, new) rows of the batch.
        rows = torch.cat([old_features, new_features]).to(torch.float64)
        old_members, new_members = self._members(old_labels), self._members(new_labels)
        for running, old, new in zip(
            (self.positive, self.negative), old_members, new_members, strict=True
        ):
            running.add(rows, torch.cat([-old.to(torch.float64), new.to(torch.float64)]))
        self.labels[indexes] = new_labels
        self.features[indexes] = new_features

    def _members(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Masks of the positive and the negative class."""
        positive = labels >= 0 if self.zero_is_positive else labels > 0
        return positive, labels < 0

    def refresh_centers(self) -> None:
        self.positive.refresh()
        self.negative.refresh()

    def relative_distance(self, features: Tensor) -> Tensor:
        """Self-MM's offset (d⁻ − d⁺)/(d⁺ + MIN) of every row of ``features`` (B, d)."""
        dtype = compute_dtype(features, self.features)
        features = features.to(dtype)
        to_positive = torch.linalg.vector_norm(features - self.positive.center.to(dtype), dim=1)
        to_negative = torch.linalg.vector_norm(features - self.negative.center.to(dtype), dim=1)
        return (to_negative - to_positive) / (to_positive + MIN)


class ULGM(nn.Module):
    r"""Self-MM's Unimodal Label Generation Module [Yu2021]_ for any multimodal model.

    For ``num_samples`` training samples it keeps, per modality :math:`m`, a label bank
    :math:`y_m`, a feature bank :math:`F_m` and class centres :math:`c_m^{+}, c_m^{-}` (all zero
    at start). :meth:`init_labels` sets every bank to the ground truth; :meth:`step`, called
    after each training step with the batch's detached features, generates the unimodal labels
    (from epoch 2), stores the features and recomputes the centres. With the offset

    .. math::

        \delta_m = \frac{\lVert f_m - c_m^{-}\rVert - \lVert f_m - c_m^{+}\rVert}
                        {\lVert f_m - c_m^{+}\rVert + \mathrm{MIN}},

    a unimodal label becomes, at epoch :math:`n`,

    .. math::

        \hat y_s = \operatorname{clamp}\Big(\tfrac12 \frac{\delta_s}{\delta_f + \mathrm{MIN}} y_f
            + \tfrac12 (y_f + \delta_s - \delta_f),\ -H,\ H\Big), \qquad
        y_s \leftarrow \frac{n-1}{n+1} y_s + \frac{2}{n+1} \hat y_s,

    where :math:`f` is the fusion modality, whose bank keeps the ground truth. The centres are the
    means of the feature-bank rows with :math:`y_m > 0` (:math:`\ge 0` when ``exclude_zero`` is
    false) and :math:`y_m < 0`, over all ``num_samples`` rows. They come from float64 running
    sums and counts updated from the batch rows only, so a step costs :math:`O(B \cdot d)`.
    A class without members keeps its previous centre (zero before it had any), so every value
    stays finite where the published algorithm produces NaN.

    All state is in buffers: ``.to()``, ``state_dict()``/``load_state_dict()`` and
    ``torch.load(..., weights_only=True)`` work, and a run resumed from a state dict continues
    bit-identically. Index tensors are moved to the buffers' device; features, labels and
    predictions must already be there.

    Args:
        num_samples: size of the training set; samples are addressed by indexes in
            ``[0, num_samples)``.
        dims: modality name -> feature width, e.g. ``{"fusion": 128, "text": 32, "audio": 16,
            "vision": 32}``. Names must be non-empty strings without ``"."``.
        fusion: the name in ``dims`` of the multimodal (fusion) modality.
        H: labels generated for unimodal heads are clamped to ``[-H, H]`` (3 for MOSI/MOSEI, 1
            for SIMS).
        exclude_zero: if true a zero label belongs to neither class; if false it counts as
            positive.
        sync_dist: keep the banks of all ranks identical: :meth:`step` gathers every rank's
            indexes and features and applies the union batch (rank order; a sample repeated by
            :class:`~torch.utils.data.DistributedSampler` counts once), which equals one process
            stepping on the union. Every rank must call :meth:`step`. Default ``None``: sync
            whenever a process group of more than one rank is initialised (:doc:`/distributed`).
        validate: run the checks that read values on the host (indexes in range and distinct,
            samples initialised, finite features): one host synchronisation each. Default
            ``None``: the global default of :func:`deepalign.set_validation`. Shapes, dtypes
            and devices are always checked.

    Shape:
        - features: mapping name -> :math:`(B, d_\text{name})`; indexes: :math:`(B,)` integers.
        - labels, predictions: :math:`(B,)` or :math:`(B, 1)`.
        - banks returned by :meth:`labels`: :math:`(\text{num\_samples},)`.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``num_samples`` or a width is below 1, ``fusion`` is not in ``dims``,
            ``dims`` has no unimodal entry or a name is invalid, or ``H`` is not positive.

    Example:
        >>> import torch
        >>> from deepalign import ULGM
        >>> ulgm = ULGM(3, {"fusion": 2, "text": 1})
        >>> ulgm.init_labels(torch.arange(3), torch.tensor([1.0, -1.0, 2.0]))
        >>> features = {
        ...     "fusion": torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]]),
        ...     "text": torch.tensor([[0.5], [-0.5], [0.2]]),
        ... }
        >>> ulgm.step(features, torch.arange(3), epoch=1)
        >>> ulgm.step(features, torch.arange(3), epoch=2)
        >>> print([round(v, 3) for v in ulgm.labels("text").tolist()])
        [2.333, -1.0, 2.102]
    """

    initialized: Tensor

    def __init__(
        self,
        num_samples: int,
        dims: Mapping[str, int],
        *,
        fusion: str = "fusion",
        H: float = 3.0,
        exclude_zero: bool = True,
        sync_dist: bool | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.sync_dist = sync_dist
        self.validate = check_validate(validate)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.dims = _check_dims(dims, fusion)
        self.names = tuple(self.dims)
        self.fusion = fusion
        self.unimodal = tuple(name for name in self.names if name != fusion)
        self.H = _check_bound(H)
        self.exclude_zero = bool(exclude_zero)
        for name, width in self.dims.items():
            bank = _ModalityBank(num_samples, width, zero_is_positive=not self.exclude_zero)
            self.add_module(f"bank_{name}", bank)
        self.register_buffer("initialized", torch.zeros(num_samples, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, dims={self.dims}, fusion={self.fusion!r}, "
            f"H={self.H}, exclude_zero={self.exclude_zero}, sync_dist={self.sync_dist}, "
            f"validate={self.validate}"
        )

    @torch.no_grad()
    def init_labels(self, indexes: Tensor, labels: Tensor) -> None:
        """Set every modality's label at ``indexes`` to the ground-truth ``labels``.

        Call it once for the whole training set (at once or in chunks) before the first
        :meth:`step`. The centres are left as they are until the next :meth:`step`.

        Args:
            indexes: sample indexes, distinct, in ``[0, num_samples)``.
            labels: the multimodal ground truth of those samples.

        Shape:
            - indexes: :math:`(B,)`; labels: :math:`(B,)` or :math:`(B, 1)`.

        Raises:
            TypeError: if ``indexes`` is not an integer tensor or ``labels`` not a float tensor.
            ValueError: on repeated or out-of-range indexes, a size mismatch, non-finite
                labels or labels on another device.

        Example:
            >>> ulgm = ULGM(4, {"fusion": 2, "audio": 1})
            >>> ulgm.init_labels(torch.tensor([0, 2]), torch.tensor([0.5, -1.5]))
            >>> print(ulgm.labels("audio").tolist())
            [0.5, 0.0, -1.5, 0.0]
        """
        indexes = self._check_indexes(indexes, distinct=True)
        labels = self._check_batch_vector(labels, "labels", len(indexes))
        check_finite(labels, "labels")
        for name in self.names:
            self._bank(name).write(indexes, labels=labels)
        self.initialized[indexes] = True

    @torch.no_grad()
    def step(self, features: Mapping[str, Tensor], indexes: Tensor, epoch: int) -> None:
        """Update the unimodal labels (epoch > 1), store the features and refresh the centres.

        Call it once per training batch, after the backward pass. The label update uses the
        centres as they stand from the previous step; then ``F_m[indexes] := features[m]`` and
        the centres are recomputed from the running sums. Everything is validated before any
        state changes.

        Args:
            features: modality name -> the batch's features (detached here; any float dtype).
            indexes: the batch's sample indexes, distinct, in ``[0, num_samples)``.
            epoch: the 1-based epoch number :math:`n`.

        Shape:
            - features[name]: :math:`(B, d_\\text{name})`; indexes: :math:`(B,)`.

        Raises:
            TypeError: if ``features`` is not a mapping of float tensors, ``indexes`` not an
                integer tensor or ``epoch`` not an int.
            ValueError: on missing or extra modality keys, wrong shapes, NaN/Inf features,
                features on another device, repeated or out-of-range indexes, ``epoch < 1``,
                or samples whose labels :meth:`init_labels` never set.

        Example:
            >>> ulgm = ULGM(2, {"fusion": 1, "text": 1})
            >>> ulgm.init_labels(torch.arange(2), torch.tensor([1.0, -1.0]))
            >>> batch = {"fusion": torch.tensor([[2.0], [-4.0]]), "text": torch.ones(2, 1)}
            >>> ulgm.step(batch, torch.arange(2), epoch=1)
            >>> print([c.tolist() for c in ulgm.centers("fusion")])
            [[2.0], [-4.0]]
        """
        indexes = self._check_indexes(indexes, distinct=True)
        epoch = check_positive_int(epoch, "epoch")
        batch = self._check_features(features, len(indexes))
        if distributed.should_sync(self.sync_dist):
            indexes, batch = _union_batch(indexes, batch)
        self._check_initialized(indexes)
        new_labels = self._generate_labels(batch, indexes, epoch) if epoch > 1 else {}
        for name in self.names:
            bank = self._bank(name)
            bank.write(indexes, labels=new_labels.get(name), features=batch[name])
            bank.refresh_centers()

    def loss(
        self,
        predictions: Mapping[str, Tensor],
        indexes: Tensor,
        *,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        r"""Self-MM's multi-task L1 loss against the current label banks.

        .. math::

            L = \frac1B \sum_i |\hat y_f^i - y_f^i|
                + \sum_s \frac1B \sum_i w_s^i\, |\hat y_s^i - y_s^i|,
            \qquad w_s^i = \tanh |y_s^i - y_f^i|,

        with labels and weights as constants (no gradient). In epoch 1 the unimodal labels
        equal the fusion label, so the weights and the unimodal terms are zero.

        Args:
            predictions: modality name -> the batch's predictions.
            indexes: the batch's sample indexes, in ``[0, num_samples)``.
            return_terms: also return the per-modality terms, detached, for logging.

        Returns:
            The total, a 0-dim tensor in the predictions' dtype; with ``return_terms`` the
            pair ``(total, {name: term})``.

        Shape:
            - predictions[name]: :math:`(B,)` or :math:`(B, 1)`; indexes: :math:`(B,)`.

        Raises:
            TypeError: if ``predictions`` is not a mapping of float tensors or ``indexes`` not
                an integer tensor.
            ValueError: on missing or extra modality keys, wrong shapes, predictions on
                another device, out-of-range indexes or samples without labels.

        Example:
            >>> ulgm = ULGM(2, {"fusion": 1, "text": 1})
            >>> ulgm.init_labels(torch.arange(2), torch.tensor([1.0, -1.0]))
            >>> predictions = {"fusion": torch.tensor([0.5, -0.5]), "text": torch.zeros(2)}
            >>> total, terms = ulgm.loss(predictions, torch.arange(2), return_terms=True)
            >>> print(total.item(), {name: term.item() for name, term in terms.items()})
            0.5 {'fusion': 0.5, 'text': 0.0}
        """
        indexes = self._check_indexes(indexes, distinct=False)
        check_keys(predictions, "predictions", self.names)
        batch = {
            name: self._check_batch_vector(
                predictions[name], f"predictions[{name!r}]", len(indexes)
            )
            for name in self.names
        }
        self._check_initialized(indexes)
        fusion_labels = self._bank(self.fusion).labels[indexes]
        terms = {}
        for name, prediction in batch.items():
            labels = self._bank(name).labels[indexes]
            error = (prediction - labels.to(prediction.dtype)).abs()
            if name != self.fusion:
                weight = torch.tanh((labels - fusion_labels).abs()).to(prediction.dtype)
                error = weight * error
            terms[name] = error.mean()
        total = torch.stack(list(terms.values())).sum()
        if return_terms:
            return total, {name: term.detach() for name, term in terms.items()}
        return total

    def labels(self, name: str) -> Tensor:
        """A copy of modality ``name``'s label bank, shape :math:`(\\text{num\\_samples},)`.

        Raises:
            ValueError: if ``name`` is not a modality of this module.

        Example:
            >>> ulgm = ULGM(3, {"fusion": 2, "text": 1})
            >>> print(ulgm.labels("text").shape)
            torch.Size([3])
        """
        return self._bank(name).labels.clone()

    def centers(self, name: str) -> tuple[Tensor, Tensor]:
        """Copies of modality ``name``'s positive and negative centres, each :math:`(d,)`.

        Raises:
            ValueError: if ``name`` is not a modality of this module.

        Example:
            >>> ulgm = ULGM(3, {"fusion": 2, "text": 1})
            >>> positive, negative = ulgm.centers("fusion")
            >>> print(positive.tolist(), negative.tolist())
            [0.0, 0.0] [0.0, 0.0]
        """
        bank = self._bank(name)
        return bank.positive.center.clone(), bank.negative.center.clone()

    def _bank(self, name: str) -> _ModalityBank:
        if name not in self.dims:
            raise ValueError(f"name: expected one of {list(self.names)}, got {name!r}")
        return cast(_ModalityBank, self.get_submodule(f"bank_{name}"))

    def _generate_labels(
        self, batch: Mapping[str, Tensor], indexes: Tensor, epoch: int
    ) -> dict[str, Tensor]:
        fusion_bank = self._bank(self.fusion)
        fusion_offset = fusion_bank.relative_distance(batch[self.fusion])
        # The published ratio divides by δ_f + MIN, which is exactly zero when δ_f = -MIN.
        denominator = fusion_offset + MIN
        denominator = torch.where(denominator == 0, MIN, denominator)
        fusion_labels = fusion_bank.labels[indexes].to(fusion_offset.dtype)
        keep, blend = (epoch - 1) / (epoch + 1), 2 / (epoch + 1)
        generated = {}
        for name in self.unimodal:
            bank = self._bank(name)
            offset = bank.relative_distance(batch[name])
            ratio = offset / denominator
            target = 0.5 * ratio * fusion_labels + 0.5 * (fusion_labels + offset - fusion_offset)
            target = target.clamp(-self.H, self.H)
            generated[name] = keep * bank.labels[indexes].to(target.dtype) + blend * target
        return generated

    def _reads_values(self, *tensors: Tensor) -> bool:
        """Whether the checks that read values on the host run (see
        :func:`deepalign.set_validation`); the ULGM's banks need real tensors."""
        for t in (*tensors, self.initialized):
            if t.device.type == "meta":
                raise ValueError(
                    "ULGM: expected real tensors, got a meta tensor: its label and feature "
                    "banks hold values that each step reads and writes; materialise the module "
                    "(e.g. ulgm.to_empty(device=...) then init_labels) and pass real tensors"
                )
        return reads_values(self.validate, *tensors)

    def _check_indexes(self, indexes: Tensor, *, distinct: bool) -> Tensor:
        if isinstance(indexes, Tensor) and not self._reads_values(indexes):
            if indexes.is_floating_point() or indexes.is_complex() or indexes.dtype == torch.bool:
                raise TypeError(f"indexes: expected an integer tensor, got dtype {indexes.dtype}")
            check_shape(indexes, "indexes", ("B",))
            return indexes.long().to(self.initialized.device)
        indexes = check_indexes(indexes, "indexes", self.num_samples, distinct=distinct)
        return indexes.to(self.initialized.device)

    def _check_batch_vector(self, x: object, name: str, batch_size: int) -> Tensor:
        """A (B,) view of a (B,) or (B, 1) float tensor on the buffers' device."""
        x = check_tensor(x, name)
        check_shape(x, name, (batch_size, 1) if x.dim() == 2 else (batch_size,))
        check_same_device(**{name: x, "ULGM buffers": self.initialized})
        return x.reshape(batch_size)

    def _check_features(self, features: Mapping[str, Tensor], batch_size: int) -> dict[str, Tensor]:
        check_keys(features, "features", self.names)
        batch = {}
        for name in self.names:
            argument = f"features[{name!r}]"
            feature = check_tensor(features[name], argument)
            check_shape(feature, argument, (batch_size, self.dims[name]))
            check_same_device(**{argument: feature, "ULGM buffers": self.initialized})
            batch[name] = feature.detach()
        if self._reads_values(*batch.values()):
            check_all_finite({f"features[{name!r}]": feature for name, feature in batch.items()})
        return batch

    def _check_initialized(self, indexes: Tensor) -> None:
        if not self._reads_values(indexes):
            return
        missing = indexes[~self.initialized[indexes]]
        if missing.numel():
            raise ValueError(
                f"indexes: expected samples whose labels init_labels has set, got "
                f"{missing.numel()} without labels (e.g. {missing[:5].tolist()}); "
                "call init_labels(indexes, labels) for the training set first"
            )


def _union_batch(indexes: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Every rank's batch, concatenated in rank order, each sample once."""
    indexes = distributed.gather_rows(indexes)
    keep = distributed.unique_first(indexes)
    gathered = {name: distributed.gather_rows(f)[keep] for name, f in batch.items()}
    return indexes[keep], gathered


class LabelTrajectory:
    """Per-epoch copies of a :class:`ULGM`'s label banks, and their distributions as a figure.

    Record at the end of every epoch (or of the epochs to show) to follow how the generated
    unimodal labels drift away from the multimodal ones, as Self-MM's paper shows [Yu2021]_.

    Example:
        >>> from deepalign.ulgm import LabelTrajectory
        >>> ulgm = ULGM(3, {"fusion": 2, "text": 1})
        >>> ulgm.init_labels(torch.arange(3), torch.tensor([1.0, -1.0, 2.0]))
        >>> trajectory = LabelTrajectory()
        >>> trajectory.record(ulgm, epoch=1)
        >>> trajectory.record(ulgm, epoch=2)
        >>> print(trajectory.epochs, trajectory.labels("text").shape)
        [1, 2] torch.Size([2, 3])
    """

    def __init__(self) -> None:
        self.fusion = ""
        self._snapshots: dict[int, dict[str, Tensor]] = {}

    @property
    def epochs(self) -> list[int]:
        """The recorded epochs, in increasing order."""
        return sorted(self._snapshots)

    @property
    def names(self) -> list[str]:
        """The recorded modality names (empty before the first record)."""
        return list(next(iter(self._snapshots.values()), {}))

    def record(self, ulgm: ULGM, epoch: int) -> None:
        """Store CPU copies of every label bank of ``ulgm`` under ``epoch`` (replacing any).

        Raises:
            TypeError: if ``ulgm`` is not a :class:`ULGM` or ``epoch`` not an int.
            ValueError: if ``epoch < 1`` or ``ulgm``'s modalities differ from those recorded.
        """
        if not isinstance(ulgm, ULGM):
            raise TypeError(f"ulgm: expected a ULGM, got {type(ulgm).__name__}")
        epoch = check_positive_int(epoch, "epoch")
        if self._snapshots and list(ulgm.names) != self.names:
            raise ValueError(
                f"ulgm: expected the recorded modalities {self.names}, got {list(ulgm.names)}"
            )
        self.fusion = ulgm.fusion
        self._snapshots[epoch] = {name: ulgm.labels(name).cpu() for name in ulgm.names}

    def labels(self, name: str) -> Tensor:
        """The label banks of modality ``name``, one row per recorded epoch.

        Shape:
            - output: :math:`(\\text{epochs}, \\text{num\\_samples})`.

        Raises:
            ValueError: if nothing was recorded or ``name`` is not a recorded modality.
        """
        if name not in self.names:
            raise ValueError(f"name: expected one of {self.names}, got {name!r}")
        return torch.stack([self._snapshots[epoch][name] for epoch in self.epochs])

    def plot(self, *, epochs: Sequence[int] | None = None, bins: int = 30) -> Figure:
        """Histograms of the unimodal labels at ``epochs`` against the multimodal labels.

        One panel per unimodal modality; the multimodal (fusion) labels are the grey filled
        histogram, each epoch a step outline. Needs matplotlib (``pip install deepalign[plot]``).

        Args:
            epochs: the recorded epochs to draw (default: all).
            bins: number of histogram bins over the range of all recorded labels.

        Returns:
            A :class:`matplotlib.figure.Figure` (not attached to pyplot).

        Raises:
            ImportError: if matplotlib is not installed.
            ValueError: if nothing was recorded or an epoch was not recorded.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "LabelTrajectory.plot needs matplotlib: pip install 'deepalign[plot]'"
            ) from error
        chosen = self._check_epochs(epochs)
        bins = check_positive_int(bins, "bins")
        unimodal = [name for name in self.names if name != self.fusion]
        fusion_labels = self._snapshots[chosen[0]][self.fusion].numpy()
        everything = torch.cat([self.labels(name).flatten() for name in self.names])
        histogram = {"bins": bins, "range": (float(everything.min()), float(everything.max()))}
        figure = Figure(figsize=(4 * len(unimodal), 3.2), layout="constrained")
        for axis, name in zip(
            figure.subplots(1, len(unimodal), squeeze=False)[0], unimodal, strict=True
        ):
            axis.hist(fusion_labels, color="0.8", label="multimodal", **histogram)
            for epoch in chosen:
                labels = self._snapshots[epoch][name].numpy()
                axis.hist(labels, histtype="step", label=f"epoch {epoch}", **histogram)
            axis.set(title=f"{name} labels", xlabel="label", ylabel="samples")
            axis.legend(fontsize="small")
        return figure

    def _check_epochs(self, epochs: Sequence[int] | None) -> list[int]:
        if not self._snapshots:
            raise ValueError("trajectory: expected recorded epochs, got none; call record first")
        if epochs is None:
            return self.epochs
        unknown = [epoch for epoch in epochs if epoch not in self._snapshots]
        if unknown or not epochs:
            raise ValueError(
                f"epochs: expected a non-empty subset of {self.epochs}, got {list(epochs)}"
            )
        return sorted(epochs)


def _check_dims(dims: Mapping[str, int], fusion: str) -> dict[str, int]:
    if not isinstance(dims, Mapping):
        raise TypeError(
            f"dims: expected a mapping name -> feature width, got {type(dims).__name__}"
        )
    for name, width in dims.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"dims: expected names that are non-empty strings without '.', got {name!r}"
            )
        check_positive_int(width, f"dims[{name!r}]")
    if fusion not in dims:
        raise ValueError(f"fusion: expected one of the names in dims {list(dims)}, got {fusion!r}")
    if len(dims) < 2:
        raise ValueError(
            f"dims: expected the fusion and at least one unimodal entry, got {list(dims)}"
        )
    return dict(dims)


def _check_bound(H: float) -> float:
    if isinstance(H, bool) or not isinstance(H, int | float):
        raise TypeError(f"H: expected a float, got {type(H).__name__}")
    if not (math.isfinite(H) and H > 0):
        raise ValueError(f"H: expected a finite value > 0, got {H}")
    return float(H)
