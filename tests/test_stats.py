"""deepalign.stats against hand computations, closed forms and scipy.stats."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from deepalign.stats import (
    PairedDifference,
    paired_difference,
    paired_differences,
    student_t_ppf,
)

# ------------------------------------------------------------------ Student t quantile


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 7, 9, 10, 19, 29, 50, 100, 1000, 0.5, 2.5])
@pytest.mark.parametrize("q", [0.6, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9995, 1 - 1e-9])
def test_student_t_ppf_matches_scipy(q, dof):
    assert student_t_ppf(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-10)
    assert student_t_ppf(1 - q, dof) == pytest.approx(stats.t.ppf(1 - q, dof), rel=1e-10)


@pytest.mark.parametrize("q", [0.5 + 1e-9, 0.5 + 1e-4, 0.55, 0.7, 0.9, 0.975, 1e-12, 0.3])
def test_student_t_ppf_closed_forms(q):
    # dof 1 is Cauchy: tan(pi (q - 1/2)) = -cot(pi q) (the form without cancellation for q
    # far below 1/2); dof 2: (2q - 1) / sqrt(2 q (1 - q)).
    cauchy = math.tan(math.pi * (q - 0.5)) if q >= 0.25 else -1 / math.tan(math.pi * q)
    assert student_t_ppf(q, 1) == pytest.approx(cauchy, rel=1e-12)
    assert student_t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)


def test_student_t_ppf_table_values():
    # the familiar two-sided 95 % values of printed tables
    table = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}
    for dof, value in table.items():
        assert round(student_t_ppf(0.975, dof), 3) == value
    assert student_t_ppf(0.5, 3) == 0.0


@pytest.mark.parametrize(
    ("q", "dof", "match"),
    [
        (0.0, 3, "q: expected a probability"),
        (1.0, 3, "q: expected a probability"),
        (0.9, 0, "dof: expected a finite number > 0"),
        (0.9, math.inf, "dof: expected a finite number > 0"),
        ("0.9", 3, "q: expected a probability"),
    ],
)
def test_student_t_ppf_rejects_bad_input(q, dof, match):
    with pytest.raises(ValueError, match=match):
        student_t_ppf(q, dof)


# ------------------------------------------------------------------ paired difference


def test_paired_difference_hand_computation():
    # differences [1, 2, 3]: mean 2, sample std 1, t(0.975, 2) = 0.95 / sqrt(2 * 0.975 * 0.025)
    d = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (d.n, d.mean, d.std) == (3, 2.0, 1.0)
    assert d.low == pytest.approx(2 - half, rel=1e-12)
    assert d.high == pytest.approx(2 + half, rel=1e-12)
    assert (d.better, d.worse) == (3, 0)
    assert not d.excludes_zero  # [-0.484, 4.484]
    assert not d.improves


def test_paired_difference_lower_is_better_counts_and_direction():
    # MAE: row lower on seeds 0 and 2, equal on seed 1, higher on seed 3
    d = paired_difference(
        [0.70, 0.75, 0.60, 0.90], [0.72, 0.75, 0.65, 0.80], higher_is_better=False
    )
    assert (d.better, d.worse) == (2, 1)
    assert d.mean == pytest.approx((-0.02 + 0 - 0.05 + 0.1) / 4)


def test_improves_follows_the_metric_direction():
    lower = paired_difference([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], higher_is_better=False)
    # differences all -0.1: interval [-0.1, -0.1]
    assert lower.excludes_zero
    assert lower.improves
    higher = paired_difference([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], higher_is_better=True)
    assert higher.excludes_zero
    assert not higher.improves


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    shift=st.floats(-1.0, 1.0),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_paired_difference_matches_scipy_ttest_rel(n, seed, shift, confidence):
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.7, 0.05, n)
    row = reference + shift * 0.03 + rng.normal(0, 0.02, n)
    d = paired_difference(row, reference, confidence=confidence)
    diffs = row - reference
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
    assert d.mean == pytest.approx(diffs.mean(), abs=1e-14)
    assert d.low == pytest.approx(diffs.mean() - half, rel=1e-9, abs=1e-14)
    assert d.high == pytest.approx(diffs.mean() + half, rel=1e-9, abs=1e-14)
    test = stats.ttest_rel(row, reference)
    if abs(test.pvalue - (1 - confidence)) > 1e-9:  # not on the edge
        assert d.excludes_zero == (test.pvalue < 1 - confidence)
    # scipy's own interval of the mean difference (ttest_1samp on the differences)
    low, high = stats.ttest_1samp(diffs, 0.0).confidence_interval(confidence)
    assert (d.low, d.high) == pytest.approx((low, high), rel=1e-9, abs=1e-14)


def test_one_seed_gives_the_difference_and_nan_interval():
    d = paired_difference([0.8], [0.75])
    assert d.n == 1
    assert d.mean == pytest.approx(0.05)
    assert np.isnan([d.std, d.low, d.high]).all()
    assert (d.better, d.worse) == (1, 0)
    assert not d.excludes_zero


def test_zero_variance_differences():
    # equal nonzero differences: zero-width interval at the mean, which excludes 0
    d = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (d.std, d.low, d.high) == (0.0, 0.5, 0.5)
    assert d.excludes_zero
    assert d.improves
    # identical rows: interval [0, 0], contains 0
    same = paired_difference([0.7, 0.8], [0.7, 0.8])
    assert (same.mean, same.low, same.high, same.better, same.worse) == (0.0, 0.0, 0.0, 0, 0)
    assert not same.excludes_zero


def test_nan_metric_gives_nan_mean_and_interval():
    d = paired_difference([0.7, np.nan, 0.8], [0.6, 0.7, 0.7])
    assert np.isnan([d.mean, d.low, d.high]).all()
    assert (d.better, d.worse) == (2, 0)
    assert not d.excludes_zero


@pytest.mark.parametrize(
    ("row", "reference", "kwargs", "error", "match"),
    [
        ([1.0, 2.0], [1.0], {}, ValueError, "one non-zero length"),
        ([], [], {}, ValueError, "one non-zero length"),
        ([[1.0]], [[1.0]], {}, ValueError, r"shapes \(1, 1\)"),
        ([1.0, 2.0], [1.0, 2.0], {"confidence": 1.0}, ValueError, "confidence"),
        ([1.0, 2.0], [1.0, 2.0], {"higher_is_better": 1}, TypeError, "higher_is_better"),
    ],
)
def test_paired_difference_rejects_bad_input(row, reference, kwargs, error, match):
    with pytest.raises(error, match=match):
        paired_difference(row, reference, **kwargs)


def test_paired_differences_per_metric_directions():
    row = {"MAE": [0.70, 0.72, 0.71], "Corr": [0.80, 0.79, 0.81], "only_here": [1.0, 1.0, 1.0]}
    ref = {"MAE": [0.71, 0.74, 0.70], "Corr": [0.78, 0.79, 0.80]}
    out = paired_differences(row, ref)
    assert list(out) == ["MAE", "Corr"]
    assert isinstance(out["MAE"], PairedDifference)
    assert out["MAE"].higher_is_better is False
    assert out["MAE"] == paired_difference(row["MAE"], ref["MAE"], higher_is_better=False)
    assert out["Corr"] == paired_difference(row["Corr"], ref["Corr"])
    assert (out["MAE"].better, out["MAE"].worse) == (2, 1)


def test_paired_differences_names_the_metric_in_errors():
    with pytest.raises(ValueError, match="metric 'Corr'"):
        paired_differences({"Corr": [1.0, 2.0]}, {"Corr": [1.0]})
