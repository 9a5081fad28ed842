"""Office-Caltech10 closed-form CORAL by its authors' protocol (deepalign.cli.office_caltech).

Fast tests use small synthetic inputs: the subsampling, the source-only choice of C, the kernels
of the authors' classifiers against plain re-implementations, the CLI contract and the schema
of the committed table. Slow tests need the real data (and skada for the peer comparison).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from deepalign.cli import office_caltech as oc

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPALIGN_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "office_caltech10" / "office_caltech10_surf.npz"
TABLE = ROOT / "docs" / "_static" / "results" / "office_caltech_linear.json"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"Office-Caltech10 absent: {DATA}")


@pytest.fixture
def small_grids(monkeypatch):
    """Short C grids: the authors' CORAL kernel is not positive semi-definite, and libsvm can
    take very long at C = 1e4 on tiny toy problems; the tests check kernels, not grids."""
    monkeypatch.setattr(oc, "CORAL_C_GRID", (0.01, 0.1, 1.0))
    monkeypatch.setattr(oc, "NA_C_GRID", (0.01, 0.1, 1.0))


def toy(seed=0, n_s=40, n_t=30, d=6, classes=3):
    """Two shifted Gaussian-class domains: (x_s, y_s, x_t, y_t)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(classes, d))  # separable: libsvm converges at C = 1e4
    y_s = np.arange(n_s) % classes
    y_t = np.arange(n_t) % classes
    x_s = means[y_s] + rng.normal(size=(n_s, d))
    mix = np.eye(d) + 0.05 * rng.normal(size=(d, d))  # mild: the authors kernel stays near PSD
    x_t = (means[y_t] + rng.normal(size=(n_t, d))) @ mix + 0.5
    return x_s, y_s, x_t, y_t


# ------------------------------------------------------------------------- pre-processing


def test_preprocess_is_l1_then_population_zscore():
    counts = np.array([[1, 3, 0], [2, 2, 4], [0, 5, 5], [1, 1, 1]], dtype=np.float32)
    x = oc.preprocess(counts)
    manual = counts.astype(np.float64)
    manual = manual / manual.sum(axis=1, keepdims=True)
    manual = (manual - manual.mean(0)) / manual.std(0, ddof=0)
    np.testing.assert_allclose(x, manual, rtol=1e-12)
    np.testing.assert_allclose(x.std(0), 1.0)


@pytest.mark.parametrize(
    ("counts", "match"),
    [(np.array([[0.0, 0.0], [1.0, 2.0]]), "positive sum"), (np.ones((3, 2)), "constant")],
)
def test_preprocess_rejects_undefined_zscore(counts, match):
    with pytest.raises(ValueError, match=match):
        oc.preprocess(counts)


# ---------------------------------------------------------------------------- subsampling


def test_subsample_draws_per_class_like_the_authors_split():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 21)
    idx = oc.subsample(labels, 20, np.random.default_rng(3))
    counts = np.bincount(labels[idx])
    assert counts.tolist() == [20, 5, 20]  # all of a class smaller than 20
    assert len(set(idx.tolist())) == len(idx)
    again = oc.subsample(labels, 20, np.random.default_rng(3))
    np.testing.assert_array_equal(idx, again)
    other = oc.subsample(labels, 20, np.random.default_rng(4))
    assert not np.array_equal(idx, other)


# -------------------------------------------------------------------- choice of C on source


def test_cv_select_c_picks_the_best_and_the_smallest_of_ties():
    grid = (0.1, 1.0, 10.0, 100.0)
    labels = np.arange(20) % 2
    c, scores = oc.cv_select_c(lambda tr, te, c: 1.0 if c >= 10 else 0.5, labels, grid, seed=0)
    assert c == 10.0
    assert scores == [0.5, 0.5, 1.0, 1.0]
    c, _ = oc.cv_select_c(lambda tr, te, c: 0.7, labels, grid, seed=0)
    assert c == 0.1


def test_cv_select_c_folds_are_two_stratified_halves_of_the_source():
    labels = np.repeat(np.arange(4), 6)
    seen = []

    def fit_score(train, test, c):
        seen.append((train, test))
        return 0.0

    oc.cv_select_c(fit_score, labels, (1.0,), seed=0)
    assert len(seen) == 2
    for train, test in seen:
        assert sorted(np.r_[train, test].tolist()) == list(range(len(labels)))
        assert np.bincount(labels[test]).tolist() == [3, 3, 3, 3]


def test_cv_select_c_matches_sklearn_grid_search():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    x_s, y_s, _, _ = toy(seed=1, n_s=60)
    grid = oc.CORAL_C_GRID

    def fit_score(tr, te, c):
        return float(
            (SVC(kernel="linear", C=c).fit(x_s[tr], y_s[tr]).predict(x_s[te]) == y_s[te]).mean()
        )

    ours, scores = oc.cv_select_c(fit_score, y_s, grid, seed=5)
    folds = StratifiedKFold(2, shuffle=True, random_state=5)
    search = GridSearchCV(SVC(kernel="linear"), {"C": list(grid)}, cv=folds).fit(x_s, y_s)
    np.testing.assert_allclose(scores, search.cv_results_["mean_test_score"], atol=1e-12)
    assert ours == search.best_params_["C"]


@pytest.mark.parametrize("method", list(oc.METHODS))
def test_target_labels_never_reach_the_fit(small_grids, method):
    """Permuting (or scrambling) the target labels changes no choice of C and no prediction;
    only the score moves."""
    x_s, y_s, x_t, y_t = toy(seed=2)
    data = {"amazon": (x_s, y_s), "webcam": (x_t, y_t)}
    kw = dict(
        shifts=[("amazon", "webcam")], methods=[method], rounds=2, per_class=8, log=lambda _: None
    )
    a = oc.run_protocols(data, **kw)
    rng = np.random.default_rng(0)
    data["webcam"] = (x_t, rng.permutation(y_t))
    b = oc.run_protocols(data, **kw)
    assert a["chosen_c"] == b["chosen_c"]
    pred_a, _ = oc.predict(method, x_s, y_s, x_t, seed=0)
    pred_b, _ = oc.predict(method, x_s, y_s, x_t, seed=0)
    np.testing.assert_array_equal(pred_a, pred_b)
    assert a["full"][method]["A→W"] == pytest.approx(100 * np.mean(pred_a == y_t))
    assert b["full"][method]["A→W"] == pytest.approx(100 * np.mean(pred_a == data["webcam"][1]))


def test_unknown_method_is_named():
    x_s, y_s, x_t, _ = toy()
    with pytest.raises(ValueError, match="method"):
        oc.predict("coral_rbf", x_s, y_s, x_t, seed=0)


# ------------------------------------------------------------------------------- kernels


def numpy_coral_map(x_s, x_t):
    """(C_s + I)^{-1/2} (C_t + I)^{1/2} with numpy's cov (n - 1) and eigh."""

    def power(c, p):
        values, vectors = np.linalg.eigh(c + np.eye(len(c)))
        return (vectors * values**p) @ vectors.T

    return power(np.cov(x_s, rowvar=False), -0.5) @ power(np.cov(x_t, rowvar=False), 0.5)


def test_coral_map_is_the_authors_map():
    x_s, _, x_t, _ = toy(seed=3, n_s=50, n_t=45, d=8)
    np.testing.assert_allclose(oc.coral_map(x_s, x_t), numpy_coral_map(x_s, x_t), atol=1e-10)


def test_authors_kernels_against_loops():
    x_s, _, x_t, _ = toy(seed=4, n_s=7, n_t=5, d=4)
    a = numpy_coral_map(x_s, x_t)
    k_train, k_test = oc.authors_kernels(x_s, x_t, a)
    for i in range(7):
        for j in range(7):
            want = sum(x_s[i, k] * a[k, m] * x_s[j, m] for k in range(4) for m in range(4))
            assert k_train[i, j] == pytest.approx(want, abs=1e-10)
        for j in range(5):
            # Ex_CORAL.m: Sim = Xr * A * Xtt', passed transposed to svmpredict
            want = sum(x_s[i, k] * a[k, m] * x_t[j, m] for k in range(4) for m in range(4))
            assert k_test[j, i] == pytest.approx(want, abs=1e-10)


def test_authors_coral_classifier_is_svc_on_those_kernels(small_grids):
    from sklearn.svm import SVC

    x_s, y_s, x_t, _ = toy(seed=5)
    a = numpy_coral_map(x_s, x_t)
    pred, c = oc.predict_authors_coral(x_s, y_s, x_t, a, seed=0)
    assert c in oc.CORAL_C_GRID
    model = SVC(kernel="precomputed", C=c).fit(x_s @ a @ x_s.T, y_s)
    np.testing.assert_array_equal(pred, model.predict((x_s @ a @ x_t.T).T))


def test_authors_baseline_is_libsvm_default_rbf(small_grids):
    from sklearn.svm import SVC

    x_s, y_s, x_t, _ = toy(seed=6)
    pred, c = oc.predict_authors_none(x_s, y_s, x_t, seed=0)
    assert c in oc.NA_C_GRID
    gamma = 1.0 / x_s.shape[1]

    def rbf(u, v):
        return np.exp(-gamma * ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1))

    model = SVC(kernel="precomputed", C=c).fit(rbf(x_s, x_s), y_s)
    np.testing.assert_array_equal(pred, model.predict(rbf(x_t, x_s)))


def test_linear_classifier_trains_on_mapped_source_and_scores_raw_target(small_grids):
    from sklearn.svm import SVC

    x_s, y_s, x_t, _ = toy(seed=7)
    a = numpy_coral_map(x_s, x_t)
    pred, c = oc.predict_linear(x_s, y_s, x_t, a, seed=0)
    mapped = x_s @ a
    model = SVC(kernel="precomputed", C=c).fit(mapped @ mapped.T, y_s)
    np.testing.assert_array_equal(pred, model.predict(x_t @ mapped.T))


# ---------------------------------------------------------------------------------- CLI


def parser():
    p = argparse.ArgumentParser()
    oc.register(p.add_subparsers(dest="command"))
    return p


def test_register_contract():
    p = parser()
    sub = p._subparsers._group_actions[0].choices["office-caltech"]
    assert sub.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert "\n" not in action.help, action.dest
        assert action.default is not None, action.dest
    args = p.parse_args(["office-caltech"])
    assert args.handler is oc.run


def test_default_data_path_follows_deepalign_data(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPALIGN_DATA", str(tmp_path))
    assert oc.default_data_path() == tmp_path / "office_caltech10" / "office_caltech10_surf.npz"


def test_missing_data_says_how_to_build_it(tmp_path, capsys):
    args = parser().parse_args(["office-caltech", "--data", str(tmp_path / "no.npz")])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "deepalign prepare office-caltech10 --from CORAL_Source_Code.zip --out" in err
    assert "VisionLearningGroup/CORAL" in err
    assert "code/CORAL_Source_Code.zip" in err


@pytest.mark.parametrize("bad", ["A→A", "A-X", "AW"])
def test_bad_shift_is_named(bad):
    with pytest.raises(ValueError, match="--shifts"):
        oc._parse_shift(bad)


def test_run_writes_results(small_grids, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for name in oc.DOMAINS:
        y = np.arange(30) % 3
        arrays[f"{name}_X"] = rng.integers(0, 5, size=(30, 6)).astype(np.float32) + 1
        arrays[f"{name}_y"] = y
    np.savez(tmp_path / "d.npz", **arrays)
    args = parser().parse_args(
        [
            "office-caltech",
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "o"),
            "--rounds",
            "1",
            "--per-class",
            "4",
            "--shifts",
            "A-W",
            "--methods",
            "none",
            "coral",
        ]
    )
    assert args.handler(args) == 0
    result = json.loads((tmp_path / "o" / "results.json").read_text(encoding="utf-8"))
    assert set(result["full"]) == {"none", "coral"}
    assert set(result["full"]["coral"]) == {"A→W"}
    assert result["meta"]["seed"] == 0


# ------------------------------------------------------------------------- committed table


def test_committed_table_schema():
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    names = {oc.shift_name(s, t) for s, t in oc.SHIFTS}
    assert len(names) == 12
    for protocol in ("full", "subsampled"):
        methods = table[protocol]
        assert {"none", "coral", "none_linear", "coral_linear"} <= set(methods)
        for method, row in methods.items():
            assert set(row) == names, (protocol, method)
            assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in row.values())
    assert {"command", "wall_time_s", "machine", "versions", "c_grids", "seed"} <= set(
        table["meta"]
    )


# ------------------------------------------------------------------------ real data, slow


@needs_data
def test_real_coral_map_matches_numpy():
    data = oc.load_domains(DATA)
    (x_s, _), (x_t, _) = data["dslr"], data["webcam"]
    np.testing.assert_allclose(oc.coral_map(x_s, x_t), numpy_coral_map(x_s, x_t), atol=1e-8)


@pytest.mark.slow
@needs_data
def test_skada_coral_adapter_gives_the_same_accuracies():
    """skada's CORALAdapter in the same pipeline (linear SVM, C by 2-fold source CV, all source)
    scores as our map within 0.5 points on every shift. skada's ``reg`` is a shrinkage
    ``(1 - r) S + r·tr(S)/d·I``; with z-scored features tr(S)/d = 1, so ``reg=0.5`` gives
    ``(S + I)/2`` and the same map as CORAL's ``C + I`` (scale factors cancel), up to skada's
    ``1/n`` against MATLAB's ``1/(n - 1)`` covariance."""
    skada = pytest.importorskip("skada")
    data = oc.load_domains(DATA)
    for source, target in oc.SHIFTS:
        (x_s, y_s), (x_t, y_t) = data[source], data[target]
        x = np.vstack([x_s, x_t])
        domain = np.r_[np.ones(len(x_s), int), -np.ones(len(x_t), int)]
        adapter = skada.CORALAdapter(reg=0.5).fit(x, sample_domain=domain)
        x_s_skada = adapter.transform(x, sample_domain=domain, allow_source=True)[: len(x_s)]
        ours, _ = oc.predict_linear(x_s, y_s, x_t, oc.coral_map(x_s, x_t), seed=0)
        theirs, _ = oc.predict_linear(x_s_skada, y_s, x_t, None, seed=0)
        gap = 100 * abs(np.mean(ours == y_t) - np.mean(theirs == y_t))
        assert gap <= 0.5, (oc.shift_name(source, target), gap)
