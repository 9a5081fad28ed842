r"""Paired comparisons over seeds: is a configuration better than the reference, or is it noise?

Two configurations trained on the same seeds (same initialisation, same batch order) give
paired results: :math:`r_s` for the row and :math:`b_s` for the reference on seed :math:`s`.
:func:`paired_difference` summarises the differences :math:`d_s = r_s - b_s` over the
:math:`n` seeds by their mean, a Student-t confidence interval and the number of seeds on which
the row is better, respecting the direction of the metric (a lower MAE is better):

.. math::

    \bar d = \frac1n \sum_s d_s, \qquad
    s_d^2 = \frac{1}{n-1} \sum_s (d_s - \bar d)^2, \qquad
    \bar d \pm t_{1-\alpha/2,\, n-1} \frac{s_d}{\sqrt n}.

The interval excludes 0 exactly when the paired t-test (``scipy.stats.ttest_rel``) rejects
"no difference" at level :math:`\alpha`; with a handful of seeds it is wide, and that is the
information. :func:`student_t_ppf` is the quantile of Student's t, computed here so that the
library needs no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "paired_difference", "paired_differences", "student_t_ppf"]

_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference of one metric between a row and the reference, over seeds.

    Attributes:
        n: number of paired seeds.
        mean: mean over seeds of row minus reference (in the metric's own direction: a
            negative MAE difference is an improvement).
        std: sample standard deviation of the differences (``n - 1`` degrees of freedom);
            NaN for one seed.
        low: lower end of the confidence interval of the mean difference; NaN for one seed.
        high: upper end; NaN for one seed.
        better: number of seeds on which the row is strictly better than the reference.
        worse: number of seeds on which it is strictly worse (ties count in neither).
        higher_is_better: the direction of the metric.
        confidence: the interval's confidence level, e.g. 0.95.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    better: int
    worse: int
    higher_is_better: bool
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0 (``False`` when it is NaN)."""
        return bool(self.low > 0 or self.high < 0)

    @property
    def improves(self) -> bool:
        """Whether the interval excludes 0 on the side where the row is better."""
        if not self.excludes_zero:
            return False
        return (self.low > 0) == self.higher_is_better


def paired_difference(
    row: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = True,
    confidence: float = 0.95,
) -> PairedDifference:
    """Mean, Student-t interval and better-seed count of ``row - reference``, paired by position.

    Element ``s`` of both inputs must come from the same seed. With one seed the mean is that
    seed's difference and the spread and the interval are NaN (there is no estimate of the
    noise). When every difference is equal the interval has width 0: it excludes 0 unless the
    differences are 0. A NaN on either side of a pair (an undefined metric) makes the mean and
    the interval NaN; the counts use the pairs that compare.

    Shape:
        ``row`` and ``reference``: ``(n,)`` with ``n >= 1``.

    Args:
        row: the metric of the configuration on each seed.
        reference: the metric of the reference configuration on the same seeds.
        higher_is_better: the direction of the metric (``False`` for MAE).
        confidence: confidence level of the interval, in (0, 1). Default 0.95.

    Returns:
        A :class:`PairedDifference`.

    Raises:
        ValueError: if the inputs are not 1-D of one non-zero length, or ``confidence`` is not
            in (0, 1).
        TypeError: if ``higher_is_better`` is not a bool.

    Example:
        >>> d = paired_difference([0.70, 0.72, 0.69], [0.73, 0.74, 0.70], higher_is_better=False)
        >>> print(f"{d.mean:.4f} [{d.low:.4f}, {d.high:.4f}], better on {d.better} of {d.n}")
        -0.0200 [-0.0448, 0.0048], better on 3 of 3
    """
    r = np.asarray(row, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if r.ndim != 1 or r.shape != b.shape or r.size == 0:
        raise ValueError(
            "row and reference: expected two 1-D sequences of one non-zero length (one value "
            f"per seed), got shapes {r.shape} and {b.shape}"
        )
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better: expected a bool, got {higher_is_better!r}")
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    d = r - b
    n = d.size
    mean = float(d.mean())
    if n == 1:
        std = low = high = math.nan
    else:
        std = float(d.std(ddof=1))
        half = student_t_ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    sign = 1.0 if higher_is_better else -1.0
    return PairedDifference(
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        better=int(np.sum(sign * d > 0)),
        worse=int(np.sum(sign * d < 0)),
        higher_is_better=higher_is_better,
        confidence=float(confidence),
    )


def paired_differences(
    row: Mapping[str, Sequence[float]],
    reference: Mapping[str, Sequence[float]],
    *,
    lower_is_better: Collection[str] = ("MAE",),
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """:func:`paired_difference` of every metric that both rows have.

    Args:
        row: metric -> one value per seed, e.g. :attr:`deepalign.cli.runs.RunSummary.test`.
        reference: the same for the reference row, on the same seeds in the same order.
        lower_is_better: the metrics for which lower is better. Default ``("MAE",)``, the one
            such metric of :func:`deepalign.metrics.msa_metrics`.
        confidence: as in :func:`paired_difference`.

    Returns:
        Metric -> :class:`PairedDifference`, in the order of ``row``.

    Raises:
        ValueError: as :func:`paired_difference`, naming the metric.

    Example:
        >>> row = {"MAE": [0.70, 0.72], "Corr": [0.80, 0.79]}
        >>> ref = {"MAE": [0.71, 0.74], "Corr": [0.78, 0.79]}
        >>> {k: (round(d.mean, 3), d.better) for k, d in paired_differences(row, ref).items()}
        {'MAE': (-0.015, 2), 'Corr': (0.01, 1)}
    """
    out = {}
    for key, values in row.items():
        if key not in reference:
            continue
        try:
            out[key] = paired_difference(
                values,
                reference[key],
                higher_is_better=key not in lower_is_better,
                confidence=confidence,
            )
        except ValueError as error:
            raise ValueError(f"metric {key!r}: {error}") from None
    return out


def student_t_ppf(q: float, dof: float) -> float:
    """The ``q``-quantile of Student's t distribution with ``dof`` degrees of freedom.

    For :math:`t \\ge 0`, :math:`P(0 < T < t) = \\tfrac12 I_{t^2/(\\nu + t^2)}(1/2, \\nu/2)` and
    :math:`P(T > t) = \\tfrac12 I_{\\nu/(\\nu + t^2)}(\\nu/2, 1/2)`, with :math:`I` the
    regularised incomplete beta function (evaluated by its continued fraction). The first is
    inverted near the centre, the second in the tails (targets :math:`|q - 1/2|` and
    :math:`\\min(q, 1 - q)`, both exact in float64), by bisection to the last bit.
    Agrees with ``scipy.stats.t.ppf`` to about ``1e-12`` relative.

    Args:
        q: probability in (0, 1).
        dof: degrees of freedom, a finite number > 0.

    Returns:
        The quantile :math:`t` with :math:`F(t) = q`.

    Raises:
        ValueError: if ``q`` is not in (0, 1) or ``dof`` is not finite and positive.

    Example:
        >>> print(f"{student_t_ppf(0.975, 4):.6f}")
        2.776445
    """
    if not (isinstance(q, float | int) and 0 < q < 1):
        raise ValueError(f"q: expected a probability in (0, 1), got {q!r}")
    if not (isinstance(dof, float | int) and math.isfinite(dof) and dof > 0):
        raise ValueError(f"dof: expected a finite number > 0, got {dof!r}")
    if q == 0.5:
        return 0.0
    sign = 1.0 if q > 0.5 else -1.0
    central = abs(q - 0.5)
    use_central = central < 0.25
    target = central if use_central else min(q, 1.0 - q)

    def below(t: float) -> bool:  # is |quantile| above t?
        x, y = t * t / (dof + t * t), dof / (dof + t * t)
        if use_central:
            return 0.5 * _betainc(0.5, dof / 2.0, x, y) < target
        return 0.5 * _betainc(dof / 2.0, 0.5, y, x) > target

    lo, hi = 0.0, 1.0
    while below(hi):
        lo, hi = hi, 2.0 * hi
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return sign * mid
        if below(mid):
            lo = mid
        else:
            hi = mid


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularised incomplete beta function :math:`I_x(a, b)`, given :math:`y = 1 - x` computed
    accurately by the caller; by its continued fraction on the side where it converges fast
    (:math:`x < (a + 1) / (a + b + 2)`), else by symmetry."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny = 1e-300

    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c = 1.0
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, _MAX_ITERATIONS):
        m2 = 2 * m
        even = m * (b - m) * x / ((a - 1.0 + m2) * (a + m2))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise RuntimeError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")
