"""Every example runs in its --quick mode and writes what it promises; the tables' helpers."""

import csv
import io
import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from deepalign.cli import data as cli_data
from deepalign.cli import plots, tables
from deepalign.cli.runs import RunSummary
from deepalign.stats import paired_difference

EXAMPLES = Path(__file__).parents[1] / "examples"
REAL_MOSI = Path(__file__).parents[2] / "shared" / "data" / "mosi_bclstm" / "mosi_bclstm.pkl"


def run_example(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_reproduce_quick_writes_every_output(dataset, tmp_path, monkeypatch, capsys):
    run_example(f"reproduce_{dataset}.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    out, err = capsys.readouterr()
    assert "SYNTHETIC" in err
    table = (tmp_path / "table.md").read_text()
    # synthetic data: the paper's rows only under their own heading, after this run's rows
    heading = table.index("#### The paper's numbers, on the real")
    assert "(paper)" not in table[:heading]
    assert "(paper)" in table[heading:]
    assert "deepalign V-A (1 seed)" in table[:heading]
    assert err.count("SYNTHETIC") == 1  # one notice, not two
    assert table in out
    assert f"to {tmp_path}" in out  # where it wrote
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["dataset"] == dataset
    assert record["source"] == "synthetic data"
    assert set(record["runs"][0]["test"]) >= {"MAE", "Corr"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dataset"] == dataset
    assert config["alignment"] == "V-A"
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "seeds.csv").read_text().startswith("row,alignment,estimator,seed")
    assert (tmp_path / "seed1111" / "deepalign_V-A" / "results.json").is_file()


def test_baseline_runs_the_same_seeds_with_paired_differences(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--quiet", "--baseline", "--seeds", "1", "2", "--out", str(tmp_path)]
    run_example("reproduce_mosi.py", argv, monkeypatch)
    record = json.loads((tmp_path / "results.json").read_text())
    runs = record["runs"]
    assert [(r["alignment"], r["seeds"]) for r in runs] == [("V-A", [1, 2]), (None, [1, 2])]
    assert record["reference"] == "Self_MM (deepalign)"
    # the paired statistics, recomputed from the per-seed values of both rows
    for key in ("MAE", "Corr", "Has0_acc_2"):
        expected = paired_difference(
            runs[0]["test"][key], runs[1]["test"][key], higher_is_better=key != "MAE"
        )
        saved = record["paired"]["deepalign V-A"][key]
        assert saved["better"] == expected.better
        assert saved["mean"] == pytest.approx(expected.mean, abs=1e-15)
        assert saved["low"] == pytest.approx(expected.low, abs=1e-15)
    table = (tmp_path / "table.md").read_text()
    assert "#### Paired differences against `Self_MM (deepalign)`" in table
    assert "| deepalign V-A | " in table.split("#### Paired")[1]
    assert (tmp_path / "paired_differences.png").stat().st_size > 0
    err = capsys.readouterr().err
    assert "epoch 1/" not in err  # --quiet: no per-epoch lines
    assert "seed 1 (1/2)" not in err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "seeds.csv").read_text())))
    assert [(r["row"], r["seed"]) for r in rows] == [
        ("deepalign V-A", "1"),
        ("deepalign V-A", "2"),
        ("Self_MM (deepalign)", "1"),
        ("Self_MM (deepalign)", "2"),
    ]
    assert float(rows[2]["test_MAE"]) == runs[1]["test"]["MAE"][0]


def test_model_options_reach_the_trained_config(tmp_path, monkeypatch):
    argv = ["--quick", "--quiet", "--seeds", "3", "--modality-dropout", "0.3", "--align-on", "post"]
    run_example("reproduce_mosi.py", [*argv, "--out", str(tmp_path)], monkeypatch)
    run = json.loads((tmp_path / "seed3" / "deepalign_V-A" / "run.json").read_text())
    assert run["model"]["fusion_modality_dropout"] == 0.3
    assert run["model"]["align_on"] == "post"
    assert run["data"]["synthetic"] == "mosi"


def test_ablation_quick_has_every_table_ii_row(tmp_path, monkeypatch):
    run_example("ablation_table2.py", ["--quick", "--quiet", "--out", str(tmp_path)], monkeypatch)
    table = (tmp_path / "table.md").read_text()
    # synthetic data: no paper columns beside the synthetic numbers
    assert "paper MAE" not in table
    for spec in tables.TABLE_II:
        assert f"| {spec} | plugin | " in table
    assert "| none | – | " in table
    assert "(reference)" in table
    config = json.loads((tmp_path / "config.json").read_text())
    assert "alignment" not in config  # set per row
    rows = list(csv.DictReader(io.StringIO((tmp_path / "seeds.csv").read_text())))
    assert len(rows) == len(tables.TABLE_II) + 1


def test_ablation_estimators_specs_and_seed_ranges(tmp_path, monkeypatch):
    argv = ["--quick", "--quiet", "--specs", "V-A", "T+A", "--estimator", "plugin", "unbiased"]
    argv += ["--seeds", "5..6", "--out", str(tmp_path)]
    run_example("ablation_table2.py", argv, monkeypatch)
    record = json.loads((tmp_path / "results.json").read_text())
    names = [(r["name"], r["alignment"], r["estimator"], r["seeds"]) for r in record["runs"]]
    assert names == [
        ("V-A", "V-A", "plugin", [5, 6]),
        ("V-A (unbiased)", "V-A", "unbiased", [5, 6]),
        ("T+A", "T+A", "plugin", [5, 6]),
        ("T+A (unbiased)", "T+A", "unbiased", [5, 6]),
        ("none", None, None, [5, 6]),
    ]
    run = json.loads((tmp_path / "seed6" / "T+A_unbiased" / "run.json").read_text())
    assert (run["model"]["alignment"], run["model"]["align_estimator"]) == ("T+A", "unbiased")
    assert set(record["paired"]) == {"V-A", "V-A (unbiased)", "T+A",
                                     "T+A (unbiased)"}  # fmt: skip
    assert (tmp_path / "paired_differences.png").stat().st_size > 0


def test_drop_in_example(monkeypatch, capsys):
    run_example("drop_in.py", ["--epochs", "2"], monkeypatch)
    out, err = capsys.readouterr()
    assert "epoch 2: train MAE" in out
    assert "SYNTHETIC" in err


def test_drop_in_quick(monkeypatch, capsys):
    run_example("drop_in.py", ["--quick"], monkeypatch)
    out = capsys.readouterr().out
    assert "epoch 1: train MAE" in out
    assert "epoch 2" not in out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_help_and_quick(name, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_example(name, ["--help"], monkeypatch)
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["reproduce_mosi.py", "ablation_table2.py", "ridge_floors.py"])
def test_missing_data_file_is_an_error_not_a_fallback(name, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_example(name, ["--quick", "--data", str(tmp_path / "nope.pkl")], monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--data: no such file: {tmp_path / 'nope.pkl'}" in err
    assert "SYNTHETIC" not in err


def test_format_table_mean_and_std():
    summary = RunSummary("x", "V-A", [1, 2], test={"MAE": [0.5, 0.7], "Corr": [0.1, 0.3]})
    summary.test |= {k: [0.5, 0.7] for k in ("Mult_acc_2", "F1_score")}
    table = tables.format_table("sims", [summary], title="t")
    assert "| x (2 seeds) | 0.6 ± 0.14 | 0.2 ± 0.14 | 60.00 ± 14.14 | 60.00 ± 14.14 |" in table
    assert "Paired" not in table


def test_format_table_paired_cells_by_hand():
    keys = ("MAE", "Corr", "Mult_acc_2", "F1_score")
    ref = RunSummary("ref", None, [1, 2, 3], test={k: [0.5, 0.6, 0.7] for k in keys})
    # differences +0.1 on every seed: zero-width interval, excludes 0; MAE is worse
    row = RunSummary("row", "V-A", [3, 1, 2], test={k: [0.8, 0.6, 0.7] for k in keys})
    table = tables.format_table("sims", [row, ref], title="t", reference="ref")
    cells = "+0.1 [+0.1, +0.1] 0/3 *", "+0.1 [+0.1, +0.1] 3/3 *", "+10 [+10, +10] 3/3 *"
    assert f"| row | {cells[0]} | {cells[1]} | {cells[2]} | {cells[2]} |" in table


def test_compare_pairs_by_seed_not_position():
    ref = RunSummary("ref", None, [1, 2, 3], test={"MAE": [0.5, 0.9, 0.7]})
    row = RunSummary("row", "V-A", [3, 1, 4], test={"MAE": [0.6, 0.4, 9.0]})
    d = tables.compare([ref, row], "ref")["row"]["MAE"]
    # common seeds in the reference's order: 1 (0.4 vs 0.5) and 3 (0.6 vs 0.7)
    assert d == paired_difference([0.4, 0.6], [0.5, 0.7], higher_is_better=False)
    with pytest.raises(ValueError, match="reference: expected one of"):
        tables.compare([ref, row], "nope")
    lone = RunSummary("lone", "V-A", [9], test={"MAE": [0.1]})
    with pytest.raises(ValueError, match="no seed in common"):
        tables.compare([ref, lone], "ref")


def test_format_ablation_single_seed_has_no_interval():
    keys = ("MAE", "Corr", "Has0_acc_2", "Has0_F1_score")
    ref = RunSummary("none", None, [1], test={k: [0.5] for k in keys})
    row = RunSummary("V-A", "V-A", [1], test={k: [0.4] for k in keys}, estimator="x")
    table = tables.format_ablation("mosei", [row, ref], title="t", reference="none")
    mae, corr = tables.TABLE_II["V-A"][2:]
    self_mm = tables.PAPER_TABLES["mosei"]["Self_MM (paper)"]
    head = f"| V-A | x | {mae:g} | {corr:g} | {mae - self_mm[0]:+.3f} | {corr - self_mm[1]:+.3f} |"
    assert head in table
    assert "| -0.1 [n/a] 1/1 | -0.1 [n/a] 0/1 | -10 [n/a] 0/1 | -10 [n/a] 0/1 |" in table


def test_curves_figure_has_one_axis_per_loss_term():
    pytest.importorskip("matplotlib")
    history = [
        {"epoch": e, "train_loss": 1.0, "train_fusion": 0.9, "train_text": 0.0, "train_audio": 0.0,
         "train_vision": 0.0, "train_alignment": 0.1, "valid_loss": 1.2, "valid_MAE": 1.2}
        for e in (1, 2, 3)
    ]  # fmt: skip
    summary = RunSummary("r", "V-A", [1], curves=[history])
    fig = plots.curves_figure([summary])
    visible = [axis for axis in fig.axes if axis.get_visible()]
    titles = [axis.get_title() for axis in visible]
    assert titles == [
        "total training loss", "fusion (train)", "text (train)", "audio (train)",
        "vision (train)", "alignment (train)", "validation L1 (fusion)",
    ]  # fmt: skip
    assert all(len(axis.get_lines()) == 1 for axis in visible)
    assert any("exactly 0 in epochs 1 and 2" in t.get_text().replace("\n", " ") for t in fig.texts)


def test_paired_figure_marks_each_row_with_its_interval():
    pytest.importorskip("matplotlib")
    ref = RunSummary("none", None, [1, 2, 3], test={"MAE": [0.5, 0.6, 0.7]})
    rows = [
        RunSummary(f"s{i}", "V-A", [1, 2, 3], test={"MAE": [0.5 + i / 10, 0.6, 0.7]})
        for i in range(3)
    ]
    deltas = tables.compare([*rows, ref], "none")
    fig = plots.paired_figure([*rows, ref], deltas, [("MAE", "MAE", 1)], "none")
    axis = fig.axes[0]
    markers = [line for line in axis.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata()[0] for line in markers] == pytest.approx(
        [deltas[f"s{i}"]["MAE"].mean for i in range(3)]
    )
    zero = [line for line in axis.get_lines() if list(line.get_xdata()) == [0, 0]]
    assert zero  # the line at 0
    assert len(axis.collections) == 3  # one error bar per row
    assert [t.get_text() for t in axis.get_yticklabels()] == ["s0", "s1", "s2"]


def test_ridge_floors_quick_on_synthetic_data(tmp_path, monkeypatch, capsys):
    run_example("ridge_floors.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    out, err = capsys.readouterr()
    assert "SYNTHETIC" in err
    for name in ("| text |", "| audio + vision |", "| text + audio + vision |"):
        assert name in out
    assert f"to {tmp_path}" in out
    floors = json.loads((tmp_path / "floors.json").read_text())
    assert floors["source"] == "synthetic data"
    assert math.isfinite(floors["rows"]["text"]["MAE"])


@pytest.mark.skipif(not REAL_MOSI.is_file(), reason=f"real data absent: {REAL_MOSI}")
def test_ridge_floors_quick_on_a_file_uses_a_few_batches_of_it(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--data", str(REAL_MOSI), "--out", str(tmp_path)]
    run_example("ridge_floors.py", argv, monkeypatch)
    floors = json.loads((tmp_path / "floors.json").read_text())
    assert floors["data"]["quick_head"] == cli_data.QUICK_BATCHES * cli_data.QUICK_BATCH_SIZE
    assert floors["source"] == REAL_MOSI.name  # no machine path in a record
    assert "SYNTHETIC" not in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_quick(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += [str(EXAMPLES / "reproduce_mosi.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepalign V-A (1 seed)" in (tmp_path / "table.md").read_text()
    run_dir = tmp_path / "seed1111" / "deepalign_V-A"
    assert (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoint.pt").exists()  # a finished run's checkpoint is dropped
