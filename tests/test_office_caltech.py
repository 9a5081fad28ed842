"""coral_transform on real data: Office-Caltech10 SURF (the CORAL authors' release).

Protocol (the data README's): per domain, L1-normalise each histogram, z-score each feature
with the domain's mean and population std; all source images train a linear SVM (LinearSVC,
C = 1, fixed); all target images score it. The default map must score as CORAL's own map,
(C_s + I)^{-1/2} (C_t + I)^{1/2}, computed here independently with numpy.
"""

import json
import os
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deepalign import functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPALIGN_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "office_caltech10" / "office_caltech10_surf.npz"
DOMAINS = ("amazon", "webcam", "dslr", "caltech10")
SHIFTS = [(s, t) for s in DOMAINS for t in DOMAINS if s != t]
FAST_SHIFT = ("dslr", "webcam")

needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"Office-Caltech10 absent: {DATA}")


@pytest.fixture(scope="module")
def domains() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    with np.load(DATA) as z:
        for name in DOMAINS:
            x = z[f"{name}_X"].astype(np.float64)
            x = x / x.sum(axis=1, keepdims=True)
            std = x.std(axis=0)  # population std, MATLAB's zscore(x, 1)
            assert (std > 0).all()
            out[name] = ((x - x.mean(axis=0)) / std, z[f"{name}_y"])
    return out


def numpy_coral_map(x_s: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    """CORAL's map, (C_s + I)^{-1/2} (C_t + I)^{1/2}, with numpy's cov and eigh."""

    def power(c: np.ndarray, p: float) -> np.ndarray:
        values, vectors = np.linalg.eigh(c + np.eye(len(c)))
        return (vectors * values**p) @ vectors.T

    return power(np.cov(x_s, rowvar=False), -0.5) @ power(np.cov(x_t, rowvar=False), 0.5)


def svm_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LinearSVC(C=1.0, dual=True, max_iter=20_000, random_state=0)
        model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def check_shift(domains, source: str, target: str) -> None:
    (x_s, y_s), (x_t, y_t) = domains[source], domains[target]
    c_s, c_t = F.covariance(torch.from_numpy(x_s)), F.covariance(torch.from_numpy(x_t))
    ours = F.coral_transform(c_s, c_t, reg=1.0).numpy()
    reference = numpy_coral_map(x_s, x_t)
    np.testing.assert_allclose(ours, reference, atol=1e-8 * np.abs(reference).max())
    ours_accuracy = svm_accuracy(x_s @ ours, y_s, x_t, y_t)
    reference_accuracy = svm_accuracy(x_s @ reference, y_s, x_t, y_t)
    assert abs(ours_accuracy - reference_accuracy) <= 0.01, (ours_accuracy, reference_accuracy)


@needs_data
def test_default_map_scores_as_coral_on_dslr_to_webcam(domains):
    check_shift(domains, *FAST_SHIFT)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(("source", "target"), [s for s in SHIFTS if s != FAST_SHIFT])
def test_default_map_scores_as_coral_on_every_shift(domains, source, target):
    check_shift(domains, source, target)


@needs_data
def test_unregularised_maps_reach_the_bound_on_rank_deficient_real_covariances(domains):
    """dslr has 157 images of 800 features, and L1 normalisation costs every domain one more
    rank: the rank-deficient path on real data, float32 as a network would produce it."""
    x_s, x_t = (torch.from_numpy(domains[d][0]).float() for d in FAST_SHIFT)
    c_s, c_t = F.covariance(x_s), F.covariance(x_t)
    rank_s = int(torch.linalg.matrix_rank(c_s.double(), hermitian=True, rtol=1e-6))
    assert rank_s == 156
    bound = torch.linalg.eigvalsh(c_t.double()).flip(0)[rank_s:].square().sum().sqrt()
    for method in ("coral", "ot"):
        a = F.coral_transform(c_s, c_t, method=method).double()
        gap = torch.linalg.matrix_norm(a.T @ c_s.double() @ a - c_t.double())
        assert gap.item() == pytest.approx(bound.item(), rel=1e-3)


def run_example(argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["office_caltech_coral.py", *argv])
    runpy.run_path(str(ROOT / "examples" / "office_caltech_coral.py"), run_name="__main__")


def test_example_refuses_a_missing_file(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_example(["--data", str(tmp_path / "absent.npz"), "--out", str(tmp_path)], monkeypatch)
    assert "--data: no file at" in capsys.readouterr().err


@needs_data
def test_example_quick_writes_the_table(tmp_path, monkeypatch, capsys):
    run_example(["--quick", "--data", str(DATA), "--out", str(tmp_path)], monkeypatch)
    table = (tmp_path / "table.md").read_text()
    assert "| shift | no adaptation | CORAL map | OT map |" in table
    assert "| D→W |" in table
    assert "| mean of 2 |" in table
    assert table in capsys.readouterr().out
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["protocol"].startswith("all source images")
    assert [r["shift"] for r in record["linear"]] == ["D→W", "W→D"]


@needs_data
def test_example_quick_deep_runs_every_estimator_on_the_same_seeds(tmp_path, monkeypatch):
    import inspect

    argv = ["--quick", "--deep", "--batch-sizes", "8", "--data", str(DATA), "--out", str(tmp_path)]
    run_example(argv, monkeypatch)
    deep = json.loads((tmp_path / "results.json").read_text())["deep"]
    unbiased = "estimator" in inspect.signature(F.covariance_alignment_loss).parameters
    expected = ["source-only", "plugin", *(["unbiased"] if unbiased else [])]
    assert deep["estimators"] == expected
    assert [(r["estimator"], r["seed"], r["batch_size"]) for r in deep["runs"]] == [
        (e, 0, 8) for e in expected
    ]
    assert "| 8 |" in (tmp_path / "table.md").read_text()


@needs_data
def test_deep_runs_are_reproducible_and_the_alignment_acts():
    example = runpy.run_path(str(ROOT / "examples" / "office_caltech_coral.py"))
    data = example["load"](DATA)

    def run(estimator):
        return example["train_deep"](
            data, *FAST_SHIFT, estimator=estimator, batch_size=8, seed=3, epochs=1
        )

    plugin = run("plugin")
    assert run("plugin") == plugin
    source_only = run(None)
    assert source_only["scale_source"] != plugin["scale_source"]
