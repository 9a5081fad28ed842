"""``deepalign office-caltech``: closed-form CORAL on Office-Caltech10 SURF, authors' protocol.

A re-implementation in Python/scikit-learn of ``Ex_CORAL.m`` from the CORAL authors' release
(``code/CORAL_Source_Code.zip`` of github.com/VisionLearningGroup/CORAL):

- pre-processing per domain: each histogram divided by its sum (L1), then each feature z-scored
  with the domain's mean and population standard deviation (MATLAB ``zscore(fts, 1)``);
- CORAL's map ``A = (C_s + I)^{-1/2} (C_t + I)^{1/2}`` (covariances with ``n - 1``, as MATLAB's
  ``cov``), here from :func:`deepalign.functional.coral_transform` (``method="coral"``, or the
  optimal-transport map with ``method="ot"``), ``reg=1``;
- the authors' CORAL classifier: libsvm ``-t 4`` (precomputed kernel) with the training kernel
  ``X_s A X_sᵀ`` and the test kernel ``X_t Aᵀ X_sᵀ``, C from ``1e-3 … 1e4``;
- the authors' no-adaptation baseline: libsvm with its default kernel (RBF, gamma = 1 / number of
  features) on the raw source, C from ``1e-3 … 100``;
- the textbook classifier: a linear SVM (libsvm's, ``SVC(kernel="linear")``) on the mapped source
  ``X_s A`` (or the raw source for no adaptation), scored on the raw target, C from ``1e-3 … 1e4``;
- every C is chosen by 2-fold stratified cross-validation on the labelled source (libsvm ``-v 2``),
  the smallest C of the best CV accuracy winning ties (MATLAB ``max``); no target label is used
  by any fit, target labels only score the predictions;
- two protocols: all source images ("full"), and ``--rounds`` rounds of ``--per-class`` random
  source images per class (all of a class when it has fewer, as ``split`` in ``Ex_CORAL.m``),
  the target covariance always from all target images; the mean over rounds ("subsampled").

Run ``python -m deepalign.cli.office_caltech --help`` (until the ``deepalign`` command exists).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DOMAINS = {"amazon": "A", "webcam": "W", "dslr": "D", "caltech10": "C"}
SHIFTS = tuple((s, t) for s in DOMAINS for t in DOMAINS if s != t)
#: C grid of the authors' CORAL classifier (``SVM_Accuracy`` in ``Ex_CORAL.m``).
CORAL_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
#: C grid of the authors' no-adaptation baseline (``trainSVM_Model`` in ``Ex_CORAL.m``).
NA_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: CORAL's regularisation of both covariances (``cov(X) + eye(d)`` in ``Ex_CORAL.m``).
REG = 1.0
#: method -> (map, classifier); "authors" = the authors' kernel for the map (RBF when no map).
METHODS = {
    "none": (None, "authors"),
    "coral": ("coral", "authors"),
    "ot": ("ot", "authors"),
    "none_linear": (None, "linear"),
    "coral_linear": ("coral", "linear"),
    "ot_linear": ("ot", "linear"),
}
RELEASE = "github.com/VisionLearningGroup/CORAL, file code/CORAL_Source_Code.zip"
#: The published CORAL and NA rows are filled in :data:`PUBLISHED` (see its docstring).
PUBLISHED: dict = {}


def shift_name(source: str, target: str) -> str:
    """``"A→W"`` for ``("amazon", "webcam")``."""
    return f"{DOMAINS[source]}→{DOMAINS[target]}"


def default_data_path() -> Path:
    """``$DEEPALIGN_DATA/office_caltech10/office_caltech10_surf.npz`` (``./data`` if unset)."""
    root = Path(os.environ.get("DEEPALIGN_DATA", "data"))
    return root / "office_caltech10" / "office_caltech10_surf.npz"


def missing_data_message(path: Path) -> str:
    return (
        f"Office-Caltech10 file not found: {path}. Build it with "
        "`deepalign prepare office-caltech10 --from CORAL_Source_Code.zip --out DIR` "
        f"(the zip is in the CORAL authors' release: {RELEASE}), then pass --data "
        "DIR/office_caltech10_surf.npz or set DEEPALIGN_DATA=DIR's parent."
    )


def preprocess(counts: np.ndarray) -> np.ndarray:
    """L1-normalise each row, then z-score each column with population std (``zscore(x, 1)``).

    Raises:
        ValueError: if a row sums to 0 or a column is constant (MATLAB would produce NaN).
    """
    x = np.asarray(counts, dtype=np.float64)
    sums = x.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(
            f"counts: every row must have a positive sum; {int((sums <= 0).sum())} do not"
        )
    x = x / sums
    std = x.std(axis=0)
    if (std == 0).any():
        raise ValueError(f"counts: {int((std == 0).sum())} constant feature(s); z-score undefined")
    return (x - x.mean(axis=0)) / std


def load_domains(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Domain -> (pre-processed features, labels) from ``office_caltech10_surf.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_data_message(path))
    with np.load(path, allow_pickle=False) as z:
        return {d: (preprocess(z[f"{d}_X"]), z[f"{d}_y"].astype(np.int64)) for d in DOMAINS}


def subsample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random items of every class (all of a smaller class), class by
    class in increasing order, as ``split`` in ``Ex_CORAL.m``."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(idx[rng.permutation(len(idx))[: min(per_class, len(idx))]])
    return np.concatenate(out)


def coral_map(
    x_s: np.ndarray, x_t: np.ndarray, method: str = "coral", reg: float = REG
) -> np.ndarray:
    """CORAL's (or the OT) map from :func:`deepalign.functional.coral_transform`, float64."""
    import torch

    from deepalign import functional as F

    c_s = F.covariance(torch.from_numpy(np.ascontiguousarray(x_s, dtype=np.float64)))
    c_t = F.covariance(torch.from_numpy(np.ascontiguousarray(x_t, dtype=np.float64)))
    return F.coral_transform(c_s, c_t, method=method, reg=reg).numpy()


def _svc(kernel: str, c: float, gamma: float | str = "scale"):
    from sklearn.svm import SVC

    # libsvm's defaults as the authors call it: tol 1e-3, no shrinking change, no class weights
    return SVC(kernel=kernel, C=c, gamma=gamma, cache_size=500)


def cv_select_c(
    fit_score: Callable[[np.ndarray, np.ndarray, float], float],
    labels: np.ndarray,
    grid: Sequence[float],
    *,
    seed: int,
) -> tuple[float, list[float]]:
    """Choose C by 2-fold stratified CV on the labelled source (libsvm ``-v 2``).

    ``fit_score(train_idx, test_idx, c)`` fits on the source items ``train_idx`` and returns the
    accuracy on the source items ``test_idx``; only source indices and source labels are used.
    Returns the smallest C of the highest CV accuracy (MATLAB ``max`` keeps the first) and the
    CV accuracy of every C. The same folds serve every C.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    # a class with one item cannot be split in two; libsvm then puts it in one fold, as we do
    folds = list(StratifiedKFold(2, shuffle=True, random_state=seed).split(labels, labels))
    scores = []
    for c in grid:
        correct = 0
        for train, test in folds:
            correct += fit_score(train, test, c) * len(test)
        scores.append(correct / len(labels))
    best = int(np.argmax(scores))
    return float(grid[best]), scores


def authors_kernels(
    x_s: np.ndarray, x_t: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' CORAL kernels: ``(X_s A X_sᵀ, X_t Aᵀ X_sᵀ)``, train ``(n_s, n_s)`` and test
    ``(n_t, n_s)``; entry ``(j, i)`` of the test kernel is ``(x_s,i A) · x_t,j``."""
    xa = x_s @ a
    return xa @ x_s.T, x_t @ xa.T


def predict_authors_coral(
    x_s: np.ndarray, y_s: np.ndarray, x_t: np.ndarray, a: np.ndarray, *, seed: int
) -> tuple[np.ndarray, float]:
    """The authors' CORAL classifier: precomputed kernel ``K(u, v) = u A vᵀ`` with ``u`` a source
    item; train ``X_s A X_sᵀ``, test ``X_t Aᵀ X_sᵀ``. Returns target predictions and the C."""
    k_train, k_test = authors_kernels(x_s, x_t, a)

    def fit_score(tr, te, c):
        model = _svc("precomputed", c).fit(k_train[np.ix_(tr, tr)], y_s[tr])
        return float((model.predict(k_train[np.ix_(te, tr)]) == y_s[te]).mean())

    c, _ = cv_select_c(fit_score, y_s, CORAL_C_GRID, seed=seed)
    model = _svc("precomputed", c).fit(k_train, y_s)
    return model.predict(k_test), c


def predict_authors_none(
    x_s: np.ndarray, y_s: np.ndarray, x_t: np.ndarray, *, seed: int
) -> tuple[np.ndarray, float]:
    """The authors' baseline: libsvm's default RBF kernel, gamma = 1 / number of features."""
    gamma = 1.0 / x_s.shape[1]

    def fit_score(tr, te, c):
        model = _svc("rbf", c, gamma).fit(x_s[tr], y_s[tr])
        return float((model.predict(x_s[te]) == y_s[te]).mean())

    c, _ = cv_select_c(fit_score, y_s, NA_C_GRID, seed=seed)
    return _svc("rbf", c, gamma).fit(x_s, y_s).predict(x_t), c


def predict_linear(
    x_s: np.ndarray, y_s: np.ndarray, x_t: np.ndarray, a: np.ndarray | None, *, seed: int
) -> tuple[np.ndarray, float]:
    """The textbook classifier: ``SVC(kernel="linear")`` on ``X_s A`` (or ``X_s``), scored on the
    raw target; C by 2-fold CV on the mapped source from :data:`CORAL_C_GRID`."""
    xa = x_s if a is None else x_s @ a

    def fit_score(tr, te, c):
        model = _svc("linear", c).fit(xa[tr], y_s[tr])
        return float((model.predict(xa[te]) == y_s[te]).mean())

    c, _ = cv_select_c(fit_score, y_s, CORAL_C_GRID, seed=seed)
    return _svc("linear", c).fit(xa, y_s).predict(x_t), c


def predict(
    method: str,
    x_s: np.ndarray,
    y_s: np.ndarray,
    x_t: np.ndarray,
    *,
    seed: int,
    maps: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """Target predictions of one method of :data:`METHODS` and the C its source CV chose.

    The target enters through its features only (the map's covariance and the predictions).
    ``maps`` caches the maps of this source sample and target by kind (filled on first use).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    kind, classifier = METHODS[method]
    a = None
    if kind is not None:
        maps = {} if maps is None else maps
        if kind not in maps:
            maps[kind] = coral_map(x_s, x_t, kind)
        a = maps[kind]
    if classifier == "linear":
        return predict_linear(x_s, y_s, x_t, a, seed=seed)
    if a is None:
        return predict_authors_none(x_s, y_s, x_t, seed=seed)
    return predict_authors_coral(x_s, y_s, x_t, a, seed=seed)


def run_protocols(
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    shifts: Sequence[tuple[str, str]] = SHIFTS,
    methods: Sequence[str] = tuple(METHODS),
    rounds: int = 20,
    per_class: int = 20,
    seed: int = 0,
    full: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Target accuracies (percent) of every method on every shift, both protocols.

    Returns ``{"full": {method: {shift: acc}}, "subsampled": {...}, "rounds": {method: {shift:
    [acc per round]}}, "chosen_c": ...}``. Round ``r`` of shift ``i`` draws its source sample
    with ``numpy.random.default_rng([seed, i, r])``; every method sees the same sample and the
    same CV folds.
    """
    out: dict = {"full": {m: {} for m in methods}, "subsampled": {m: {} for m in methods}}
    out["rounds"] = {m: {} for m in methods}
    out["chosen_c"] = {"full": {m: {} for m in methods}, "subsampled": {m: {} for m in methods}}
    for i, (source, target) in enumerate(shifts):
        name = shift_name(source, target)
        (x_s, y_s), (x_t, y_t) = data[source], data[target]
        if full:
            maps: dict[str, np.ndarray] = {}
            for m in methods:
                pred, c = predict(m, x_s, y_s, x_t, seed=seed, maps=maps)
                out["full"][m][name] = 100.0 * float((pred == y_t).mean())
                out["chosen_c"]["full"][m][name] = c
        accs: dict[str, list[float]] = {m: [] for m in methods}
        cs: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(rounds):
            idx = subsample(y_s, per_class, np.random.default_rng([seed, i, r]))
            maps = {}
            for m in methods:
                pred, c = predict(m, x_s[idx], y_s[idx], x_t, seed=seed + r, maps=maps)
                accs[m].append(100.0 * float((pred == y_t).mean()))
                cs[m].append(c)
        for m in methods:
            if rounds:
                out["subsampled"][m][name] = float(np.mean(accs[m]))
                out["rounds"][m][name] = accs[m]
                out["chosen_c"]["subsampled"][m][name] = cs[m]
            log(
                f"{name} {m:13s} full {out['full'][m].get(name, float('nan')):5.1f}"
                f"  subsampled {out['subsampled'][m].get(name, float('nan')):5.1f}"
            )
    return out


def paired_summary(table: dict[str, dict[str, float]], row: str, reference: str) -> dict:
    """Paired difference ``row − reference`` over the shifts both have, with its 95 % t interval."""
    from deepalign.stats import paired_difference

    shifts = [s for s in table[row] if s in table[reference]]
    d = paired_difference([table[row][s] for s in shifts], [table[reference][s] for s in shifts])
    return {
        "row": row,
        "reference": reference,
        "n": d.n,
        "mean": d.mean,
        "low": d.low,
        "high": d.high,
        "better": d.better,
        "worse": d.worse,
    }


TITLES = {
    "none": "NA (authors: RBF SVM)",
    "coral": "CORAL (authors' kernel)",
    "ot": "OT map (authors' kernel)",
    "none_linear": "NA (linear SVM)",
    "coral_linear": "CORAL (linear SVM)",
    "ot_linear": "OT map (linear SVM)",
}


def rst_table(table: dict[str, dict[str, float]], *, extra: dict[str, dict] | None = None) -> str:
    """An RST ``list-table`` of ``{method: {shift: accuracy}}`` (shifts as rows, the mean last);
    ``extra`` adds columns ``{title: {shift: value}}`` (e.g. a published row)."""
    columns = {TITLES.get(m, m): row for m, row in table.items()}
    columns.update(extra or {})
    shifts = list(next(iter(table.values())))
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - shift"]
    lines += [f"     - {title}" for title in columns]
    for s in shifts:
        lines.append(f"   * - {s}")
        lines += [f"     - {row[s]:.1f}" if s in row else "     - —" for row in columns.values()]
    lines.append(f"   * - **mean of {len(shifts)}**")
    for row in columns.values():
        values = [row[s] for s in shifts if s in row]
        ok = len(values) == len(shifts)
        lines.append(f"     - **{np.mean(values):.1f}**" if ok else "     - —")
    return "\n".join(lines) + "\n"


def register(subparsers) -> None:
    """Add the ``office-caltech`` sub-command to an :mod:`argparse` sub-parser set."""
    parser = subparsers.add_parser(
        "office-caltech",
        help="closed-form CORAL on Office-Caltech10 SURF by the CORAL authors' protocol",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, default=default_data_path(), help="office_caltech10_surf.npz"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/office_caltech"), help="output folder"
    )
    parser.add_argument("--rounds", type=int, default=20, help="subsampling rounds (0: none)")
    parser.add_argument(
        "--per-class", type=int, default=20, help="source images per class per round"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and the CV folds")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods to run"
    )
    parser.add_argument(
        "--shifts",
        nargs="+",
        default=[shift_name(s, t) for s, t in SHIFTS],
        help="shifts, written A→W or A-W",
    )
    parser.add_argument(
        "--no-full", action="store_true", default=False, help="skip all-source protocol"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: shifts A→W and D→W, at most 2 rounds (numbers not comparable)",
    )
    parser.set_defaults(handler=run)


def _parse_shift(text: str) -> tuple[str, str]:
    letters = {v: k for k, v in DOMAINS.items()}
    parts = text.replace("→", "-").replace(">", "").split("-")
    if len(parts) != 2 or not all(p.upper() in letters for p in parts) or parts[0] == parts[1]:
        raise ValueError(f"--shifts: expected e.g. A→W or A-W over {sorted(letters)}, got {text!r}")
    return letters[parts[0].upper()], letters[parts[1].upper()]


def run(args: argparse.Namespace) -> int:
    """Run both protocols, write ``results.json`` to ``--out`` and print the table."""
    try:
        data = load_domains(args.data)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.quick:
        args.shifts, args.rounds = ["A→W", "D→W"], min(args.rounds, 2)
    shifts = tuple(_parse_shift(s) for s in args.shifts)
    start = time.perf_counter()
    result = run_protocols(
        data,
        shifts=shifts,
        methods=args.methods,
        rounds=args.rounds,
        per_class=args.per_class,
        seed=args.seed,
        full=not args.no_full,
    )
    wall = time.perf_counter() - start
    import sklearn
    import torch

    import deepalign

    result["meta"] = {
        "command": "deepalign office-caltech " + " ".join(_portable(sys.argv[1:], args.data)),
        "wall_time_s": round(wall, 1),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": {
            "deepalign": deepalign.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "protocol": __doc__.split("\n\n", 1)[1].strip(),
        "c_grids": {
            "authors_coral": CORAL_C_GRID,
            "authors_none": NA_C_GRID,
            "linear": CORAL_C_GRID,
        },
        "reg": REG,
        "seed": args.seed,
        "rounds": args.rounds,
        "per_class": args.per_class,
        "methods": {m: {"map": k, "classifier": c} for m, (k, c) in METHODS.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


def _portable(argv: Sequence[str], data: Path) -> list[str]:
    """The command line with the data file written by its name only (no machine path)."""
    return [Path(data).name if a == str(data) else a for a in argv]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepalign")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["office-caltech", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
