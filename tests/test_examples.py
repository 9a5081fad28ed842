"""Every example runs in its --quick mode and writes what it promises."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepalign.experiments as experiments

EXAMPLES = Path(__file__).parents[1] / "examples"


def run_example(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_reproduce_quick_writes_table_json_and_plot(dataset, tmp_path, monkeypatch, capsys):
    with pytest.warns(UserWarning, match="synthetic"):
        run_example(f"reproduce_{dataset}.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    table = (tmp_path / "table.md").read_text()
    assert "(paper)" in table
    assert "deepalign V-A (1 seed)" in table
    assert table in capsys.readouterr().out
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["dataset"] == dataset
    assert record["source"] == "synthetic data"
    assert set(record["runs"][0]["test"]) >= {"MAE", "Corr"}
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_baseline_runs_the_same_seeds_without_alignment(tmp_path, monkeypatch):
    argv = ["--quick", "--baseline", "--seeds", "1", "2", "--out", str(tmp_path)]
    with pytest.warns(UserWarning, match="synthetic"):
        run_example("reproduce_mosi.py", argv, monkeypatch)
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["alignment"], r["seeds"]) for r in runs] == [("V-A", [1, 2]), (None, [1, 2])]


def test_model_options_reach_the_trained_config(tmp_path, monkeypatch):
    argv = ["--quick", "--seeds", "3", "--modality-dropout", "0.3", "--align-on", "post"]
    with pytest.warns(UserWarning, match="synthetic"):
        run_example("reproduce_mosi.py", [*argv, "--out", str(tmp_path)], monkeypatch)
    saved = torch.load(tmp_path / "deepalign_V-A" / "seed3" / "checkpoint.pt", weights_only=True)
    assert saved["config"]["fusion_modality_dropout"] == 0.3
    assert saved["config"]["align_on"] == "post"


def test_ablation_quick_has_every_table_ii_row(tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="synthetic"):
        run_example("ablation_table2.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    table = (tmp_path / "table.md").read_text()
    for spec, (mae, corr, _, _) in experiments.TABLE_II.items():
        assert f"| {spec} | {mae:g} | {corr:g} |" in table


def test_drop_in_example(monkeypatch, capsys):
    run_example("drop_in.py", ["--epochs", "2"], monkeypatch)
    assert "epoch 2: train MAE" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_help(name, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_example(name, ["--help"], monkeypatch)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_missing_data_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--data: no such file"):
        run_example("reproduce_mosi.py", ["--data", str(tmp_path / "nope.pkl")], monkeypatch)


def test_format_table_mean_and_std():
    summary = experiments.RunSummary(
        "x", "V-A", [1, 2], test={"MAE": [0.5, 0.7], "Corr": [0.1, 0.3]}
    )
    summary.test |= {k: [0.5, 0.7] for k in ("Mult_acc_2", "F1_score")}
    table = experiments.format_table("sims", [summary], title="t")
    assert "| x (2 seeds) | 0.6 ± 0.14 | 0.2 ± 0.14 | 60.00 ± 14.14 | 60.00 ± 14.14 |" in table


def test_ridge_floors_on_synthetic_data(monkeypatch, capsys):
    run_example("ridge_floors.py", ["--n-train", "64"], monkeypatch)
    out = capsys.readouterr().out
    for name in ("| text |", "| audio + vision |", "| text + audio + vision |"):
        assert name in out


@pytest.mark.slow
def test_torchrun_two_processes_quick(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += [str(EXAMPLES / "reproduce_mosi.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepalign V-A (1 seed)" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "deepalign_V-A" / "seed1111" / "checkpoint.pt").exists()
