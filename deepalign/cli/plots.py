"""Plots of the table jobs (matplotlib, imported only when a plot is drawn; extra
``deepalign[plot]``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepalign.cli.runs import RunSummary
from deepalign.cli.tables import LOWER_IS_BETTER
from deepalign.stats import PairedDifference

__all__ = ["curves_figure", "paired_figure", "plot_curves", "plot_paired"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (extra deepalign[plot]): no plots", file=sys.stderr)
        return None
    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


_UNIMODAL_TERMS = ("train_text", "train_audio", "train_vision")
_ZERO_START_NOTE = (
    "Self-MM's unimodal terms (text, audio, vision) are exactly 0 in epochs 1 and 2: the "
    "generated labels start equal to the multimodal label and a sample's label moves only "
    "after its loss is taken (docs/ulgm.rst). The summed training loss therefore rises at "
    "epoch 3; that is not a divergence."
)


def plot_curves(summaries: Sequence[RunSummary], path: Path) -> bool:
    """Write :func:`curves_figure` to ``path``; ``False`` without matplotlib."""
    if _pyplot() is None:
        return False
    _save(curves_figure(summaries), path)
    return True


def _curve_keys(summaries: Sequence[RunSummary]) -> list[str]:
    keys = dict.fromkeys(k for s in summaries for h in s.curves for r in h for k in r)
    return [k for k in keys if k.startswith("train_")] + ["valid_loss"]


def curves_figure(summaries: Sequence[RunSummary]) -> Any:
    """Each training loss term and the validation loss on its own axis, one line per seed,
    with the note on Self-MM's unimodal terms."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    keys = _curve_keys(summaries)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.9), sharex=True, squeeze=False
    )
    for axis, key in zip(axes.flat, keys, strict=False):
        for index, summary in enumerate(summaries):
            for seed, history in zip(summary.seeds, summary.curves, strict=True):
                epochs = [r["epoch"] for r in history if key in r]
                values = [r[key] for r in history if key in r]
                label = summary.name if seed == summary.seeds[0] else None
                axis.plot(epochs, values, f"C{index}", marker=".", label=label)
        title = f"{key.removeprefix('train_')} (train)"
        if key == "valid_loss":
            title = "validation L1 (fusion)"
        elif key == "train_loss":
            title = "total training loss"
        axis.set_title(title, fontsize=10)
        if key in _UNIMODAL_TERMS:
            axis.text(0.98, 0.04, "0 in epochs 1–2 (note below)", transform=axis.transAxes,
                      ha="right", fontsize=8, color="0.3")  # fmt: skip
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    for index, axis in enumerate(axes.flat[: len(keys)]):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if index + ncols >= len(keys):  # nothing visible below it
            axis.set_xlabel("epoch")
            axis.tick_params(labelbottom=True)
    axes.flat[0].legend(fontsize=8)
    fig.text(0.01, 0.005, "\n".join(_wrap(_ZERO_START_NOTE, 150)), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.9 / (3.0 * nrows + 0.9), 1, 1))
    return fig


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


def plot_paired(
    summaries: Sequence[RunSummary],
    deltas: Mapping[str, Mapping[str, PairedDifference]],
    columns: Sequence[tuple[str, str, float]],
    reference: str,
    path: Path,
) -> bool:
    """Write :func:`paired_figure` to ``path``; ``False`` without matplotlib."""
    if _pyplot() is None:
        return False
    _save(paired_figure(summaries, deltas, columns, reference), path)
    return True


def paired_figure(
    summaries: Sequence[RunSummary],
    deltas: Mapping[str, Mapping[str, PairedDifference]],
    columns: Sequence[tuple[str, str, float]],
    reference: str,
) -> Any:
    """One axis per metric: each row's mean paired difference (marker) and its interval
    (error bar), filled where the interval excludes 0; a line at 0."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    names = [s.name for s in summaries if s.name in deltas]
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    height = 0.3 * len(names) + 1.3
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols + 1.8, height * nrows + 0.5), sharey=True,
        squeeze=False,
    )  # fmt: skip
    for axis, (title, key, scale) in zip(axes.flat, columns, strict=False):
        for y, name in enumerate(names):
            d = deltas[name][key]
            mean = scale * d.mean
            colour = f"C{_estimator_index(summaries, name)}"
            if not math.isnan(d.low):
                axis.errorbar(
                    mean, y, xerr=[[mean - scale * d.low], [scale * d.high - mean]], fmt="none",
                    ecolor=colour, capsize=2, lw=1,
                )  # fmt: skip
            axis.plot(mean, y, "o", color=colour, mfc=colour if d.excludes_zero else "white")
        axis.axvline(0.0, color="0.4", lw=0.8)
        axis.xaxis.set_major_locator(MaxNLocator(4))
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        axis.tick_params(labelsize=8)
        better = "lower" if key in LOWER_IS_BETTER else "higher"
        unit = " (points)" if scale != 1 else ""
        axis.set_title(f"Δ {title}{unit}\n({better} is better)", fontsize=9)
    for axis in axes.flat[len(columns) :]:
        axis.set_visible(False)
    for row in axes:
        row[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0][0].set_ylim(len(names) - 0.5, -0.5)
    fig.suptitle(
        f"Paired differences against {reference!r} (mean over seeds, 95 % Student-t interval; "
        "filled: the interval excludes 0)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _estimator_index(summaries: Sequence[RunSummary], name: str) -> int:
    estimators = list(dict.fromkeys(s.estimator for s in summaries if s.estimator))
    summary = next(s for s in summaries if s.name == name)
    return estimators.index(summary.estimator) if summary.estimator in estimators else 0
