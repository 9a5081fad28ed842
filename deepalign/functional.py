r"""Pure functions: covariance statistics, the covariance alignment loss (plug-in and unbiased
estimators), its analytic gradient, the sampling-floor diagnostic and the closed-form alignment
map. All input validation lives here; the modules in :mod:`deepalign.alignment` hold
hyperparameters and delegate to these functions.

Notation follows [Lai2023]_: a batch of features is a matrix :math:`M \in \mathbb{R}^{N\times d}`
(``N`` rows, ``d`` columns), :math:`\tilde M = M - \mathbf{1}\bar m^\top` its column-centred copy.
The derivations, and the errata of the paper's printed equations, are on the
:doc:`/mathematics` page; the estimators on :doc:`/estimators`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.distributed as dist

from deepalign._checks import (
    check_choice,
    check_finite,
    check_min_rows,
    check_same_device,
    check_shape,
    check_tensor,
    check_validate,
    compute_dtype,
    reads_values,
)
from deepalign._coral import coral_transform
from deepalign._kernels import (
    Covariance,
    GramPairDistances,
    PairDistance,
    PairDistances,
    PairMoments,
    centred,
    no_autocast,
)
from deepalign.distributed import should_sync

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "MIN_ROWS",
    "AlignmentDiagnostics",
    "alignment_diagnostics",
    "coral_transform",
    "covariance",
    "covariance_alignment_grad",
    "covariance_alignment_loss",
    "covariance_distance",
    "named_covariances",
    "pairwise_alignment_diagnostics",
    "pairwise_alignment_losses",
]

ESTIMATORS = ("plugin", "unbiased")
"""The estimators of :math:`\\lVert\\Sigma_a - \\Sigma_b\\rVert_F^2/4d^2`: the paper's plug-in
:math:`\\theta` and the unbiased U-statistic (see :doc:`/estimators`)."""

METHODS = ("auto", "dense", "gram")
"""How the statistics are formed. ``"dense"`` with ``d×d`` covariances (:math:`O(Nd^2)`),
``"gram"`` with ``N×N`` Gram matrices (:math:`O(N^2d)`, local batches only), ``"auto"``: Gram
when every pair has :math:`N_m + N_n < d` and nothing is synchronised, else dense."""

MIN_ROWS = {"plugin": 2, "unbiased": 4}
"""Estimator -> the fewest rows per input it is defined for (per rank's share of the global
batch under ``sync_dist``: the global count)."""


# ---------------------------------------------------------------- validation helpers


def _check_features(x: object, name: str, *, min_rows: int, why: str = "") -> torch.Tensor:
    x = check_tensor(x, name)
    check_shape(x, name, ("N", "d"))
    check_min_rows(x, name, min_rows, why)
    return x


def _raise_non_finite(finite: torch.Tensor, **inputs: torch.Tensor) -> None:
    """If ``finite`` (booleans, one host synchronisation) is not all true, raise an error that
    says whether an input or the maths (overflow) is to blame."""
    if not bool(finite.all()):
        for name, x in inputs.items():
            check_finite(x, name)
        largest = max((x.abs().max().item() for x in inputs.values() if x.numel()), default=0.0)
        raise ValueError(
            f"{', '.join(inputs)}: the covariance statistics are not finite although these "
            f"features are (largest magnitude {largest:.3g}): they overflowed, "
            "or another rank's features hold NaN/Inf; rescale the features or pass float64"
        )


def _check_results(values: Sequence[torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> None:
    """Raise if a result is NaN/Inf: one host synchronisation that brings scalar results back as
    Python floats, so the common case runs no ``isfinite`` kernels."""
    if all(v.dim() == 0 for v in values):
        if all(map(math.isfinite, torch.stack(list(values)).tolist())):
            return
        _raise_non_finite(torch.tensor(False), **inputs)
    _raise_non_finite(torch.stack([torch.isfinite(v).all() for v in values]), **inputs)


def process_group(sync_dist: bool | None) -> dist.ProcessGroup | None:
    """The group to reduce statistics over (see :func:`deepalign.distributed.should_sync`);
    ``None`` means this process's batch alone."""
    return dist.group.WORLD if should_sync(sync_dist) else None


def _check_options(estimator: object, method: object, paired: object, validate: object) -> None:
    check_choice(estimator, "estimator", ESTIMATORS)
    check_choice(method, "method", METHODS)
    if paired is not None and not isinstance(paired, bool):
        raise TypeError(f"paired: expected True, False or None, got {paired!r}")
    check_validate(validate)


# ---------------------------------------------------------------- statistics


class _Centred(NamedTuple):
    """Centred rows of one input and its row count (global under a process group)."""

    rows: torch.Tensor
    count: int


class _AllReduce(torch.autograd.Function):
    """Sum over the ranks of a group. Its gradient is the same sum of the incoming gradients
    (each rank's rows get the gradient of the sum of all ranks' losses), computed by this
    Function again, so that every higher derivative is exact too."""

    @staticmethod
    def forward(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def setup_context(ctx, inputs: tuple[torch.Tensor, dist.ProcessGroup], output) -> None:
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduce.apply(grad, ctx.group), None


def _reducer(group: dist.ProcessGroup | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sum over the ranks of ``group``, differentiably (identity without a group)."""
    if group is None:
        return lambda t: t
    return lambda t: _AllReduce.apply(t, group)


def _centre_all(
    inputs: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    group: dist.ProcessGroup | None,
    check: bool,
) -> dict[str, _Centred]:
    """Centre every input on its own mean: the local one, or over a group the global one.

    Over a group, one all-reduce carries every input's column sums and row count, and (when
    validation reads values) one NaN/Inf flag per rank, so that a bad input on one rank raises
    the same error on every rank instead of leaving the others blocked in a collective.
    """
    if group is None:
        return {n: _Centred(centred(x, dtype), x.shape[0]) for n, x in inputs.items()}
    xs = {n: x.to(dtype) for n, x in inputs.items()}
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = next(iter(xs.values())).device
    parts = [x.sum(dim=0) for x in xs.values()]
    parts.append(torch.tensor([float(x.shape[0]) for x in xs.values()], dtype=dtype))
    if check:  # this rank's flag, one reduction on the device: read with the counts below
        finite = torch.stack([torch.isfinite(x).all() for x in xs.values()]).all()
        bad = torch.zeros(world, dtype=dtype, device=device)
        bad[rank] = (~finite).to(dtype)
        parts.append(bad)
    total = _AllReduce.apply(torch.cat([p.to(device) for p in parts]), group)
    counts_at = sum(x.shape[1] for x in xs.values())
    tail = total[counts_at:].tolist()  # the one host read: counts and flags together
    counts = [int(c) for c in tail[: len(xs)]]
    if check:
        bad_ranks = [r for r, flag in enumerate(tail[len(xs) :]) if flag]
        if bad_ranks:
            for name, x in inputs.items():
                check_finite(x, f"{name} (rank {rank})")
            raise ValueError(
                f"{', '.join(inputs)}: rank(s) {bad_ranks} hold NaN/Inf features; every rank "
                "stops with this error"
            )
    centred_inputs, start = {}, 0
    for (name, x), count in zip(xs.items(), counts, strict=True):
        mean = total[start : start + x.shape[1]] / max(count, 1)
        centred_inputs[name] = _Centred(x - mean, count)
        start += x.shape[1]
    return centred_inputs


def _covariances(
    rows: Mapping[str, _Centred], group: dist.ProcessGroup | None, correction: int = 1
) -> dict[str, torch.Tensor]:
    """``(d, d)`` covariance of each centred input: one product forward and one backward."""
    if group is None:
        return {
            n: Covariance.apply(c.rows, False, 1.0 / (c.count - correction))[0]
            for n, c in rows.items()
        }
    reduce = _reducer(group)
    return {
        n: reduce(Covariance.apply(c.rows, False, 1.0)[0]) / (c.count - correction)
        for n, c in rows.items()
    }


def _local_covariances(
    inputs: Mapping[str, torch.Tensor], correction: int = 1
) -> dict[str, torch.Tensor]:
    """``(d, d)`` covariance of each local input (in its compute dtype), centring included in
    the covariance's own node: the plug-in's fast path."""
    covariances = {}
    for name, x in inputs.items():
        x = x.to(compute_dtype(x))
        covariances[name] = Covariance.apply(x, True, 1.0 / (x.shape[0] - correction))[0]
    return covariances


def covariance(
    x: torch.Tensor,
    *,
    correction: int = 1,
    sync_dist: bool | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Sample covariance of the columns of ``x`` (paper Eq. 12–13), computed stably.

    .. math::

        C = \frac{1}{N - c}\,\tilde M^\top \tilde M,
        \qquad \tilde M = M - \tfrac{1}{N}\mathbf{1}\mathbf{1}^\top M .

    This equals the paper's one-pass form
    :math:`\frac{1}{N-1}\big(M^\top M - \frac{1}{N}(\mathbf{1}^\top M)^\top(\mathbf{1}^\top M)\big)`
    but avoids its catastrophic cancellation when :math:`|\bar m| \gg \sigma` (and its fp16
    overflow of :math:`M^\top M`). Its backward costs one ``N×d×d`` matrix product and is
    itself differentiable (exact higher derivatives).

    Args:
        x: features, one sample per row.
        correction: ``c`` above; 1 gives the unbiased estimate used by the paper, 0 the
            maximum-likelihood one. Default: 1.
        sync_dist: compute the covariance of the global batch of all ranks of the default
            process group (every rank must call it; see :doc:`/distributed`). Default ``None``:
            sync whenever a process group of more than one rank is initialised.
        validate: check the result for NaN/Inf (one host synchronisation). Default ``None``:
            the global default of :func:`deepalign.set_validation`.

    Returns:
        The ``(d, d)`` covariance. Its dtype is ``x.dtype`` for float32/float64 inputs and
        float32 for float16/bfloat16 inputs (the statistics are always computed in at least
        float32, also under :class:`torch.autocast`); its device is ``x.device``.

    Shape:
        - x: :math:`(N, d)`
        - output: :math:`(d, d)`

    Raises:
        TypeError: if ``x`` is not a floating-point tensor or ``correction`` not an int.
        ValueError: if ``x`` is not 2-D, has no more than ``correction`` rows, or holds NaN/Inf.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
        >>> covariance(x)
        tensor([[ 4.,  8.],
                [ 8., 16.]])
    """
    return named_covariances(
        {"x": x}, correction=correction, sync_dist=sync_dist, validate=validate
    )["x"]


def named_covariances(
    inputs: Mapping[str, torch.Tensor],
    *,
    correction: int = 1,
    sync_dist: bool | None = None,
    validate: bool | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`covariance` of several named inputs (e.g. modalities), errors naming each.

    One host synchronisation checks all the results for NaN/Inf at once (a finite input can
    still overflow), instead of one per input; the inputs are diagnosed only on failure.

    Args:
        inputs: name -> features of shape ``(N_name, d_name)``.
        correction: as in :func:`covariance`.
        sync_dist: as in :func:`covariance`.
        validate: as in :func:`covariance`.

    Returns:
        name -> the ``(d_name, d_name)`` covariance.

    Raises:
        TypeError, ValueError: as :func:`covariance`, naming the offending input.

    Example:
        >>> c = named_covariances({"audio": torch.randn(5, 2), "vision": torch.randn(7, 3)})
        >>> {name: tuple(m.shape) for name, m in c.items()}
        {'audio': (2, 2), 'vision': (3, 3)}
    """
    if not isinstance(correction, int) or isinstance(correction, bool) or correction < 0:
        raise TypeError(f"correction: expected a non-negative int, got {correction!r}")
    check_validate(validate)
    group = process_group(sync_dist)
    min_rows = 0 if group is not None else correction + 1
    checked = {name: _check_features(x, name, min_rows=min_rows) for name, x in inputs.items()}
    if group is None:
        with no_autocast(next(iter(checked.values())).device) if checked else nullcontext():
            covariances = _local_covariances(checked, correction)
        if reads_values(validate, *checked.values()):
            _check_results(list(covariances.values()), checked)
        return covariances
    covariances = {}
    for name, x in checked.items():  # dtypes may differ: centre each input on its own
        with no_autocast(x.device):
            rows = _centre_all({name: x}, compute_dtype(x), group, reads_values(validate, x))
            if rows[name].count <= correction:
                raise ValueError(
                    f"{name}: expected at least {correction + 1} rows in the global batch, "
                    f"got {rows[name].count}"
                )
            covariances[name] = _covariances(rows, group, correction)[name]
    if reads_values(validate, *checked.values()):
        _check_results(list(covariances.values()), checked)
    return covariances


def covariance_distance(c_a: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
    r"""The alignment loss between two covariance matrices (paper Eq. 14).

    .. math::

        \theta = \frac{1}{4d^2}\,\lVert C_a - C_b \rVert_F^2 .

    Use it with :func:`covariance` when one modality takes part in several terms (the losses of
    :func:`pairwise_alignment_losses` compute each modality's statistics once already).

    Args:
        c_a: covariance of the first modality.
        c_b: covariance of the second modality.

    Returns:
        A 0-dim tensor in the promoted dtype of the inputs, on their device.

    Shape:
        - c_a, c_b: :math:`(d, d)`
        - output: :math:`()`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: if the inputs are not square, are empty (``d = 0``), differ in size, or lie
            on different devices.

    Example:
        >>> covariance_distance(torch.eye(2), torch.zeros(2, 2))
        tensor(0.1250)
    """
    c_a, c_b = check_tensor(c_a, "c_a"), check_tensor(c_b, "c_b")
    check_shape(c_a, "c_a", ("d", "d"))
    check_shape(c_b, "c_b", (c_a.shape[0], c_a.shape[0]))
    check_same_device(c_a=c_a, c_b=c_b)
    d = c_a.shape[0]
    if d < 1:
        raise ValueError(f"c_a: expected a (d, d) matrix with d >= 1, got shape {tuple(c_a.shape)}")
    dtype = compute_dtype(c_a, c_b)
    with no_autocast(c_a.device):
        return (c_a.to(dtype) - c_b.to(dtype)).square().sum() / (4 * d * d)


# ---------------------------------------------------------------- the estimators


class _PairMoments(NamedTuple):
    r"""What the estimators need of one pair ``(a, b)`` (``None``: not computed).

    ``diff_sq`` :math:`\lVert C_a - C_b\rVert^2`; ``sq_a``, ``sq_b`` :math:`\lVert C\rVert^2`;
    ``tr_a``, ``tr_b`` :math:`\operatorname{tr} C`; ``q_a``, ``q_b``
    :math:`\sum_i\lVert\tilde m_i\rVert^4`; for paired rows also ``inner``
    :math:`\langle C_a, C_b\rangle`, ``cross_sq`` :math:`\operatorname{tr}(C_{ab}^2)`,
    ``cross_tr`` :math:`\operatorname{tr} C_{ab}` and ``q_ab``
    :math:`\sum_i(\tilde a_i^\top\tilde b_i)^2`, with :math:`C_{ab}` the cross-covariance.
    """

    n_a: int
    n_b: int
    diff_sq: torch.Tensor
    sq_a: torch.Tensor | None = None
    sq_b: torch.Tensor | None = None
    tr_a: torch.Tensor | None = None
    tr_b: torch.Tensor | None = None
    q_a: torch.Tensor | None = None
    q_b: torch.Tensor | None = None
    inner: torch.Tensor | None = None
    cross_sq: torch.Tensor | None = None
    cross_tr: torch.Tensor | None = None
    q_ab: torch.Tensor | None = None


def _floor(n: int, sq: torch.Tensor, tr: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Unbiased estimate of :math:`E\lVert C - \Sigma\rVert_F^2` from one batch of ``n`` rows:
    :math:`\lVert C\rVert^2` minus the U-statistic of :math:`\operatorname{tr}\Sigma^2`."""
    return (n * q - (n - 1) * tr * tr - (n + 1) * (n - 2) * sq) / (n * (n - 2) * (n - 3))


def _unbiased(m: _PairMoments, paired: bool) -> torch.Tensor:
    r"""The unbiased estimate of :math:`\lVert\Sigma_a - \Sigma_b\rVert_F^2` (derived in
    :doc:`/estimators`)."""
    if not paired:
        return (
            m.diff_sq - _floor(m.n_a, m.sq_a, m.tr_a, m.q_a) - _floor(m.n_b, m.sq_b, m.tr_b, m.q_b)
        )
    n = m.n_a
    spread = 2 * m.inner - 2 * m.cross_sq + m.tr_a**2 + m.tr_b**2 - 2 * m.cross_tr**2
    fourth = m.q_a + m.q_b - 2 * m.q_ab
    return ((n - 1) ** 2 * (n - 2) * m.diff_sq + (n - 1) * spread - n * fourth) / (
        n * (n - 2) * (n - 3)
    )


def _diff_sq(c_a: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert C_a - C_b\rVert_F^2` from the difference itself (no cancellation)."""
    diff = (c_a - c_b).reshape(-1)
    return torch.dot(diff, diff)


def _dense_moments(
    rows: Mapping[str, _Centred],
    pairs: Sequence[tuple[str, str]],
    paired: Sequence[bool],
    estimators: Sequence[str],
    group: dist.ProcessGroup | None,
) -> list[_PairMoments]:
    """Moments from ``d×d`` covariances (local or over a process group)."""
    reduce = _reducer(group)
    cov = _covariances(rows, group)
    unbiased = "unbiased" in estimators
    used = list(dict.fromkeys(name for pair in pairs for name in pair))  # same order on every rank
    sq = tr = q = {}
    if unbiased:
        sq = {n: cov[n].square().sum() for n in used}
        tr = {n: cov[n].diagonal().sum() for n in used}
        norms = {n: rows[n].rows.square().sum(dim=1) for n in used}
        q = {n: reduce(norms[n].square().sum()) for n in used}
    moments = []
    for (a, b), is_paired in zip(pairs, paired, strict=True):
        m = _PairMoments(rows[a].count, rows[b].count, _diff_sq(cov[a], cov[b]))
        if unbiased:
            m = m._replace(sq_a=sq[a], sq_b=sq[b], tr_a=tr[a], tr_b=tr[b], q_a=q[a], q_b=q[b])
        if unbiased and is_paired:
            xa, xb, k = rows[a].rows, rows[b].rows, 1.0 / (rows[a].count - 1)
            cross = reduce(xa.mT @ xb) * k
            dots = (xa * xb).sum(dim=1)
            m = m._replace(
                inner=(cov[a] * cov[b]).sum(),
                cross_sq=(cross * cross.mT).sum(),
                cross_tr=cross.diagonal().sum(),
                q_ab=reduce(dots.square().sum()),
            )
        moments.append(m)
    return moments


def _resolve_paired(
    paired: bool | None, pairs: Sequence[tuple[str, str]], rows: Mapping[str, int]
) -> list[bool]:
    if paired is None:
        return [rows[a] == rows[b] for a, b in pairs]
    if paired:
        for a, b in pairs:
            if rows[a] != rows[b]:
                raise ValueError(
                    f"paired: True needs one row per sample in both inputs, got {rows[a]} rows "
                    f"of {a!r} and {rows[b]} of {b!r}"
                )
    return [paired] * len(pairs)


class _Call(NamedTuple):
    """One call's arguments, checked once at the entry: everything below reads this record and
    never calls back into the checks.

    ``inputs``: the used inputs as given (for error messages), in order of first use; ``xs``:
    the same in the compute dtype; ``pairs``: the pairs as names and ``index``: as positions
    in ``xs``; ``pairing``: whether each pair is paired (resolved on the local row counts;
    under a group, resolved again on the global ones); ``reads``: whether the value check
    runs (one host read per call).
    """

    inputs: dict[str, torch.Tensor]
    xs: tuple[torch.Tensor, ...]
    pairs: tuple[tuple[str, str], ...]
    index: tuple[tuple[int, int], ...]
    d: int
    group: dist.ProcessGroup | None
    gram: bool
    paired: bool | None
    pairing: tuple[bool, ...]
    reads: bool


def _check_call(
    inputs: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    *,
    unbiased: bool,
    method: str,
    paired: bool | None,
    sync_dist: bool | None,
    validate: bool | None,
    prechecked: bool = False,
    why: str | None = None,
) -> _Call:
    """The one entry pass: checks the inputs (tensors, 2-D, rows, one device, one width of at
    least 1 column), chooses the path and resolves the pairing.

    ``prechecked``: ``inputs`` are the two inputs of one pair, already checked as 2-D tensors of
    one width on one device (:func:`covariance_alignment_loss`)."""
    group = process_group(sync_dist)
    need = MIN_ROWS["unbiased" if unbiased else "plugin"]
    if why is None:
        why = " for the unbiased estimator" if unbiased else ""
    if prechecked:  # one pair of tensors, 2-D, one device and one width: row counts are left
        checked = dict(inputs)
        for name, x in checked.items():
            check_min_rows(x, name, 0 if group else need, why)
    else:
        checked = _check_named_features(inputs, pairs, 0 if group else need, why)
    names = tuple(checked)
    first = checked[names[0]]
    d = first.shape[1]
    if d < 1:
        raise ValueError(
            f"{names[0]}: expected a feature width d >= 1 (at least one column), got {d} "
            f"(shape {tuple(first.shape)})"
        )
    local_rows = {name: x.shape[0] for name, x in checked.items()}
    if method == "gram" and group is not None:
        raise ValueError(
            "method: 'gram' needs every row on one process; with sync_dist use 'dense' or 'auto'"
        )
    gram = method == "gram" or (
        method == "auto"
        and group is None
        and all(local_rows[m] + local_rows[n] < d for m, n in pairs)
    )
    pairing = () if group is not None else tuple(_resolve_paired(paired, pairs, local_rows))
    dtype = compute_dtype(*checked.values())
    xs = tuple(x if x.dtype == dtype else x.to(dtype) for x in checked.values())
    position = {name: i for i, name in enumerate(names)}
    return _Call(
        checked,
        xs,
        tuple((a, b) for a, b in pairs),
        tuple((position[a], position[b]) for a, b in pairs),
        d,
        group,
        gram,
        paired,
        pairing,
        reads_values(validate, *xs),
    )


def _check_named_features(
    inputs: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]], need: int, why: str
) -> dict[str, torch.Tensor]:
    """The inputs that the pairs name, in order of first use, checked: tensors, 2-D, at least
    ``need`` rows, one device, one width."""
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"pairs: expected (first, second) name pairs, got {list(pairs)}")
    if any(m == n for m, n in pairs):
        raise ValueError(f"pairs: expected two different names per pair, got {list(pairs)}")
    used = list(dict.fromkeys(name for pair in pairs for name in pair))
    missing = [name for name in used if name not in inputs]
    if missing:
        raise ValueError(f"inputs: expected the names of pairs {list(pairs)}, missing {missing}")
    if not used:
        raise ValueError("pairs: expected at least one (first, second) pair, got none")
    checked = {n: _check_features(inputs[n], n, min_rows=need, why=why) for n in used}
    check_same_device(**checked)
    widths = {name: x.shape[1] for name, x in checked.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"inputs: expected one width for all paired inputs, got {widths}")
    return checked


def _check_values(values: Sequence[torch.Tensor], call: _Call) -> None:
    """The call's one host read: its results, brought back as Python floats. A NaN/Inf input
    makes every result it enters NaN/Inf (its column mean is not finite, so is the covariance
    or Gram entry of that column), so this read also checks the inputs; the inputs are looked
    at only when it fails, to name the culprit."""
    if not call.reads:
        return
    read = values[0].item() if len(values) == 1 else torch.stack(list(values)).tolist()
    if all(map(math.isfinite, read if isinstance(read, list) else [read])):
        return
    _raise_non_finite(torch.tensor(False), **call.inputs)


def _local_estimates(
    call: _Call, estimator: str, full: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every pair's estimate on one process and, with ``full``, its statistics vector
    (:data:`~deepalign._kernels.STATS`): one node per pair (one for all pairs for the plain
    plug-in of several pairs), no node when no input needs a gradient."""
    xs = call.xs
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in xs)
    with no_autocast(xs[0].device):
        if estimator == "plugin" and not full:
            if len(call.index) == 1 and not call.gram:  # the common case: the shortest route
                x_a, x_b = xs[call.index[0][0]], xs[call.index[0][1]]
                value = PairDistance.apply(x_a, x_b)[0] if grad else PairDistance.value(x_a, x_b)
                return [value], []
            if len(call.index) > 1:  # every pair in one node, each input's statistics once
                function = GramPairDistances if call.gram else PairDistances
                if grad:
                    values = function.apply(call.index, *xs)[0]
                else:
                    values = function.value(call.index, xs)
                return list(values.unbind(-1)), []
        values, stats = [], []
        for (a, b), is_paired in zip(call.index, call.pairing, strict=True):
            # The plug-in alone needs no pairing (no cross moments on the dense path).
            pair_paired = is_paired and (full or estimator == "unbiased")
            args = (xs[a], xs[b], estimator, call.gram, pair_paired, full)
            if grad:
                value, stat = PairMoments.apply(*args)[:2]
            else:
                value, stat = PairMoments.value(*args)
            values.append(value)
            stats.append(stat)
    return values, stats


def _group_estimates(
    call: _Call, estimators: tuple[str, ...]
) -> tuple[dict[str, list[torch.Tensor]], list[_PairMoments]]:
    """The estimates over a process group (global batch statistics, plain autograd through
    differentiable all-reduces)."""
    group, d = call.group, call.d
    unbiased = "unbiased" in estimators
    need = MIN_ROWS["unbiased" if unbiased else "plugin"]
    why = " for the unbiased estimator" if unbiased else ""
    with no_autocast(call.xs[0].device):
        named = dict(zip(call.inputs, call.xs, strict=True))
        rows = _centre_all(named, call.xs[0].dtype, group, call.reads)
        counts = {name: c.count for name, c in rows.items()}
        short = {n: c for n, c in counts.items() if c < need}
        if short:
            raise ValueError(
                f"inputs: expected at least {need} rows{why} in the global batch, got {short}"
            )
        # Pairing is a property of each rank's rows (row i of both inputs is one sample).
        pairing = _resolve_paired(call.paired, call.pairs, counts)
        if any(pairing):
            local_rows = {name: x.shape[0] for name, x in call.inputs.items()}
            _check_paired_everywhere(call.pairs, pairing, local_rows, group)
        moments = _dense_moments(rows, call.pairs, pairing, estimators, group)
        scale = 1.0 / (4 * d * d)
        out = {"plugin": [m.diff_sq * scale for m in moments]} if "plugin" in estimators else {}
        if unbiased:
            out["unbiased"] = [
                _unbiased(m, p) * scale for m, p in zip(moments, pairing, strict=True)
            ]
    return out, moments


def _check_paired_everywhere(
    pairs: Sequence[tuple[str, str]],
    pairing: Sequence[bool],
    local_rows: Mapping[str, int],
    group: dist.ProcessGroup,
) -> None:
    """Paired rows must be paired on every rank: one all-reduce of the mismatches, so that every
    rank raises the same error."""
    mismatch = torch.tensor(
        [
            float(p and local_rows[a] != local_rows[b])
            for (a, b), p in zip(pairs, pairing, strict=True)
        ]
    )
    dist.all_reduce(mismatch, group=group)
    bad = [f"{a}/{b}" for (a, b), m in zip(pairs, mismatch.tolist(), strict=True) if m]
    if bad:
        raise ValueError(
            f"paired: the pairs {bad} have equal global row counts but unequal rows on some "
            "rank; pass paired=False for independent batches"
        )


# ---------------------------------------------------------------- the public losses


def covariance_alignment_loss(
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *,
    estimator: str = "plugin",
    method: str = "auto",
    paired: bool | None = None,
    sync_dist: bool | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Covariance (CORAL) alignment loss between two batches of features (paper Eq. 12–14).

    .. math::

        \theta(M_a, M_b) = \frac{1}{4d^2}\,\lVert C_a - C_b \rVert_F^2,
        \qquad C = \tfrac{1}{N-1}\tilde M^\top \tilde M .

    ``estimator="plugin"`` (the default) is the paper's :math:`\theta`. Its expectation is the
    distance of the two populations' covariances plus a floor of sampling noise that dominates
    at small batches and whose gradient shrinks the features; ``estimator="unbiased"`` is the
    U-statistic whose expectation is exactly :math:`\lVert\Sigma_a - \Sigma_b\rVert_F^2/4d^2`
    (it can be negative, and is never clamped). :doc:`/estimators` derives both and measures
    when each is the better choice.

    The gradient of the plug-in is the corrected form of the paper's Eq. 15–16 (see
    :func:`covariance_alignment_grad` and :doc:`/mathematics`); every path is exactly twice
    differentiable.

    Args:
        x_a: features of the first modality.
        x_b: features of the second modality, same width.
        estimator: ``"plugin"`` or ``"unbiased"`` (:data:`ESTIMATORS`). Default: ``"plugin"``.
        method: ``"auto"``, ``"dense"`` or ``"gram"`` (:data:`METHODS`): ``d×d`` covariances
            in :math:`O(Nd^2)`, or ``N×N`` Gram matrices in :math:`O(N^2d)` without ``d×d``
            memory, whose float32 value loses relative accuracy when :math:`\theta` is tiny
            against :math:`\lVert C\rVert_F^2` (it subtracts squared norms; measured at
            :math:`N = 16, d = 256`: relative error :math:`2\cdot10^{-5}`, :math:`10^{-3}` and
            0.1 when :math:`4d^2\theta/\lVert C\rVert_F^2` is :math:`2\cdot10^{-2}`,
            :math:`2\cdot10^{-4}` and :math:`2\cdot10^{-6}`, the dense path below
            :math:`2\cdot10^{-7}`; pass float64 or ``"dense"`` there). Default ``"auto"``: Gram
            when :math:`N_a + N_b < d` and nothing is synchronised.
        paired: whether row ``i`` of both inputs comes from one sample (two modalities of a
            batch), which the unbiased estimator must know; ``False`` declares independent
            batches (e.g. two domains) and lowers its variance. Default ``None``: paired when
            the row counts are equal. The plug-in ignores it.
        sync_dist: use the statistics of the global batch of all ranks (see :func:`covariance`;
            communication is :math:`O(d^2)`; the Gram path is then not used). Default ``None``:
            sync whenever a process group of more than one rank is initialised.
        validate: check the inputs and the result for NaN/Inf (one host synchronisation).
            Default ``None``: the global default of :func:`deepalign.set_validation`.

    Returns:
        A 0-dim tensor on the inputs' device, in their promoted dtype (float32 when both are
        float16/bfloat16; also under :class:`torch.autocast`): :math:`\theta \ge 0` for the
        plug-in, any real number for the unbiased estimator.

    Shape:
        - x_a: :math:`(N_a, d)`, x_b: :math:`(N_b, d)`
        - output: :math:`()`

    Raises:
        TypeError: if an input is not a floating-point tensor, or an option has the wrong type.
        ValueError: if an input is not 2-D, has fewer than 2 rows (4 for the unbiased
            estimator), no column, or holds NaN/Inf; if the widths differ; if the inputs lie on
            different devices; for an unknown ``estimator`` or ``method``.

    Example:
        >>> x_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # C_a = [[2, 0], [0, 0]]
        >>> x_b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # C_b = [[0, 0], [0, 2]]
        >>> covariance_alignment_loss(x_a, x_b)  # (4 + 4) / (4 * 2**2)
        tensor(0.5000)
    """
    _check_options(estimator, method, paired, validate)
    x_a, x_b = check_tensor(x_a, "x_a"), check_tensor(x_b, "x_b")
    check_shape(x_a, "x_a", ("N", "d"))
    check_shape(x_b, "x_b", ("N", "d"))
    check_same_device(x_a=x_a, x_b=x_b)
    if x_a.shape[1] != x_b.shape[1]:
        raise ValueError(
            f"x_b: expected the width of x_a ({x_a.shape[1]} columns), got {x_b.shape[1]}; "
            "project the features to a common width first (CovarianceAlignmentLoss(in_dims=..., "
            "proj_dim=...))"
        )
    call = _check_call(
        {"x_a": x_a, "x_b": x_b},
        (("x_a", "x_b"),),
        unbiased=estimator == "unbiased",
        method=method,
        paired=paired,
        sync_dist=sync_dist,
        validate=validate,
        prechecked=True,
    )
    if call.group is None:
        values = _local_estimates(call, estimator, False)[0]
    else:
        values = _group_estimates(call, (estimator,))[0][estimator]
    _check_values(values, call)
    return values[0]


def pairwise_alignment_losses(
    inputs: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    *,
    estimator: str = "plugin",
    method: str = "auto",
    paired: bool | None = None,
    sync_dist: bool | None = None,
    validate: bool | None = None,
    return_diagnostics: bool = False,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[AlignmentDiagnostics]]:
    r"""The loss of :func:`covariance_alignment_loss` for several pairs of named inputs, each
    input's statistics computed once.

    Each input is centred once and, on the dense path, its covariance formed with one product
    (backward: one product per input); on the Gram path its ``N×N`` Gram matrix once and one
    cross product per pair. One host synchronisation checks all the results for NaN/Inf.

    Args:
        inputs: name -> features; the names in ``pairs`` must share one width ``d``.
        pairs: the ``(first, second)`` names of each term.
        estimator: as in :func:`covariance_alignment_loss`.
        method: as in :func:`covariance_alignment_loss` (``"auto"``: Gram when every pair has
            :math:`N_m + N_n < d`).
        paired: as in :func:`covariance_alignment_loss`, for every pair.
        sync_dist: as in :func:`covariance`.
        validate: as in :func:`covariance_alignment_loss`.
        return_diagnostics: also return each pair's :class:`AlignmentDiagnostics` (detached),
            computed from the same moments as the loss, in the same node (no second pass over
            the features, no extra host read): what a trainer logs on every step. Needs at
            least 4 rows per input, as the unbiased estimator. Default: ``False``.

    Returns:
        One 0-dim tensor per pair, in order; with ``return_diagnostics``, ``(losses,
        diagnostics)``, one :class:`AlignmentDiagnostics` per pair.

    Shape:
        - inputs[name]: :math:`(N_\text{name}, d)`
        - output: a list of :math:`()` tensors

    Raises:
        TypeError, ValueError: as :func:`covariance_alignment_loss`, naming the input; also if
            a name in ``pairs`` is not in ``inputs``, a pair repeats a name, or the widths
            differ; with ``return_diagnostics``, for fewer than 4 rows per input.

    Example:
        >>> x = {m: torch.randn(6, 3) for m in ("text", "audio", "vision")}
        >>> thetas = pairwise_alignment_losses(x, [("text", "audio"), ("audio", "vision")])
        >>> torch.allclose(thetas[1], covariance_alignment_loss(x["audio"], x["vision"]))
        True
    """
    _check_options(estimator, method, paired, validate)
    if not isinstance(return_diagnostics, bool):
        raise TypeError(f"return_diagnostics: expected True or False, got {return_diagnostics!r}")
    why = " for the diagnostics (the unbiased estimator's moments)" if return_diagnostics else None
    call = _check_call(
        inputs,
        pairs,
        unbiased=estimator == "unbiased" or return_diagnostics,
        method=method,
        paired=paired,
        sync_dist=sync_dist,
        validate=validate,
        why=None if estimator == "unbiased" else why,
    )
    if call.group is None:
        values, stats = _local_estimates(call, estimator, return_diagnostics)
        _check_values(values, call)
        if not return_diagnostics:
            return values
        return values, [_diagnostics_of(s) for s in stats]
    if not return_diagnostics:
        values = _group_estimates(call, (estimator,))[0][estimator]
        _check_values(values, call)
        return values
    estimates, moments = _group_estimates(call, ESTIMATORS)
    values = estimates[estimator]
    _check_values(values, call)
    return values, _group_diagnostics(estimates, moments, call.d)


class AlignmentDiagnostics(NamedTuple):
    r"""What :func:`alignment_diagnostics` returns (0-dim tensors, detached).

    Attributes:
        plugin: the paper's :math:`\theta`.
        unbiased: the unbiased estimate of :math:`\lVert\Sigma_a-\Sigma_b\rVert_F^2/4d^2`.
        floor: ``plugin - unbiased``: an unbiased estimate of the plug-in's expected excess
            over the population distance, the sampling noise in :math:`\theta`.
        scale_a: :math:`\operatorname{tr} C_a / d`, the mean variance of the first input.
        scale_b: :math:`\operatorname{tr} C_b / d`.
    """

    plugin: torch.Tensor
    unbiased: torch.Tensor
    floor: torch.Tensor
    scale_a: torch.Tensor
    scale_b: torch.Tensor


@torch.no_grad()
def pairwise_alignment_diagnostics(
    inputs: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    *,
    method: str = "auto",
    paired: bool | None = None,
    sync_dist: bool | None = None,
    validate: bool | None = None,
) -> list[AlignmentDiagnostics]:
    """:func:`alignment_diagnostics` of several pairs, each input's statistics once.

    Args:
        inputs: as in :func:`pairwise_alignment_losses`.
        pairs: as in :func:`pairwise_alignment_losses`.
        method: as in :func:`covariance_alignment_loss`.
        paired: as in :func:`covariance_alignment_loss`.
        sync_dist: as in :func:`covariance`.
        validate: as in :func:`covariance_alignment_loss`.

    Returns:
        One :class:`AlignmentDiagnostics` per pair, in order.

    Raises:
        TypeError, ValueError: as :func:`pairwise_alignment_losses` with
            ``estimator="unbiased"``.

    Example:
        >>> x = {m: torch.randn(16, 3) for m in ("audio", "vision")}
        >>> (diag,) = pairwise_alignment_diagnostics(x, [("audio", "vision")])
        >>> torch.allclose(diag.plugin - diag.unbiased, diag.floor)
        True
    """
    _check_options("unbiased", method, paired, validate)
    call = _check_call(
        inputs,
        pairs,
        unbiased=True,
        method=method,
        paired=paired,
        sync_dist=sync_dist,
        validate=validate,
    )
    if call.group is None:
        values, stats = _local_estimates(call, "unbiased", True)
        _check_values(values, call)
        return [_diagnostics_of(s) for s in stats]
    estimates, moments = _group_estimates(call, ESTIMATORS)
    _check_values(estimates["unbiased"], call)
    return _group_diagnostics(estimates, moments, call.d)


def _diagnostics_of(stats: torch.Tensor) -> AlignmentDiagnostics:
    """:class:`AlignmentDiagnostics` from :class:`~deepalign._kernels.PairMoments`'s
    statistics vector."""
    plugin, unbiased, scale_a, scale_b = stats.detach().unbind()
    return AlignmentDiagnostics(plugin, unbiased, plugin - unbiased, scale_a, scale_b)


def _group_diagnostics(
    estimates: Mapping[str, list[torch.Tensor]], moments: Sequence[_PairMoments], d: int
) -> list[AlignmentDiagnostics]:
    """:class:`AlignmentDiagnostics` from the group path's estimates and moments."""
    out = []
    pairs = zip(estimates["plugin"], estimates["unbiased"], moments, strict=True)
    for plugin, unbiased, m in pairs:
        plugin, unbiased = plugin.detach(), unbiased.detach()
        out.append(AlignmentDiagnostics(plugin, unbiased, plugin - unbiased,
                                        m.tr_a.detach() / d, m.tr_b.detach() / d))  # fmt: skip
    return out


def alignment_diagnostics(
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *,
    method: str = "auto",
    paired: bool | None = None,
    sync_dist: bool | None = None,
    validate: bool | None = None,
) -> AlignmentDiagnostics:
    r"""How much of the plug-in :math:`\theta` of a batch is sampling noise.

    Returns the plug-in and unbiased estimates of the alignment loss, their difference (the
    *floor*: an unbiased estimate of :math:`E[\theta_\text{plugin}] -
    \lVert\Sigma_a-\Sigma_b\rVert_F^2/4d^2`, see :doc:`/estimators`) and each input's scale
    :math:`\operatorname{tr} C/d`, the quantity whose shrinkage the floor's gradient causes.
    Computed without gradient.

    Args:
        x_a: features of the first modality.
        x_b: features of the second modality, same width.
        method: as in :func:`covariance_alignment_loss`.
        paired: as in :func:`covariance_alignment_loss`.
        sync_dist: as in :func:`covariance`.
        validate: as in :func:`covariance_alignment_loss`.

    Returns:
        An :class:`AlignmentDiagnostics`.

    Shape:
        - x_a: :math:`(N_a, d)`, x_b: :math:`(N_b, d)`, at least 4 rows each
        - output: five :math:`()` tensors

    Raises:
        TypeError, ValueError: as :func:`covariance_alignment_loss` with
            ``estimator="unbiased"``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x_a, x_b = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
        >>> diag = alignment_diagnostics(x_a, x_b, paired=False)  # one distribution
        >>> round(diag.floor.item() / diag.plugin.item(), 2)  # the share of pure noise
        0.99
    """
    x_a, x_b = check_tensor(x_a, "x_a"), check_tensor(x_b, "x_b")
    (diagnostics,) = pairwise_alignment_diagnostics(
        {"x_a": x_a, "x_b": x_b},
        [("x_a", "x_b")],
        method=method,
        paired=paired,
        sync_dist=sync_dist,
        validate=validate,
    )
    return diagnostics


def covariance_alignment_grad(
    x_a: torch.Tensor, x_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Analytic gradients of :func:`covariance_alignment_loss` (corrected paper Eq. 15–16).

    .. math::

        \frac{\partial\theta}{\partial M_a} = \frac{\tilde M_a (C_a - C_b)}{d^2 (N_a - 1)},
        \qquad
        \frac{\partial\theta}{\partial M_b} = -\frac{\tilde M_b (C_a - C_b)}{d^2 (N_b - 1)} .

    The paper prints :math:`\tilde M_a^\top` (a ``d×N`` matrix, which cannot multiply
    ``C_a - C_b``) and a positive sign for :math:`M_b`; :doc:`/mathematics` derives the forms
    above and shows the printed ones fail numerically. The test suite uses this function as
    the oracle of every path's gradient.

    Args:
        x_a: features of the first modality.
        x_b: features of the second modality, same width.

    Returns:
        ``(grad_a, grad_b)``, shaped like the inputs, in the dtype the loss is computed in.

    Shape:
        - x_a: :math:`(N_a, d)`, x_b: :math:`(N_b, d)`
        - output: :math:`(N_a, d)`, :math:`(N_b, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor.
        ValueError: as :func:`covariance_alignment_loss`.

    Example:
        >>> x_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> x_b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
        >>> grad_a, grad_b = covariance_alignment_grad(x_a, x_b)
        >>> grad_a
        tensor([[-0.5000,  0.0000],
                [ 0.5000,  0.0000]])
    """
    x_a = _check_features(x_a, "x_a", min_rows=2)
    x_b = _check_features(x_b, "x_b", min_rows=2)
    check_same_device(x_a=x_a, x_b=x_b)
    if x_a.shape[1] != x_b.shape[1]:
        raise ValueError(
            f"x_b: expected the width of x_a ({x_a.shape[1]} columns), got {x_b.shape[1]}"
        )
    dtype = compute_dtype(x_a, x_b)
    d = x_a.shape[1]
    with torch.no_grad(), no_autocast(x_a.device):
        xc_a, xc_b = centred(x_a, dtype), centred(x_b, dtype)
        diff = xc_a.mT @ xc_a / (x_a.shape[0] - 1) - xc_b.mT @ xc_b / (x_b.shape[0] - 1)
        _raise_non_finite(torch.isfinite(diff).all(), x_a=x_a, x_b=x_b)
        grad_a = xc_a @ diff / (d * d * (x_a.shape[0] - 1))
        grad_b = xc_b @ diff / (-d * d * (x_b.shape[0] - 1))
    return grad_a, grad_b
