"""Tables: the paper's rows, this run's rows, paired comparisons and the per-seed CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from deepalign.cli.runs import RunSummary
from deepalign.stats import PairedDifference, paired_differences

__all__ = [
    "PAPER_TABLES",
    "TABLE_II",
    "compare",
    "format_ablation",
    "format_seeds_csv",
    "format_table",
    "paper_rows",
    "table_columns",
]

LOWER_IS_BETTER = ("MAE", "loss")
"""The metrics for which a lower value is better; for the others, higher is better."""

PAPER_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "mosi": {
        "Ours (paper)": (0.704, 0.794, 83.65, 85.06, 82.51, 85.43),
        "Self_MM (paper)": (0.723, 0.797, 83.09, 84.79, 83.03, 84.78),
    },
    "mosei": {
        "Ours (paper)": (0.523, 0.766, 82.98, 85.01, 83.26, 84.89),
        "Self_MM (paper)": (0.534, 0.764, 82.32, 84.12, 82.81, 84.05),
    },
    "sims": {
        "Ours (paper)": (0.423, 0.6198, 81.25, 81.25),
        "Self_MM rerun (paper)": (0.4218, 0.6092, 79.89, 79.94),
        "Self_MM published (paper)": (0.419, 0.616, 80.74, 80.78),
    },
}
"""The paper's published figures, by dataset and row. The values are those of Table III for MOSI
and MOSEI (MAE, Corr, Acc-2 Has0 and Non0, F1 Has0 and Non0) and of Table I for SIMS (MAE, Corr,
Acc-2, F1)."""

TABLE_II: dict[str, tuple[float, float, float, float]] = {
    "V-A": (0.704, 0.794, 0.523, 0.766),
    "T-A": (0.716, 0.722, 0.529, 0.766),
    "T-V": (0.722, 0.793, 0.535, 0.759),
    "V+A": (0.716, 0.798, 0.531, 0.766),
    "T+A": (0.882, 0.744, 0.76, 0.329),
    "T+V": (0.881, 0.746, 0.748, 0.407),
    "T-V/T-A": (0.719, 0.765, 0.832, 0.765),
    "T+V/T+A": (0.908, 0.706, 0.811, 0.264),
    "T+V/T-A": (0.723, 0.793, 0.54, 0.76),
    "T-V/T+A": (0.715, 0.797, 0.539, 0.76),
    "T-A/V-A": (0.719, 0.792, 0.832, 0.765),
    "T-V/V+A": (0.711, 0.795, 0.535, 0.762),
    "T-A/V+A": (0.712, 0.795, 0.533, 0.766),
    "T-V/T-A/A-V": (0.72, 0.791, 0.54, 0.76),
    "T+A/T+V/A+V": (0.906, 0.708, 0.811, 0.245),
    "T-A/T-V/V+A": (0.721, 0.792, 0.535, 0.762),
}
"""The paper's Table II, spec -> (MOSI MAE, MOSI Corr, MOSEI MAE, MOSEI Corr)."""


def table_columns(dataset: str) -> list[tuple[str, str, float]]:
    """(column title, metric key, scale) of the paper's table for ``dataset``."""
    if dataset == "sims":
        return [
            ("MAE", "MAE", 1),
            ("Corr", "Corr", 1),
            ("Acc-2", "Mult_acc_2", 100),
            ("F1", "F1_score", 100),
        ]
    return [
        ("MAE", "MAE", 1),
        ("Corr", "Corr", 1),
        ("Acc-2 Has0", "Has0_acc_2", 100),
        ("Acc-2 Non0", "Non0_acc_2", 100),
        ("F1 Has0", "Has0_F1_score", 100),
        ("F1 Non0", "Non0_F1_score", 100),
    ]


def paper_rows(dataset: str) -> dict[str, list[str]]:
    """The paper's rows for ``dataset``, formatted as table cells."""
    return {name: [f"{v:g}" for v in values] for name, values in PAPER_TABLES[dataset].items()}


# ---------------------------------------------------------------------- paired statistics


def compare(
    summaries: Sequence[RunSummary], reference: str, *, confidence: float = 0.95
) -> dict[str, dict[str, PairedDifference]]:
    """Paired differences of every row against the ``reference`` row, seed by seed.

    Each row is paired with the reference on the seeds both ran (in the reference's order);
    every test metric gets a :class:`~deepalign.stats.PairedDifference` (row minus reference;
    MAE and ``loss``: lower is better).

    Args:
        summaries: the rows, the reference among them.
        reference: the name of the reference row (e.g. no alignment).
        confidence: the intervals' confidence level.

    Returns:
        Row name -> metric -> paired difference, for every row but the reference.

    Raises:
        ValueError: if no row is named ``reference`` or a row shares no seed with it.

    Example:
        >>> ref = RunSummary("none", None, [1, 2, 3], test={"MAE": [0.8, 0.7, 0.9]})
        >>> row = RunSummary("V-A", "V-A", [1, 2, 3], test={"MAE": [0.7, 0.7, 0.8]})
        >>> d = compare([ref, row], "none")["V-A"]["MAE"]
        >>> print(f"{d.mean:+.3f}, better on {d.better} of {d.n} seeds")
        -0.067, better on 2 of 3 seeds
    """
    by_name = {s.name: s for s in summaries}
    if reference not in by_name:
        raise ValueError(f"reference: expected one of {list(by_name)}, got {reference!r}")
    base = by_name[reference]
    out = {}
    for summary in summaries:
        if summary is base:
            continue
        common = [seed for seed in base.seeds if seed in summary.seeds]
        if not common:
            raise ValueError(
                f"row {summary.name!r}: no seed in common with {reference!r} "
                f"({summary.seeds} and {base.seeds})"
            )
        row = {k: [v[summary.seeds.index(s)] for s in common] for k, v in summary.test.items()}
        ref = {k: [v[base.seeds.index(s)] for s in common] for k, v in base.test.items()}
        out[summary.name] = paired_differences(
            row, ref, lower_is_better=LOWER_IS_BETTER, confidence=confidence
        )
    return out


def _delta_cell(d: PairedDifference, scale: float) -> str:
    """``"-0.012 [-0.030, +0.006] 4/10 *"``: mean, interval, better seeds, marker."""
    mean = f"{scale * d.mean:+.3g}"
    interval = f"[{scale * d.low:+.3g}, {scale * d.high:+.3g}]"
    interval = "[n/a]" if math.isnan(d.low) else interval
    return f"{mean} {interval} {d.better}/{d.n}{' *' if d.excludes_zero else ''}"


def _delta_legend(reference: str, confidence: float = 0.95) -> str:
    return (
        f"Δ: row minus `{reference}` on the same seeds, mean over seeds "
        f"[{100 * confidence:g} % interval, Student t over seeds] and the number of seeds on "
        "which the row is better (MAE: lower is better); * marks an interval that excludes 0. "
        "Accuracies and F1 in points."
    )


def format_table(
    dataset: str,
    summaries: Sequence[RunSummary],
    *,
    title: str,
    reference: str | None = None,
    note: str | None = None,
    paper: bool = True,
) -> str:
    """A Markdown table in the paper's column format: the paper's rows, then this run's.

    With ``reference``, a second table gives every other row's paired difference to it, in
    the same columns (:func:`compare`). ``note`` is a paragraph printed under the title.
    ``paper=False`` (synthetic data) leaves the paper's rows out of this run's table and shows
    them last, under a heading that says they are the paper's numbers on the real dataset.
    """
    columns = table_columns(dataset)
    header = ["Model", *(title for title, _, _ in columns)]
    lines = [f"### {title}", "", *([note, ""] if note else [])]
    lines += [_row(header), _row(["---"] * len(header))]
    papers = [_row([name, *cells]) for name, cells in paper_rows(dataset).items()]
    if paper:
        lines += papers
    for summary in summaries:
        cells = []
        for _, key, scale in columns:
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}" if scale == 1 else f"{mean:.2f} ± {std:.2f}")
        seeds = len(summary.seeds)
        lines.append(_row([f"{summary.name} ({seeds} seed{'' if seeds == 1 else 's'})", *cells]))
    if reference is not None and len(summaries) > 1:
        deltas = compare(summaries, reference)
        lines += ["", f"#### Paired differences against `{reference}`", ""]
        lines += [_delta_legend(reference), ""]
        lines += [_row(["Model", *(f"Δ {t}" for t, _, _ in columns)])]
        lines.append(_row(["---"] * (len(columns) + 1)))
        for name, row in deltas.items():
            lines.append(_row([name, *(_delta_cell(row[key], s) for _, key, s in columns)]))
    if not paper:
        lines += ["", f"#### {PAPER_HEADING.format(dataset=dataset.upper())}", ""]
        lines += [_row(header), _row(["---"] * len(header)), *papers]
    return "\n".join(lines) + "\n"


PAPER_HEADING = (
    "The paper's numbers, on the real {dataset} data (not comparable with the synthetic rows above)"
)
"""The heading of the paper's rows under a table of synthetic runs."""


def ablation_columns(dataset: str) -> list[tuple[str, str, float]]:
    """MAE, Corr, Acc-2 and F1 (Has0 for MOSI and MOSEI)."""
    keep = {"MAE", "Corr", "Has0_acc_2", "Has0_F1_score", "Mult_acc_2", "F1_score"}
    return [column for column in table_columns(dataset) if column[1] in keep]


def format_ablation(
    dataset: str,
    summaries: Sequence[RunSummary],
    *,
    title: str,
    reference: str | None = None,
    note: str | None = None,
    paper: bool = True,
) -> str:
    """A Markdown table of Table II: each spec's paper figures beside this run's.

    Columns: the spec and its estimator; the paper's MAE and Corr for the spec (MOSI or
    MOSEI column of Table II) and their difference to the paper's Self-MM (Table III); this
    run's mean ± std; with ``reference``, the paired difference of each metric to it
    (:func:`compare`). ``note`` is a paragraph printed under the title. ``paper=False``
    (synthetic data) leaves the paper's columns out.
    """
    offset = {"mosi": 0, "mosei": 2}.get(dataset) if paper else None
    self_mm = PAPER_TABLES[dataset].get("Self_MM (paper)")
    columns = ablation_columns(dataset)
    header = ["Row", "estimator"]
    if offset is not None:
        header += ["paper MAE", "paper Corr", "paper Δ MAE", "paper Δ Corr"]
    header += [t for t, _, _ in columns]
    deltas = compare(summaries, reference) if reference is not None else {}
    if deltas:
        header += [f"Δ {t}" for t, _, _ in columns]
    lines = [f"### {title}", "", *([note, ""] if note else [])]
    if offset is not None:
        lines += [
            f"paper: Lai et al., Table II ({dataset.upper()} column; BERT-base on the standard "
            "split with other features, so only the direction and size of differences compare); "
            "paper Δ: the spec minus the paper's Self-MM (Table III).",
            "",
        ]
    if deltas:
        lines += [_delta_legend(reference), ""]
    lines += [_row(header), _row(["---"] * len(header))]
    for summary in summaries:
        figures: tuple[float, ...] = ()
        if offset is not None and summary.alignment in TABLE_II:
            figures = TABLE_II[summary.alignment][offset : offset + 2]
        elif offset is not None and summary.alignment is None and self_mm is not None:
            figures = self_mm[:2]
        cells = [summary.estimator or "–"]
        if offset is not None:
            cells += [f"{v:g}" for v in figures] or ["–", "–"]
            if figures and self_mm is not None and summary.alignment is not None:
                cells += [f"{figures[0] - self_mm[0]:+.3f}", f"{figures[1] - self_mm[1]:+.3f}"]
            else:
                cells += ["–", "–"]
        for _, key, scale in columns:
            mean, std = summary.mean_std(key, scale)
            cells.append(f"{mean:.4g} ± {std:.2g}" if scale == 1 else f"{mean:.2f} ± {std:.2f}")
        if deltas:
            row = deltas.get(summary.name)
            cells += [_delta_cell(row[k], s) if row else "(reference)" for _, k, s in columns]
        lines.append(_row([summary.name, *cells]))
    return "\n".join(lines) + "\n"


def format_seeds_csv(summaries: Sequence[RunSummary]) -> str:
    """CSV of every seed's metrics for every row: ``row, alignment, estimator, seed,
    best_epoch, epochs``, then ``test_<metric>`` and ``valid_<metric>`` columns."""
    test_keys = list(dict.fromkeys(k for s in summaries for k in s.test))
    valid_keys = list(dict.fromkeys(k for s in summaries for k in s.valid))
    header = ["row", "alignment", "estimator", "seed", "best_epoch", "epochs"]
    header += [f"test_{k}" for k in test_keys] + [f"valid_{k}" for k in valid_keys]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for s in summaries:
        for i, seed in enumerate(s.seeds):
            cells: list[Any] = [s.name, s.alignment or "none", s.estimator or "", seed]
            cells += [s.best_epochs[i] if s.best_epochs else "", s.epochs[i] if s.epochs else ""]
            cells += [repr(s.test[k][i]) if k in s.test else "" for k in test_keys]
            cells += [repr(s.valid[k][i]) if k in s.valid else "" for k in valid_keys]
            writer.writerow(cells)
    return buffer.getvalue()


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
