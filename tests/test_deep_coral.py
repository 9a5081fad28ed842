"""deepalign.cli.deep_coral: one cell, resume, label-free selection and the skada wrapper."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
skada_metrics = pytest.importorskip("skada.metrics")

from deepalign.cli import deep_coral as dc  # noqa: E402

STEPS = 6


def tiny_data(seed: int = 0) -> dict:
    """Three tiny 'domains' of 12-d features and 3 classes; the target is shifted."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shift in (("amazon", 0.0), ("webcam", 1.0), ("dslr", -0.5)):
        y = torch.arange(40) % 3
        x = torch.randn(40, 12, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 12) + shift
        out[name] = (x, y)
    return out


def cells(weights=(1e-3, 1.0)) -> list[dict]:
    common = {"shift": "A→W", "source": "amazon", "target": "webcam", "seed": 0, "batch_size": 8}
    out = [{**common, "estimator": "source-only", "placement": None, "weight": None}]
    for w in weights:
        out.append({**common, "estimator": "unbiased", "placement": "hidden", "weight": w})
    return out


KW = {"steps": STEPS, "hidden": 8, "depth": 1, "score": True, "val_share": 0.25}


def test_one_cell_runs_and_records(tmp_path):
    records = dc.run_cells(
        tiny_data(), cells()[1:2], tmp_path, resume=False, log=lambda s: None, **KW
    )
    (path,) = (tmp_path / "cells").glob("*.json")
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(records[0]))
    for key in (
        "target_accuracy",
        "score_entropy",
        "score_snd",
        "score_dev",
        "hidden_scale_target",
        "logits_scale_target",
        "train_cross_entropy_tail",
    ):
        assert np.isfinite(on_disk[key]), key
    assert 0.0 <= on_disk["target_accuracy"] <= 1.0
    assert on_disk["steps"] == STEPS
    assert on_disk["weight"] == 1e-3
    assert not list((tmp_path / "cells").glob(".*tmp"))  # no temporary file left behind


def test_resume_skips_finished_cells(tmp_path, monkeypatch):
    data = tiny_data()
    first = dc.run_cells(data, cells()[:2], tmp_path, resume=False, log=lambda s: None, **KW)
    calls = []
    real = dc.run_cell

    def counting(data, cell, **kw):
        calls.append(dc.cell_key(cell))
        return real(data, cell, **kw)

    monkeypatch.setattr(dc, "run_cell", counting)
    again = dc.run_cells(data, cells(), tmp_path, resume=True, log=lambda s: None, **KW)
    assert calls == [dc.cell_key(cells()[2])]  # only the missing cell ran
    assert again[:2] == json.loads(json.dumps(first))
    with pytest.raises(ValueError, match="--resume"):
        dc.run_cells(data, cells()[:1], tmp_path, resume=False, log=lambda s: None, **KW)


def test_selection_does_not_use_target_labels(tmp_path):
    data = tiny_data()
    x_t, y_t = data["webcam"]
    permuted = dict(data)
    permuted["webcam"] = (
        x_t,
        y_t[torch.randperm(len(y_t), generator=torch.Generator().manual_seed(1))],
    )
    grid = cells(weights=(1e-3, 1e-1, 10.0, 1e3))
    a = dc.run_cells(data, grid, tmp_path / "a", resume=False, log=lambda s: None, **KW)
    b = dc.run_cells(permuted, grid, tmp_path / "b", resume=False, log=lambda s: None, **KW)
    for criterion in dc.CRITERIA:
        assert [r[f"score_{criterion}"] for r in a] == [r[f"score_{criterion}"] for r in b]
        pick_a = {k: r["weight"] for k, r in dc.select(a, criterion).items()}
        pick_b = {k: r["weight"] for k, r in dc.select(b, criterion).items()}
        assert pick_a == pick_b


def test_select_picks_the_highest_score_not_the_accuracy():
    base = {
        "shift": "A→W",
        "seed": 0,
        "batch_size": 32,
        "placement": "hidden",
        "estimator": "plugin",
    }
    records = [
        {**base, "weight": 1e-3, "score_entropy": -0.5, "target_accuracy": 0.9},
        {**base, "weight": 1.0, "score_entropy": -0.1, "target_accuracy": 0.2},
        {**base, "weight": 1e3, "score_entropy": -0.1, "target_accuracy": 0.5},  # a tie: smaller λ
        {
            **base,
            "estimator": "source-only",
            "weight": None,
            "score_entropy": 9.0,
            "target_accuracy": 1.0,
        },
    ]
    (pick,) = dc.select(records, "entropy").values()
    assert pick["weight"] == 1.0
    (oracle,) = dc.select(records, "oracle").values()
    assert oracle["weight"] == 1e-3


def _direct_scores(model, xs, ys, xt, seed):
    """The three criteria by hand, following the papers' definitions as skada states them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    with torch.no_grad():
        hs, zs = model(xs)
        ht, zt = model(xt)
    pt = torch.softmax(zt.double(), 1).numpy()
    entropy = -np.mean(pt * np.log(pt + 1e-7))  # mean over rows and classes, sign: lower better
    q = pt / np.linalg.norm(pt, axis=1, keepdims=True)
    sim = q @ q.T / 0.05
    np.fill_diagonal(sim, -np.diag(sim))
    sim = np.exp(sim - sim.max(1, keepdims=True))
    sim /= sim.sum(1, keepdims=True)
    snd = np.mean(np.sum(-sim * np.log(sim), axis=1))
    idx_train, idx_val = train_test_split(
        np.arange(len(xs)), test_size=0.33, random_state=check_random_state(seed)
    )
    f_train, f_val = hs.double().numpy()[idx_train], hs.double().numpy()[idx_val]
    f_t = ht.double().numpy()
    clf = LogisticRegression().fit(
        np.concatenate([f_train, f_t]), np.r_[np.ones(len(f_train)), np.zeros(len(f_t))]
    )
    d = clf.predict_proba(f_val)
    w = len(f_train) / len(f_t) * d[:, 0] / d[:, 1]
    p_val = np.clip(torch.softmax(zs.double(), 1).numpy()[idx_val], 1e-15, 1 - 1e-15)
    err = -np.log(p_val[np.arange(len(idx_val)), ys.numpy()[idx_val]])
    eta = -np.cov(np.c_[w * err, w], rowvar=False)[0, 1] / np.var(w, ddof=1)
    dev = np.mean(w * err) + eta * np.mean(w) - eta
    return {"entropy": -entropy, "snd": snd, "dev": -dev}


def test_scorer_wrapper_matches_direct_computation():
    data = tiny_data(3)
    (xs, ys), (xt, _) = data["amazon"], data["webcam"]
    model, _ = dc.train_cell(
        xs,
        ys,
        xt,
        estimator="plugin",
        placement="logits",
        weight=1.0,
        batch_size=8,
        steps=STEPS,
        seed=0,
        hidden=8,
    )
    got = dc.label_free_scores(model, xs, ys, xt, seed=5)
    want = _direct_scores(model, xs, ys, xt, seed=5)
    for name in dc.CRITERIA:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9), name


def test_preprocess_is_l1_then_population_zscore():
    counts = np.array([[1, 0, 3], [2, 0, 2], [0, 0, 4]], dtype=np.float32)
    x = counts / counts.sum(1, keepdims=True)
    std = x.std(0)
    std[std == 0] = 1
    want = (x - x.mean(0)) / std
    np.testing.assert_allclose(dc.preprocess(counts), want, rtol=1e-6, atol=1e-6)


def test_same_seed_same_batches_for_every_cell():
    a = dc.batch_plan(50, 30, batch_size=8, steps=20, seed=4)
    b = dc.batch_plan(50, 30, batch_size=8, steps=20, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert a[0].shape == (20, 8)
    assert int(a[1].max()) < 30
    with pytest.raises(ValueError, match="batch_size"):
        dc.batch_plan(5, 30, batch_size=8, steps=2, seed=0)


def test_cli_options_have_help_and_defaults():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    dc.register(sub)
    args = parser.parse_args(["deep-coral", "control", "--seeds", "0,1", "--shifts", "A-W"])
    assert args.handler is dc.run
    assert args.seeds == [0, 1]
    assert args.shifts == ["A→W"]
    job = sub.choices["deep-coral"]
    for action in job._actions:
        if action.dest in ("help", "mode"):
            continue
        assert action.help, action.dest
    assert "(default:" in job.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["deep-coral", "control", "--shifts", "A-A"])


def test_report_keeps_only_complete_groups():
    def rec(shift, seed, est, w):
        return {
            "shift": shift,
            "seed": seed,
            "batch_size": 32,
            "estimator": est,
            "placement": None if w is None else "hidden",
            "weight": w,
        }

    records = [
        rec("A→W", 0, "source-only", None),
        rec("A→W", 0, "plugin", 1.0),
        rec("A→W", 1, "source-only", None),
    ]
    kept, dropped = dc.complete_groups(records)
    assert kept == records[:2]
    assert dropped == ["A→W seed 1 batch 32: 1 of 2 cells"]
