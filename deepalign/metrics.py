"""The evaluation metrics of multimodal sentiment analysis, as defined by the MMSA toolkit.

One entry point, :func:`msa_metrics`, gives the dict of metrics reported for CMU-MOSI and
CMU-MOSEI (``dataset="mosi"`` or ``"mosei"``) or for CH-SIMS (``dataset="sims"``), with the
MMSA toolkit's keys and definitions ([Mao2022]_). Values are unrounded floats; an undefined
value (a constant input for the correlation, no non-zero truth for the ``Non0`` metrics) is
NaN with a :class:`DegenerateMetricWarning`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from deepalign._checks import check_choice

__all__ = [
    "DATASETS",
    "MOSI_KEYS",
    "SIMS_KEYS",
    "DegenerateMetricWarning",
    "msa_metrics",
    "weighted_f1",
]

DATASETS = ("mosi", "mosei", "sims")
MOSI_KEYS = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
SIMS_KEYS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
SIMS_BINS = {
    2: (-1.01, 0.0, 1.01),
    3: (-1.01, -0.1, 0.1, 1.01),
    5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}


class DegenerateMetricWarning(UserWarning):
    """A metric is undefined for the given input and was set to NaN."""


def msa_metrics(
    pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray, *, dataset: str = "mosi"
) -> dict[str, float]:
    """Regression and classification metrics of MSA predictions, as the MMSA toolkit defines them.

    For CMU-MOSI and CMU-MOSEI, with predictions :math:`p` and truths :math:`t` in [-3, 3]:

    .. math::

        \\text{MAE} = \\tfrac{1}{N}\\textstyle\\sum_n |p_n - t_n|, \\qquad
        \\text{Corr} = \\operatorname{Pearson}(p, t),

        \\text{Mult\\_acc\\_}k = \\tfrac{1}{N}\\textstyle\\sum_n
        [\\operatorname{round}(\\operatorname{clip}(p_n, -c, c))
        = \\operatorname{round}(\\operatorname{clip}(t_n, -c, c))],
        \\quad c = 3 \\ (k = 7),\\ c = 2 \\ (k = 5),

    with numpy's round-half-to-even. ``Has0_acc_2``/``Has0_F1_score`` are the accuracy and the
    support-weighted F1 of :math:`[p \\ge 0]` against :math:`[t \\ge 0]` over all samples;
    ``Non0_acc_2``/``Non0_F1_score`` those of :math:`[p > 0]` against :math:`[t > 0]` over the
    samples with :math:`t \\ne 0` (the "Acc-2 / F1" columns of papers, written has0/non0).

    For CH-SIMS, :math:`p` and :math:`t` are first clipped to [-1, 1]; MAE and Corr use the
    clipped values, and ``Mult_acc_k`` is the exact-match accuracy of the classes given by the
    half-open intervals :math:`(b_i, b_{i+1}]` of the bins :data:`SIMS_BINS`; ``F1_score`` is
    the weighted F1 of the 2 classes. As in MMSA, each input is binned in its own precision:
    the edges are rounded to the input's floating-point type (float64 for integers) before the
    comparison, so a float32 ``0.1`` is neutral (``float32(0.1) <= float32(0.1)``) and a
    float32 ``-0.7`` is in the lowest of 5 classes, exactly as MMSA scores float32 outputs.

    Shape:
        ``pred`` and ``true``: ``(N,)`` or ``(N, 1)``.

    Args:
        pred: predictions, a tensor or array of any real dtype.
        true: ground-truth regression labels, same shape.
        dataset: ``"mosi"``, ``"mosei"`` (the same metrics) or ``"sims"``. Default ``"mosi"``.

    Returns:
        A dict from metric name to value, with the keys :data:`MOSI_KEYS` (MOSI, MOSEI) or
        :data:`SIMS_KEYS`. Accuracies and F1 are fractions in [0, 1].

    Raises:
        ValueError: if ``dataset`` is unknown, the shapes are not ``(N,)``/``(N, 1)`` or
            differ, ``N == 0``, or an input holds NaN or Inf.
        TypeError: if an input is not a tensor or array of real numbers.

    Example:
        >>> m = msa_metrics(np.array([2.6, -0.4, 0.5, -2.5]), np.array([3.0, 0.0, 1.0, -1.5]))
        >>> {key: round(value, 3) for key, value in m.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'Has0_acc_2': 0.75, 'Has0_F1_score': 0.767, 'Non0_acc_2': 1.0, 'Non0_F1_score': 1.0,
         'Mult_acc_5': 0.75, 'Mult_acc_7': 0.75, 'MAE': 0.575, 'Corr': 0.996}
    """
    check_choice(dataset, "dataset", DATASETS)
    p = _as_vector(pred, "pred")
    t = _as_vector(true, "true")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and true: expected the same number of samples, got {p.size} and {t.size}"
        )
    if dataset == "sims":
        metrics = _sims_metrics(p, t, _edges_in_precision_of(pred), _edges_in_precision_of(true))
    else:
        metrics = _mosi_metrics(p, t)
    undefined = [key for key, value in metrics.items() if np.isnan(value)]
    if undefined:
        warnings.warn(
            f"{undefined} undefined, set to NaN: Corr needs non-constant predictions and truths, "
            "the Non0 metrics at least one non-zero truth",
            DegenerateMetricWarning,
            stacklevel=2,
        )
    return metrics


def weighted_f1(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """F1 score per class, averaged with the classes' true support as weights.

    The classes are those present in either input; a class absent from ``true_labels`` has
    weight 0. Equals scikit-learn's ``f1_score(true, pred, average="weighted")``.

    .. math::

        F_1 = \\sum_c \\frac{|\\{n : t_n = c\\}|}{N} \\cdot
        \\frac{2\\, TP_c}{2\\, TP_c + FP_c + FN_c}

    Shape:
        ``pred_labels`` and ``true_labels``: ``(N,)`` with ``N >= 1``.

    Args:
        pred_labels: predicted class labels.
        true_labels: true class labels.

    Returns:
        The weighted F1 in [0, 1].

    Raises:
        ValueError: if the inputs are not 1-D of the same non-zero length.

    Example:
        >>> print(round(weighted_f1(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])), 4))
        0.7667
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.ndim != 1 or pred_labels.shape != true_labels.shape or pred_labels.size == 0:
        raise ValueError(
            "pred_labels and true_labels: expected two 1-D arrays of one non-zero length, "
            f"got shapes {pred_labels.shape} and {true_labels.shape}"
        )
    score = 0.0
    for c in np.union1d(pred_labels, true_labels):
        is_pred, is_true = pred_labels == c, true_labels == c
        tp = np.sum(is_pred & is_true)
        f1 = 2.0 * tp / (2.0 * tp + np.sum(is_pred & ~is_true) + np.sum(~is_pred & is_true))
        score += f1 * np.sum(is_true) / true_labels.size
    return float(score)


def _as_vector(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if not (x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)) or x.size == 0:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1) with N >= 1, got {x.shape}")
    x = x.reshape(-1).astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(
            f"{name}: expected finite values, got {int((~np.isfinite(x)).sum())} NaN/Inf"
        )
    return x


def _mosi_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    non_zero = t != 0
    if non_zero.any():
        non0_acc = _accuracy(p[non_zero] > 0, t[non_zero] > 0)
        non0_f1 = weighted_f1(p[non_zero] > 0, t[non_zero] > 0)
    else:
        non0_acc = non0_f1 = float("nan")
    return {
        "Has0_acc_2": _accuracy(p >= 0, t >= 0),
        "Has0_F1_score": weighted_f1(p >= 0, t >= 0),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _accuracy(np.round(np.clip(p, -2, 2)), np.round(np.clip(t, -2, 2))),
        "Mult_acc_7": _accuracy(np.round(np.clip(p, -3, 3)), np.round(np.clip(t, -3, 3))),
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": _pearson(p, t),
    }


def _edges_in_precision_of(x: torch.Tensor | np.ndarray) -> dict[int, np.ndarray]:
    """:data:`SIMS_BINS` rounded to ``x``'s floating-point type (float64 for integers), as
    float64 arrays: comparing the float64 copy of ``x`` with them is exact, and equals MMSA's
    comparison of ``x`` in its own type with the Python-float edges."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return {k: torch.tensor(b, dtype=x.dtype).double().numpy() for k, b in SIMS_BINS.items()}
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    return {k: np.asarray(b, dtype=dtype).astype(np.float64) for k, b in SIMS_BINS.items()}


def _sims_metrics(
    p: np.ndarray, t: np.ndarray, p_edges: dict[int, np.ndarray], t_edges: dict[int, np.ndarray]
) -> dict[str, float]:
    p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)
    classes = {k: (_sims_classes(p, p_edges[k]), _sims_classes(t, t_edges[k])) for k in SIMS_BINS}
    return {
        "Mult_acc_2": _accuracy(*classes[2]),
        "Mult_acc_3": _accuracy(*classes[3]),
        "Mult_acc_5": _accuracy(*classes[5]),
        "F1_score": weighted_f1(*classes[2]),
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": _pearson(p, t),
    }


def _sims_classes(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Class ``i`` for ``edges[i] < x <= edges[i + 1]``."""
    return np.searchsorted(edges, x, side="left") - 1


def _accuracy(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    return float(np.mean(pred_labels == true_labels))


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant (compared exactly, not by variance,
    so rounding in the mean of identical values cannot produce a spurious correlation)."""
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return float("nan")
    p_centred, t_centred = p - p.mean(), t - t.mean()
    denominator = np.sqrt(np.sum(p_centred**2) * np.sum(t_centred**2))
    return float(np.clip(np.sum(p_centred * t_centred) / denominator, -1.0, 1.0))
