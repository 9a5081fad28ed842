"""deepalign.metrics against scikit-learn, numpy and hand-computed cases."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from deepalign.metrics import (
    MOSI_KEYS,
    SIMS_KEYS,
    DegenerateMetricWarning,
    msa_metrics,
    weighted_f1,
)


def _random_case(seed: int, n: int = 200, limit: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(-limit, limit, n) * 5) / 5  # multiples of 0.2, some exact zeros
    true[:10] = 0.0
    pred = np.clip(true + rng.normal(0, 0.8 * limit / 3, n), -1.5 * limit, 1.5 * limit)
    pred[:3] = 0.0
    return pred, true


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mosi_metrics_match_sklearn_and_numpy(seed):
    pred, true = _random_case(seed)
    m = msa_metrics(pred, true, dataset="mosi")
    assert tuple(m) == MOSI_KEYS
    assert m["Has0_acc_2"] == pytest.approx(accuracy_score(true >= 0, pred >= 0))
    assert m["Has0_F1_score"] == pytest.approx(f1_score(true >= 0, pred >= 0, average="weighted"))
    nz = true != 0
    assert m["Non0_acc_2"] == pytest.approx(accuracy_score(true[nz] > 0, pred[nz] > 0))
    assert m["Non0_F1_score"] == pytest.approx(
        f1_score(true[nz] > 0, pred[nz] > 0, average="weighted")
    )
    assert m["MAE"] == pytest.approx(np.abs(pred - true).mean())
    assert m["Corr"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    # Python's round() is also round-half-to-even: an independent reference for numpy's.
    for key, c in (("Mult_acc_7", 3), ("Mult_acc_5", 2)):
        hits = [
            round(min(max(p, -c), c)) == round(min(max(t, -c), c))
            for p, t in zip(pred, true, strict=True)
        ]
        assert m[key] == pytest.approx(np.mean(hits))


def test_mosei_is_mosi():
    pred, true = _random_case(3)
    assert msa_metrics(pred, true, dataset="mosei") == msa_metrics(pred, true, dataset="mosi")


def test_mosi_hand_cases_ties_and_half_to_even():
    #         tie at 0 | 0.5 -> 0 | 2.5 -> 2 | -2.5 -> -2 | 1.5 -> 2 | clip 4 -> 3
    pred = np.array([0.0, 0.5, 2.5, -2.5, 1.5, 4.0])
    true = np.array([0.0, 0.0, 2.4, -1.6, 2.6, 3.0])
    m = msa_metrics(pred, true)
    # Has0 (p >= 0) vs (t >= 0): [T,T,T,F,T,T] vs [T,T,T,F,T,T] -> all correct.
    assert m["Has0_acc_2"] == 1.0
    assert m["Has0_F1_score"] == 1.0
    # Non0 drops the two t == 0 samples; the rest agree in sign.
    assert m["Non0_acc_2"] == 1.0
    # round(clip(.,3)): pred [0, 0, 2, -2, 2, 3], true [0, 0, 2, -2, 3, 3]: 5 of 6 equal.
    assert m["Mult_acc_7"] == pytest.approx(5 / 6)
    # round(clip(.,2)): pred [0, 0, 2, -2, 2, 2], true [0, 0, 2, -2, 2, 2]: all equal.
    assert m["Mult_acc_5"] == 1.0
    assert m["MAE"] == pytest.approx((0 + 0.5 + 0.1 + 0.9 + 1.1 + 1.0) / 6)


def test_non0_excludes_zero_truth_and_uses_strict_positive():
    pred = np.array([0.0, -1.0, 1.0, 2.0])
    true = np.array([1.0, 0.0, 1.0, -1.0])
    m = msa_metrics(pred, true)
    # kept: samples 0, 2, 3; (p > 0) = [F, T, T], (t > 0) = [T, T, F] -> 1 of 3.
    assert m["Non0_acc_2"] == pytest.approx(1 / 3)
    # Has0 on all: (p >= 0) = [T, F, T, T], (t >= 0) = [T, T, T, F] -> 2 of 4.
    assert m["Has0_acc_2"] == pytest.approx(0.5)


def test_sims_metrics_match_sklearn_and_numpy():
    pred, true = _random_case(4, limit=1.0)
    m = msa_metrics(pred, true, dataset="sims")
    assert tuple(m) == SIMS_KEYS
    p, t = np.clip(pred, -1, 1), np.clip(true, -1, 1)
    assert m["MAE"] == pytest.approx(np.abs(p - t).mean())
    assert m["Corr"] == pytest.approx(np.corrcoef(p, t)[0, 1])

    def classes(x, edges):  # class i for edges[i] < x <= edges[i + 1], by explicit comparison
        return np.array(
            [next(i for i in range(len(edges) - 1) if edges[i] < v <= edges[i + 1]) for v in x]
        )

    bins = {
        2: [-1.01, 0, 1.01],
        3: [-1.01, -0.1, 0.1, 1.01],
        5: [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01],
    }
    for k, edges in bins.items():
        assert m[f"Mult_acc_{k}"] == pytest.approx(
            accuracy_score(classes(t, edges), classes(p, edges))
        )
    expected_f1 = f1_score(classes(t, bins[2]), classes(p, bins[2]), average="weighted")
    assert m["F1_score"] == pytest.approx(expected_f1)


def test_sims_hand_cases_half_open_intervals_and_clipping():
    # 0 is negative in the 2-class bins; +-0.1 sit on the upper edges of their intervals.
    pred = np.array([0.0, 0.1, -0.1, 0.7, 5.0])
    true = np.array([-0.2, 0.05, -0.3, 0.75, 1.0])
    m = msa_metrics(pred, true, dataset="sims")
    # 2 classes: pred [0, 1, 0, 1, 1], true [0, 1, 0, 1, 1] -> all equal.
    assert m["Mult_acc_2"] == 1.0
    # 3 classes: pred [1, 1, 0, 2, 2], true [0, 1, 0, 2, 2] -> 4 of 5.
    assert m["Mult_acc_3"] == pytest.approx(0.8)
    # 5 classes: pred [2, 2, 1, 3, 4], true [1, 2, 1, 4, 4] -> 3 of 5.
    assert m["Mult_acc_5"] == pytest.approx(0.6)
    # MAE on clipped values: 5.0 -> 1.0 matches the truth.
    assert m["MAE"] == pytest.approx((0.2 + 0.05 + 0.2 + 0.05 + 0.0) / 5)


def test_constant_predictions_give_nan_corr_with_warning():
    with pytest.warns(DegenerateMetricWarning, match="Corr"):
        m = msa_metrics(np.full(5, 0.1), np.array([1.0, -1.0, 0.5, 2.0, -2.0]))
    assert np.isnan(m["Corr"])
    assert all(np.isfinite(v) for k, v in m.items() if k != "Corr")


def test_all_zero_truths_give_nan_non0_with_warning():
    with pytest.warns(DegenerateMetricWarning, match="Non0"):
        m = msa_metrics(np.array([1.0, -1.0, 0.5]), np.zeros(3))
    assert np.isnan(m["Non0_acc_2"])
    assert np.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)


def test_no_warning_on_regular_input():
    pred, true = _random_case(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msa_metrics(pred, true)


@pytest.mark.parametrize(
    "convert",
    [
        lambda x: torch.tensor(x, dtype=torch.float64),
        lambda x: torch.tensor(x, dtype=torch.float32)[:, None],
        lambda x: torch.tensor(x, dtype=torch.bfloat16, requires_grad=True),
        lambda x: x.astype(np.float16)[:, None],
        lambda x: x.astype(np.float32),
    ],
)
def test_accepts_tensors_and_arrays_of_any_float_dtype(convert):
    # values exactly representable in bfloat16/float16, so every dtype gives the same metrics
    pred = np.array([0.5, -1.0, 2.5, 0.0, -3.0, 1.25])
    true = np.array([1.0, -0.5, 2.0, 0.0, -2.5, -1.0])
    expected = msa_metrics(pred, true)
    got = msa_metrics(convert(pred), convert(true))
    assert got == pytest.approx(expected)
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize(
    ("pred", "true", "error", "match"),
    [
        (np.zeros(3), np.zeros(4), ValueError, "same number"),
        (np.zeros((3, 2)), np.zeros((3, 2)), ValueError, r"pred: expected shape \(N,\)"),
        (np.zeros(0), np.zeros(0), ValueError, "N >= 1"),
        (np.array([0.0, np.nan]), np.zeros(2), ValueError, "pred: expected finite"),
        (np.zeros(2), np.array([np.inf, 0.0]), ValueError, "true: expected finite"),
        ([0.0, 1.0], np.zeros(2), TypeError, "pred: expected a torch.Tensor or numpy array"),
        (np.array(["a", "b"]), np.zeros(2), TypeError, "real numbers"),
    ],
)
def test_invalid_inputs_raise(pred, true, error, match):
    with pytest.raises(error, match=match):
        msa_metrics(pred, true)


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match="dataset: expected one of"):
        msa_metrics(np.zeros(2), np.ones(2), dataset="iemocap")


@pytest.mark.parametrize("seed", range(5))
def test_weighted_f1_matches_sklearn_multiclass(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 4, 50)
    pred = rng.integers(1, 5, 50)  # class 4 never true, class 0 never predicted
    assert weighted_f1(pred, true) == pytest.approx(f1_score(true, pred, average="weighted"))


# ------------------------------------------------------------------ MMSA's rule at class boundaries
# MMSA 2.x (``metricsTop.py``) scores the float32 outputs of a model as below: numpy comparisons
# of a float32 array against Python floats, which numpy evaluates in float32. Written here from
# that description as an independent reference.


def _mmsa_sims_reference(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred = np.clip(pred, -1.0, 1.0)
    true = np.clip(true, -1.0, 1.0)
    edges = {
        2: [-1.01, 0.0, 1.01],
        3: [-1.01, -0.1, 0.1, 1.01],
        5: [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01],
    }
    out = {}
    for k, ms in edges.items():
        pred_k, true_k = pred.copy(), true.copy()
        for i in range(len(ms) - 1):
            pred_k[np.logical_and(pred > ms[i], pred <= ms[i + 1])] = i
            true_k[np.logical_and(true > ms[i], true <= ms[i + 1])] = i
        out[f"Mult_acc_{k}"] = float(np.sum(np.round(pred_k) == np.round(true_k)) / len(true))
        if k == 2:
            out["F1_score"] = float(f1_score(true_k, pred_k, average="weighted"))
    return out


def _mmsa_mosi_reference(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    out = {}
    for key, c in (("Mult_acc_7", 3.0), ("Mult_acc_5", 2.0)):
        p, t = np.clip(pred, -c, c), np.clip(true, -c, c)
        out[key] = float(np.sum(np.round(p) == np.round(t)) / len(true))
    nz = np.array([i for i, e in enumerate(true) if e != 0])
    out["Non0_acc_2"] = float(accuracy_score(pred[nz] > 0, true[nz] > 0))
    out["Non0_F1_score"] = float(f1_score(true[nz] > 0, pred[nz] > 0, average="weighted"))
    out["Has0_acc_2"] = float(accuracy_score(pred >= 0, true >= 0))
    out["Has0_F1_score"] = float(f1_score(true >= 0, pred >= 0, average="weighted"))
    return out


def _with_float32_neighbours(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    up, down = np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))
    return np.concatenate([v, up, down])


SIMS_EDGES = _with_float32_neighbours([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, -1.01, 1.01])


def test_sims_float32_classes_on_every_edge_match_mmsa():
    # One value at a time, against every class representative: a value put in the wrong class
    # changes the accuracy of its pair.
    representatives = np.array([-0.9, -0.4, 0.0, 0.4, 0.9], dtype=np.float32)
    for value in SIMS_EDGES:
        pred = np.full(len(representatives), value, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateMetricWarning)  # constant pred: Corr NaN
            got = msa_metrics(pred, representatives, dataset="sims")
        expected = _mmsa_sims_reference(pred, representatives)
        for key, value_expected in expected.items():
            assert got[key] == pytest.approx(value_expected, abs=1e-12), (float(value), key)


@pytest.mark.parametrize("shift", [1, 2, 5, 11])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_sims_float32_edges_both_sides_match_mmsa(shift, as_tensor):
    pred, true = SIMS_EDGES, np.roll(SIMS_EDGES, shift)
    convert = torch.from_numpy if as_tensor else np.asarray
    got = msa_metrics(convert(pred), convert(true), dataset="sims")
    for key, value in _mmsa_sims_reference(pred, true).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_sims_float32_boundary_hand_cases():
    # In float32, 0.1 <= float32(0.1): neutral, where the float64 value of float32(0.1)
    # (0.10000000149...) would be positive; float32(-0.7) = -0.69999998... is not > float32(-0.7),
    # so it is in the lowest of 5 classes.
    pred = np.array([0.1, -0.7, 0.7, -0.1], dtype=np.float32)
    true = np.array([0.05, -0.8, 0.5, -0.5], dtype=np.float32)
    m = msa_metrics(pred, true, dataset="sims")
    # 3 classes: pred [1, 0, 2, 0], true [1, 0, 2, 0]
    assert m["Mult_acc_3"] == 1.0
    # 5 classes: pred [2, 0, 3, 1], true [2, 0, 3, 1]
    assert m["Mult_acc_5"] == 1.0


def test_sims_float64_inputs_use_float64_edges():
    # The same values in float64: 0.1 is neutral, float64's -0.7 sits on its edge (class 0).
    pred = np.array([0.1, -0.7, 0.100001, -0.699999])
    true = np.array([0.05, -0.8, 0.5, -0.5])
    m = msa_metrics(pred, true, dataset="sims")
    assert m == pytest.approx({**m, **_mmsa_sims_reference(pred, true)})
    assert m["Mult_acc_5"] == 1.0


def test_sims_random_float32_data_snapped_to_edges_matches_mmsa():
    rng = np.random.default_rng(7)
    pred = rng.uniform(-1.2, 1.2, 300).astype(np.float32)
    true = rng.uniform(-1.0, 1.0, 300).astype(np.float32)
    pred[:60] = rng.choice(SIMS_EDGES, 60)
    true[100:160] = rng.choice(SIMS_EDGES, 60)
    got = msa_metrics(pred, true, dataset="sims")
    for key, value in _mmsa_sims_reference(pred, true).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("as_tensor", [False, True])
def test_mosi_float32_boundaries_match_mmsa(as_tensor):
    # MOSI's edges are 0 (sign) and the half-integers (rounding), exact in float32 and float64,
    # so the float64 evaluation equals MMSA's float32 one; checked on and beside every edge.
    edges = _with_float32_neighbours([0.0, *np.arange(-3.5, 3.6, 1.0), -2.0, 2.0, -3.0, 3.0])
    rng = np.random.default_rng(3)
    for _ in range(20):
        pred = rng.permutation(edges)
        true = rng.permutation(edges)
        true[:3] = 0.0
        convert = torch.from_numpy if as_tensor else np.asarray
        got = msa_metrics(convert(pred), convert(true), dataset="mosi")
        for key, value in _mmsa_mosi_reference(pred, true).items():
            assert got[key] == pytest.approx(value, abs=1e-12), key
