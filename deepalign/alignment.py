"""Alignment losses as :class:`torch.nn.Module` objects, and the paper's Table II notation.

The modules hold hyperparameters and optional projections; the mathematics and the input
validation are in :mod:`deepalign.functional` (see :func:`~deepalign.functional.covariance` and
:func:`~deepalign.functional.covariance_alignment_loss`).
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepalign import functional as F
from deepalign._checks import (
    check_choice,
    check_positive_int,
    check_same_device,
    check_shape,
    check_tensor,
    check_validate,
)
from deepalign.functional import ESTIMATORS, METHODS

__all__ = [
    "DEFAULT_ALIASES",
    "ESTIMATORS",
    "METHODS",
    "AlignmentTerm",
    "CovarianceAlignmentLoss",
    "FixedProjection",
    "ModalityAlignment",
    "parse_spec",
]

DEFAULT_ALIASES: Mapping[str, str] = {"T": "text", "A": "audio", "V": "vision"}
"""The letters of the paper's Table II and the feature names they stand for."""

PROJECTIONS = ("fixed", "learned")
PRIVATE_MODES = ("bounded", "negated")
_SYNTAX = re.compile(r"[\s+\-/]")
_TERM = re.compile(r"^\s*([^\s+\-/]+)\s*([+-])\s*([^\s+\-/]+)\s*$")
_TRIVIAL_MINIMUM = (
    "projection='learned': projections trained only by the alignment loss have a trivial "
    "minimum (both maps shrink to 0, theta -> 0, nothing is learned upstream). Train them with "
    "the task loss too, or use projection='fixed'."
)


@dataclass(frozen=True)
class AlignmentTerm:
    """One term of a spec: ``first``/``second`` feature names; ``private`` for a ``+`` term."""

    first: str
    second: str
    private: bool

    def __str__(self) -> str:
        return f"{self.first}{'+' if self.private else '-'}{self.second}"


def parse_spec(
    spec: str, names: Collection[str], *, aliases: Mapping[str, str] = DEFAULT_ALIASES
) -> list[AlignmentTerm]:
    """Parse the paper's Table II notation into alignment terms.

    ``"V-A"`` aligns V with A (shared information: the term is minimised); ``"T+A"`` pushes T
    and A apart (private information); ``/`` joins terms, e.g. ``"T-V/T-A/A-V"``. A token is a
    key of ``aliases`` (the letters T, A, V by default) or one of ``names`` itself.

    Args:
        spec: the spec string.
        names: the feature names that exist (e.g. the keys of ``dims``).
        aliases: token -> feature name. Default: :data:`~deepalign.alignment.DEFAULT_ALIASES`.

    Returns:
        The terms, in the order written, with tokens resolved to feature names.

    Raises:
        TypeError: if ``spec`` is not a str.
        ValueError: for an empty or malformed term, an unknown name, a term that pairs a
            modality with itself, or a pair that appears twice.

    Example:
        >>> [str(t) for t in parse_spec("T+V/T-A", ["text", "audio", "vision"])]
        ['text+vision', 'text-audio']
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a str such as 'V-A' or 'T-V/T-A', got {spec!r}")
    terms: list[AlignmentTerm] = []
    for part in spec.split("/"):
        match = _TERM.match(part)
        if match is None:
            raise ValueError(
                f"spec: expected terms like 'V-A' or 'T+A' joined by '/', got {part!r} in {spec!r}"
            )
        first, sign, second = match.groups()
        resolved = (_resolve(token, names, aliases, spec) for token in (first, second))
        term = AlignmentTerm(*resolved, private=sign == "+")
        _check_new_term(term, terms, spec)
        terms.append(term)
    return terms


def _resolve(token: str, names: Collection[str], aliases: Mapping[str, str], spec: str) -> str:
    # A token that is itself a feature name is that feature, whatever the aliases say.
    name = token if token in names else aliases.get(token, token)
    if name not in names:
        known = sorted(set(names) | {a for a, n in aliases.items() if n in names})
        raise ValueError(f"spec: unknown modality {token!r} in {spec!r}; expected one of {known}")
    return name


def _check_new_term(term: AlignmentTerm, earlier: list[AlignmentTerm], spec: str) -> None:
    if term.first == term.second:
        raise ValueError(f"spec: term {str(term)!r} in {spec!r} pairs {term.first!r} with itself")
    pair = {term.first, term.second}
    if any({t.first, t.second} == pair for t in earlier):
        raise ValueError(f"spec: the pair {sorted(pair)} appears twice in {spec!r}")


class FixedProjection(nn.Module):
    """A non-learned linear map with orthonormal columns (or rows, when widening).

    Its matrix is drawn once from a seeded Gaussian and orthonormalised by QR; it is a buffer,
    so it moves with ``.to()`` and is saved in the ``state_dict``, and the optimiser never sees
    it. Output dtype follows the input.
    """

    weight: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        gaussian = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=generator)
        q = torch.linalg.qr(gaussian).Q
        self.register_buffer("weight", q if in_dim >= out_dim else q.mT.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.to(x.dtype)

    def extra_repr(self) -> str:
        in_dim, out_dim = self.weight.shape
        return f"in_dim={in_dim}, out_dim={out_dim}, seed={self.seed}"


def _projections(
    in_dims: Mapping[str, int], proj_dim: int, projection: str, seed: int
) -> nn.ModuleDict:
    """One projection to ``proj_dim`` per input; warns about the trivial minimum when learned."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection: expected one of {PROJECTIONS}, got {projection!r}")
    check_positive_int(proj_dim, "proj_dim")
    for name, dim in in_dims.items():
        check_positive_int(dim, f"in_dims[{name!r}]")
    if projection == "learned":
        warnings.warn(_TRIVIAL_MINIMUM, UserWarning, stacklevel=3)
        return nn.ModuleDict({n: nn.Linear(d, proj_dim, bias=False) for n, d in in_dims.items()})
    return nn.ModuleDict(
        {n: FixedProjection(d, proj_dim, seed=seed + i) for i, (n, d) in enumerate(in_dims.items())}
    )


def _check_weight(weight: object) -> float:
    """A finite, non-negative real number: Python or NumPy scalar, or a 0-dim real tensor."""
    real_tensor = (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 0
        and (weight.is_floating_point() or (weight.dtype != torch.bool and not weight.is_complex()))
    )
    if not (real_tensor or (isinstance(weight, numbers.Real) and not isinstance(weight, bool))):
        raise TypeError(
            f"weight: expected a real number (int, float, NumPy scalar or 0-dim tensor), "
            f"got {weight!r}"
        )
    value = float(weight)
    if not math.isfinite(value):
        raise ValueError(f"weight: expected a finite number, got {weight!r}")
    if value < 0:
        raise ValueError(
            f"weight: expected a number >= 0, got {value}: a negative weight maximises the "
            "distance without bound; to push two modalities apart use a private term of "
            "ModalityAlignment (e.g. spec 'T+A'), whose penalty is bounded"
        )
    return value


def _check_names(dims: Mapping[str, int]) -> None:
    """Feature names must be usable as spec tokens: no '-', '+', '/' or whitespace."""
    if not isinstance(dims, Mapping):
        raise TypeError(f"dims: expected a mapping name -> width, got {type(dims).__name__}")
    for name in dims:
        if not isinstance(name, str) or not name or _SYNTAX.search(name):
            raise ValueError(
                f"dims: expected names without '-', '+', '/' or whitespace (they are the spec's "
                f"syntax, so the name could not be written in a spec), got {name!r}"
            )


def _project(projections: nn.ModuleDict, name: str, x: object, width: int) -> torch.Tensor:
    """Apply ``projections[name]`` after checking the width (a clear error, not a matmul one)."""
    x = check_tensor(x, name)
    check_shape(x, name, ("N", width))
    return projections[name](x)


class CovarianceAlignmentLoss(nn.Module):
    r"""``weight`` × the covariance alignment loss :math:`\theta` of [Lai2023]_ (Eq. 14).

    See :func:`deepalign.functional.covariance_alignment_loss` for the definition, the two
    estimators, gradients, dtypes and errors. When the two inputs have different widths,
    ``in_dims=(d_a, d_b)`` and ``proj_dim=d`` give the module one projection per input to the
    common width ``d``, as the paper projects audio and visual features "into a
    low-dimensional space of dimension d".

    .. warning::
        Projections that only this loss trains (``projection="learned"``) have a trivial
        minimum: both maps shrink to zero, :math:`\theta \to 0`, and nothing upstream learns.
        The module warns when built that way. The default ``projection="fixed"`` uses
        orthonormal, non-learned maps (:class:`FixedProjection`); learned ones are sound only
        when the task loss trains them as well.

    Args:
        weight: factor applied to :math:`\theta`, a real number :math:`\ge 0` (Python, NumPy or
            0-dim tensor). Default: 1.0.
        in_dims: ``(d_a, d_b)``, the input widths, to project them; ``None`` (default) means no
            projection and equal widths.
        proj_dim: the common width ``d``; required with ``in_dims``.
        projection: ``"fixed"`` (default) or ``"learned"`` (bias-free :class:`torch.nn.Linear`).
        seed: seed of the fixed projections. Default: 0.
        estimator: ``"plugin"`` (default, the paper's) or ``"unbiased"``; see
            :data:`deepalign.functional.ESTIMATORS`.
        method: ``"auto"`` (default), ``"dense"`` or ``"gram"``; see
            :data:`deepalign.functional.METHODS`.
        paired: row ``i`` of both inputs is one sample (used by the unbiased estimator).
            Default ``None``: paired when the row counts are equal.
        sync_dist: statistics of the global batch across ranks; see
            :func:`deepalign.functional.covariance`. Default ``None``: sync whenever a process
            group of more than one rank is initialised.
        validate: host-side NaN/Inf checks; default ``None`` follows
            :func:`deepalign.set_validation`.

    Shape:
        - x_a: :math:`(N_a, d_a)`, x_b: :math:`(N_b, d_b)`
        - output: :math:`()`

    Raises:
        TypeError: for a ``weight`` that is not a real number (``True``/``False`` included).
        ValueError: for a negative or non-finite ``weight``, ``in_dims`` without ``proj_dim``
            (or the reverse), an unknown ``projection``, ``estimator`` or ``method``, or inputs
            whose widths do not match ``in_dims``.

    Example:
        >>> loss = CovarianceAlignmentLoss(weight=2.0, in_dims=(5, 20), proj_dim=8)
        >>> value = loss(torch.randn(16, 5), torch.randn(16, 20))
        >>> value.shape, bool(value > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self,
        weight: float = 1.0,
        *,
        in_dims: tuple[int, int] | None = None,
        proj_dim: int | None = None,
        projection: str = "fixed",
        seed: int = 0,
        estimator: str = "plugin",
        method: str = "auto",
        paired: bool | None = None,
        sync_dist: bool | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.weight = _check_weight(weight)
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.method = check_choice(method, "method", METHODS)
        if paired is not None and not isinstance(paired, bool):
            raise TypeError(f"paired: expected True, False or None, got {paired!r}")
        self.paired = paired
        self.sync_dist = sync_dist
        self.validate = check_validate(validate)
        if (in_dims is None) != (proj_dim is None):
            raise ValueError(
                f"in_dims, proj_dim: expected both or neither, got in_dims={in_dims!r}, "
                f"proj_dim={proj_dim!r}"
            )
        self.in_dims = None if in_dims is None else tuple(in_dims)
        self.proj_dim, self.projection, self.seed = proj_dim, projection, seed
        self.projections = None
        if in_dims is not None:
            if len(self.in_dims) != 2:
                raise ValueError(f"in_dims: expected (d_a, d_b), got {in_dims!r}")
            dims = dict(zip(("x_a", "x_b"), self.in_dims, strict=True))
            self.projections = _projections(dims, proj_dim, projection, seed)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        if self.projections is not None:
            x_a = _project(self.projections, "x_a", x_a, self.in_dims[0])
            x_b = _project(self.projections, "x_b", x_b, self.in_dims[1])
        theta = F.covariance_alignment_loss(
            x_a,
            x_b,
            estimator=self.estimator,
            method=self.method,
            paired=self.paired,
            sync_dist=self.sync_dist,
            validate=self.validate,
        )
        return self.weight * theta

    def extra_repr(self) -> str:
        options = [f"weight={self.weight}", f"estimator={self.estimator!r}"]
        options += [f"method={self.method!r}", f"paired={self.paired}"]
        if self.in_dims is not None:
            options += [f"in_dims={self.in_dims}", f"proj_dim={self.proj_dim}"]
            options += [f"projection={self.projection!r}", f"seed={self.seed}"]
        options += [f"sync_dist={self.sync_dist}", f"validate={self.validate}"]
        return ", ".join(options)


class ModalityAlignment(nn.Module):
    r"""A sum of shared (``-``) and private (``+``) covariance terms, in Table II notation.

    For a spec such as ``"T-V/T+A"``, the loss is

    .. math::

        \mathcal{L} = w \Big(\sum_{(m,n)\in\text{shared}} \theta(M_m, M_n)
        + \sum_{(m,n)\in\text{private}} \phi\big(\theta(M_m, M_n)\big)\Big)

    with :math:`\theta` the covariance alignment loss
    (:func:`deepalign.functional.covariance_alignment_loss`, either estimator) and :math:`\phi`
    the private penalty. [Lai2023]_ only says a "+" term's parameter "can be adjusted"; its
    MOSEI rows with "+" collapse (Corr 0.245–0.407), as a negated, unbounded :math:`\theta`
    would make them. ``private`` chooses :math:`\phi`:

    - ``"bounded"`` (default): :math:`\phi(\theta) = -\theta/(1+|\theta|)`. For the plug-in
      (:math:`\theta \ge 0`) it equals :math:`-\theta` to first order for matched features,
      lies in :math:`(-1, 0]`, and its gradient :math:`-1/(1+\theta)^2` fades as the
      modalities separate, so features cannot be blown up to drive the loss to
      :math:`-\infty`. The unbiased :math:`\theta` can be negative (the modalities look closer
      than sampling noise); there :math:`\phi` is a small positive penalty in :math:`[0, 1)`
      whose gradient still pushes the modalities apart: :math:`\phi` is odd, continuous, bounded
      and differentiable everywhere (:doc:`/estimators`).
    - ``"negated"``: :math:`\phi(\theta) = -\theta`, unbounded below; reproduces Table II.

    Each modality's statistics are computed once per call, however many terms name it
    (:func:`deepalign.functional.pairwise_alignment_losses`).

    Args:
        spec: the terms, e.g. ``"V-A"`` or ``"T-V/T-A/A-V"`` (see :func:`parse_spec`).
        dims: feature name -> width, for every name the spec may use. Names must not contain
            ``-``, ``+``, ``/`` or whitespace.
        aliases: spec token -> feature name, for tokens that are not themselves names in
            ``dims``. Default: :data:`~deepalign.alignment.DEFAULT_ALIASES`.
        proj_dim: common width to project every aligned modality to; required when their
            widths differ. Default ``None``: no projection.
        projection: ``"fixed"`` (default, orthonormal and not learned) or ``"learned"``; see the
            warning in :class:`CovarianceAlignmentLoss`.
        private: ``"bounded"`` (default) or ``"negated"``, the penalty :math:`\phi` above.
        weight: the factor :math:`w \ge 0`. Default: 1.0.
        seed: seed of the fixed projections. Default: 0.
        estimator: ``"plugin"`` (default) or ``"unbiased"``.
        method: ``"auto"`` (default), ``"dense"`` or ``"gram"``.
        paired: as in :class:`CovarianceAlignmentLoss`. Default ``None``.
        sync_dist: statistics of the global batch across ranks; see
            :func:`deepalign.functional.covariance`. Default ``None``: sync whenever a process
            group of more than one rank is initialised.
        validate: host-side NaN/Inf checks; default ``None`` follows
            :func:`deepalign.set_validation`.

    Shape:
        - features: a mapping name -> :math:`(N_\text{name}, d_\text{name})`; keys the spec does
          not use are ignored.
        - output: :math:`()`; with ``return_terms=True``, also a dict term -> :math:`()`: each
          term's *contribution* (weight and :math:`\phi` applied), so the values add up to the
          total.

    Raises:
        ValueError: for a malformed spec, names with spec syntax, unequal widths without
            ``proj_dim``, an unknown ``private``, ``projection``, ``estimator`` or ``method``, a
            negative ``weight``, or features that are missing, of the wrong width, or on
            different devices (and as :func:`deepalign.functional.covariance`).

    Example:
        >>> align = ModalityAlignment("T-V/T+A", {"text": 4, "audio": 4, "vision": 4}, weight=2)
        >>> feats = {name: torch.randn(8, 4) for name in ("text", "audio", "vision")}
        >>> total, terms = align(feats, return_terms=True)
        >>> sorted(terms), torch.allclose(sum(terms.values()), total)
        (['text+audio', 'text-vision'], True)
    """

    def __init__(
        self,
        spec: str,
        dims: Mapping[str, int],
        *,
        aliases: Mapping[str, str] = DEFAULT_ALIASES,
        proj_dim: int | None = None,
        projection: str = "fixed",
        private: str = "bounded",
        weight: float = 1.0,
        seed: int = 0,
        estimator: str = "plugin",
        method: str = "auto",
        paired: bool | None = None,
        sync_dist: bool | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        _check_names(dims)
        self.private = check_choice(private, "private", PRIVATE_MODES)
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.method = check_choice(method, "method", METHODS)
        if paired is not None and not isinstance(paired, bool):
            raise TypeError(f"paired: expected True, False or None, got {paired!r}")
        self.paired, self.sync_dist = paired, sync_dist
        self.validate = check_validate(validate)
        self.spec = spec
        self.terms = parse_spec(spec, list(dims), aliases=aliases)
        self.weight = _check_weight(weight)
        used = list(dict.fromkeys(n for t in self.terms for n in (t.first, t.second)))
        self.dims = {name: dims[name] for name in used}
        self.proj_dim, self.projection, self.seed = proj_dim, projection, seed
        self.projections = None
        if proj_dim is not None:
            self.projections = _projections(self.dims, proj_dim, projection, seed)
        elif len(set(self.dims.values())) > 1:
            raise ValueError(
                f"dims: the aligned modalities have different widths {self.dims}; pass "
                "proj_dim to project them to a common width"
            )

    def forward(
        self, features: Mapping[str, torch.Tensor], *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        thetas = self._estimates(features)
        return self._total(thetas, return_terms)

    def _estimates(self, features: Mapping[str, torch.Tensor], **options: Any) -> Any:
        """The one call of :func:`~deepalign.functional.pairwise_alignment_losses` with this
        module's options (``return_diagnostics=True`` adds the diagnostics)."""
        return F.pairwise_alignment_losses(
            self._inputs(features),
            self._pairs(),
            estimator=self.estimator,
            method=self.method,
            paired=self.paired,
            sync_dist=self.sync_dist,
            validate=self.validate,
            **options,
        )

    def loss_and_diagnostics(
        self, features: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, F.AlignmentDiagnostics]]:
        """The loss, its terms and :meth:`diagnostics` from one computation of the statistics
        (``pairwise_alignment_losses(..., return_diagnostics=True)``): what a training step
        logs, without a second pass over the features or a second host read.

        Args:
            features: as when calling the module; at least 4 rows per modality (the unbiased
                estimator's moments).

        Returns:
            ``(loss, terms, diagnostics)``: the loss and terms of ``module(features,
            return_terms=True)`` and the dict of :meth:`diagnostics`.

        Raises:
            TypeError, ValueError: as calling the module, and for fewer than 4 rows.

        Example:
            >>> align = ModalityAlignment("V-A", {"audio": 5, "vision": 5})
            >>> x = {"audio": torch.randn(8, 5), "vision": torch.randn(8, 5)}
            >>> loss, terms, diag = align.loss_and_diagnostics(x)
            >>> bool(torch.isclose(diag["vision-audio"].plugin, loss))
            True
        """
        thetas, diagnostics = self._estimates(features, return_diagnostics=True)
        total, terms = self._total(thetas, True)
        named = {str(term): d for term, d in zip(self.terms, diagnostics, strict=True)}
        return total, terms, named

    def _total(
        self, thetas: list[torch.Tensor], return_terms: bool
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the terms' losses (and, with ``return_terms``, each term)."""
        values = [
            self.weight * (self._private_penalty(theta) if term.private else theta)
            for term, theta in zip(self.terms, thetas, strict=True)
        ]
        total = values[0] if len(values) == 1 else torch.stack(values).sum()
        if return_terms:
            names = [str(term) for term in self.terms]
            return total, {n: v.detach() for n, v in zip(names, values, strict=True)}
        return total

    def diagnostics(
        self, features: Mapping[str, torch.Tensor], *, validate: bool | None = None
    ) -> dict[str, F.AlignmentDiagnostics]:
        """Each term's plug-in and unbiased :math:`\\theta`, the sampling floor and the
        modalities' scales (:func:`deepalign.functional.pairwise_alignment_diagnostics`), on
        the (projected) features this module aligns; without gradient.

        Args:
            features: as when calling the module.
            validate: overrides the module's ``validate`` for this call (e.g. ``False`` for
                features that the loss of the same step has just checked). Default ``None``:
                the module's.

        Returns:
            term -> :class:`~deepalign.functional.AlignmentDiagnostics` (unweighted).
        """
        with torch.no_grad():
            inputs = self._inputs(features)
        diagnostics = F.pairwise_alignment_diagnostics(
            inputs, self._pairs(), method=self.method, paired=self.paired,
            sync_dist=self.sync_dist, validate=self.validate if validate is None else validate,
        )  # fmt: skip
        return {str(term): d for term, d in zip(self.terms, diagnostics, strict=True)}

    def _pairs(self) -> list[tuple[str, str]]:
        return [(term.first, term.second) for term in self.terms]

    def _inputs(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The aligned modalities' features, checked and projected to the common width."""
        if not isinstance(features, Mapping):
            raise TypeError(f"features: expected a mapping name -> tensor, got {type(features)}")
        missing = [name for name in self.dims if name not in features]
        if missing:
            raise ValueError(
                f"features: expected the keys {list(self.dims)} (spec {self.spec!r}), "
                f"missing {missing}; got {sorted(features)}"
            )
        inputs = {name: check_tensor(features[name], name) for name in self.dims}
        check_same_device(**inputs)
        if self.projections is None:
            for name, x in inputs.items():
                check_shape(x, name, ("N", self.dims[name]))
            return inputs
        return {n: _project(self.projections, n, x, self.dims[n]) for n, x in inputs.items()}

    def _private_penalty(self, theta: torch.Tensor) -> torch.Tensor:
        return -theta if self.private == "negated" else -theta / (1 + theta.abs())

    def extra_repr(self) -> str:
        options = [f"spec={self.spec!r}", f"dims={self.dims}", f"private={self.private!r}"]
        options += [f"weight={self.weight}", f"estimator={self.estimator!r}"]
        options += [f"method={self.method!r}", f"paired={self.paired}"]
        if self.proj_dim is not None:
            options += [f"proj_dim={self.proj_dim}", f"projection={self.projection!r}"]
            options += [f"seed={self.seed}"]
        options += [f"sync_dist={self.sync_dist}", f"validate={self.validate}"]
        return ", ".join(options)
