"""The examples' command line: every config field reachable, typed, validated; output folders,
progress, --quick on a file, --resume; the harness stays out of ``import deepalign``."""

import argparse
import dataclasses
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import deepalign.alignment
import deepalign.metrics
import deepalign.model
from deepalign import MSAConfig
from deepalign.cli import build_parser, tables
from deepalign.cli import data as cli_data
from deepalign.cli import options as ex
from deepalign.training import TrainConfig

EXAMPLES = Path(__file__).parents[1] / "examples"
REAL_MOSI = Path(__file__).parents[2] / "shared" / "data" / "mosi_bclstm" / "mosi_bclstm.pkl"


def run_example(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def job_parser(name: str) -> argparse.ArgumentParser:
    """The subparser of the job ``name`` of the deepalign command."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def as_text(value) -> str:
    """How a user writes ``value`` after ``--set field=``."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else repr(value).strip("'")


def all_fields(dataset: str) -> dict:
    model, train = MSAConfig.preset(dataset), TrainConfig.preset(dataset)
    return {**dataclasses.asdict(model), **dataclasses.asdict(train)}


# ------------------------------------------------------------------ the library boundary


def test_import_deepalign_imports_neither_harness_nor_matplotlib():
    code = (
        "import sys, deepalign; "
        "bad = [m for m in sys.modules if m == 'matplotlib' or m.startswith('deepalign.cli')]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ typed fields


def test_every_field_of_both_configs_is_reachable_by_set():
    # Every MOSEI value written as text, applied on top of MOSI's presets, gives MOSEI's configs:
    # each field parses to its type and lands in the right dataclass.
    target = all_fields("mosei")
    assignments = dict(
        ex.parse_assignment(f"{name}={as_text(value)}")
        for name, value in target.items()
        if name != "dataset"
    )
    assert set(assignments) == set(target) - {"dataset"}
    assert set(ex.config_fields()) == set(target)
    model, train = ex.build_configs("mosei", [("--set", assignments)])
    assert model == MSAConfig.preset("mosei")
    assert train == TrainConfig.preset("mosei")
    # and on MOSI's presets: only the dataset field differs
    model, train = ex.build_configs("mosi", [("--set", assignments)])
    assert dataclasses.asdict(model) == dataclasses.asdict(MSAConfig.preset("mosei"))
    assert dataclasses.replace(train, dataset="mosei") == TrainConfig.preset("mosei")


def test_every_field_changes_through_set():
    # a value other than the preset's, for every field, reaches the built configuration
    changed = {
        "feature_dims": (7, 8, 9), "text_mode": "features", "text_pooling": "mean",
        "text_encoder": "some/dir", "finetune_text": False, "alignment": "T-V/T+A",
        "alignment_weight": 2.5, "align_on": "post", "align_dim": 4,
        "align_projection": "learned", "align_private": "negated", "align_estimator": "unbiased",
        "pin_memory": True, "cache_text_features": False, "H": 1.5,
    }  # fmt: skip
    base = all_fields("mosi")
    for name, value in base.items():
        if name in changed or name == "dataset":
            continue
        if isinstance(value, bool):
            changed[name] = not value
        elif isinstance(value, int):
            changed[name] = value + 1
        elif isinstance(value, float):
            changed[name] = value / 2 if value else 0.25
    assert set(changed) == set(base) - {"dataset"}
    items = dict(ex.parse_assignment(f"{k}={as_text(v)}") for k, v in changed.items())
    model, train = ex.build_configs("mosi", [("--set", items)])
    assert {**dataclasses.asdict(model), **dataclasses.asdict(train)} == {
        **changed,
        "dataset": "mosi",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("batch_size=32", ("batch_size", 32)),
        ("lr_text=2e-5", ("lr_text", 2e-5)),
        ("H=3", ("H", 3.0)),
        ("pin_memory=TRUE", ("pin_memory", True)),
        ("finetune_text=0", ("finetune_text", False)),
        ("finetune_text=no", ("finetune_text", False)),
        ("alignment=none", ("alignment", None)),
        ("alignment=T-V/T+A", ("alignment", "T-V/T+A")),
        ("align_dim=null", ("align_dim", None)),
        ("align_dim=12", ("align_dim", 12)),
        ("feature_dims=(768, 74, 35)", ("feature_dims", (768, 74, 35))),
        ("feature_dims=[1,2,3]", ("feature_dims", (1, 2, 3))),
        (" patience = 4", ("patience", 4)),
    ],
)
def test_parse_assignment_types(text, expected):
    assert ex.parse_assignment(text) == expected
    assert type(ex.parse_assignment(text)[1]) is type(expected[1])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lr_txt=1e-5", r"unknown field 'lr_txt'\. Did you mean lr_text\? Valid fields are "
                        r"MSAConfig: feature_dims, .*TrainConfig: dataset, batch_size"),
        ("batch_size=1.5", "batch_size: expected an int, got '1.5'"),
        ("batch_size=true", "batch_size: expected an int"),
        ("lr_text=fast", "lr_text: expected a number"),
        ("finetune_text=maybe", "finetune_text: expected true or false"),
        ("feature_dims=1,2", "feature_dims: expected 3 comma-separated values"),
        ("feature_dims=1,2,x", r"feature_dims\[2\]: expected an int"),
        ("align_dim=wide", "align_dim: expected an int or none"),
        ("batch_size", "expected field=value"),
    ],
)  # fmt: skip
def test_parse_assignment_errors(text, match):
    with pytest.raises(ex.ConfigError, match=match):
        ex.parse_assignment(text)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ({"align_on": "Encoder"}, r"--set: align_on: expected one of \['encoder', 'post'\]"),
        ({"patience": 0}, "--set: patience"),
        ({"fusion_modality_dropout": 1.5}, "--set: fusion_modality_dropout"),
        ({"alignment": "V-X"}, "--set: alignment"),
        ({"dataset": "sims"}, "dataset='sims' contradicts this run's dataset 'mosi'"),
    ],
)
def test_build_configs_validates_through_the_dataclasses(items, match):
    with pytest.raises(ex.ConfigError, match=match):
        ex.build_configs("mosi", [("--set", items)])


def test_build_configs_later_sources_win():
    model, train = ex.build_configs(
        "sims",
        [("a", {"batch_size": 4, "align_dim": 3}), ("b", {"batch_size": 6}), ("c", {})],
    )
    assert (train.batch_size, model.align_dim, train.H) == (6, 3, 1.0)


def test_config_file_reads_typed_values_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"feature_dims": [1, 2, 3], "lr_text": 1, "align_dim": None}))
    assert ex.read_config_file(path) == {"feature_dims": (1, 2, 3), "lr_text": 1.0,
                                         "align_dim": None}  # fmt: skip
    path.write_text(json.dumps({"batch_size": 8, "learning_rate_bert": 5e-5}))
    with pytest.raises(ex.ConfigError, match=r"unknown field 'learning_rate_bert'.*lr_text"):
        ex.read_config_file(path)
    path.write_text(json.dumps({"batch_size": "8"}))
    with pytest.raises(ex.ConfigError, match="batch_size: expected an int, got '8'"):
        ex.read_config_file(path)
    path.write_text(json.dumps({"pin_memory": 1}))
    with pytest.raises(ex.ConfigError, match="pin_memory: expected true or false"):
        ex.read_config_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ex.ConfigError, match="expected a JSON object, got list"):
        ex.read_config_file(path)
    path.write_text("{oops")
    with pytest.raises(ex.ConfigError, match="not valid JSON"):
        ex.read_config_file(path)


def test_choices_are_the_library_constants():
    actions = {a.dest: a for a in job_parser("reproduce")._actions}
    assert actions["text_mode"].choices is deepalign.model.TEXT_MODES
    assert actions["text_pooling"].choices is deepalign.model.TEXT_POOLING
    assert actions["align_on"].choices is deepalign.model.ALIGN_ON
    assert actions["private"].choices is deepalign.alignment.PRIVATE_MODES
    assert actions["estimator"].choices is deepalign.alignment.ESTIMATORS
    ablation = {a.dest: a for a in job_parser("ablation")._actions}
    assert ablation["dataset"].choices is deepalign.metrics.DATASETS
    assert ablation["specs"].choices == list(tables.TABLE_II)


def test_ablation_help_lists_only_options_it_uses(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_example("ablation_table2.py", ["--help"], monkeypatch)
    text = capsys.readouterr().out
    assert "--dataset" in text
    assert "--specs" in text
    assert "--alignment " not in text
    assert "--alignment\n" not in text
    assert "--baseline" not in text


def test_seed_ranges():
    assert ex.seed_list("1111..1114") == [1111, 1112, 1113, 1114]
    assert ex.seed_list("7") == [7]
    with pytest.raises(Exception, match="A <= B"):
        ex.seed_list("5..3")


# ------------------------------------------------------------------ end to end (tiny --quick)


def test_config_file_options_and_set_in_order_and_written_back(tmp_path, monkeypatch):
    config = tmp_path / "in.json"
    config.write_text(
        json.dumps({"patience": 2, "post_text_dim": 6, "fusion_modality_dropout": 0.1})
    )
    out = tmp_path / "out"
    argv = ["--quick", "--quiet", "--config", str(config), "--modality-dropout", "0.3"]
    argv += ["--set", "patience=5", "--set", "post_audio_dim=5", "--out", str(out)]
    run_example("reproduce_mosi.py", argv, monkeypatch)
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["patience"] == 5  # --set beats --config
    assert resolved["fusion_modality_dropout"] == 0.3  # an option beats --config
    assert resolved["post_text_dim"] == 6  # --config beats the preset
    assert (resolved["post_audio_dim"], resolved["batch_size"]) == (5, cli_data.QUICK_BATCH_SIZE)
    run = json.loads((out / "seed1111" / "deepalign_V-A" / "run.json").read_text())
    assert {**run["model"], **run["train"]} == resolved
    # the written config.json is a valid --config: the same command resolves to the same file
    again = tmp_path / "again"
    run_example(
        "reproduce_mosi.py",
        ["--quick", "--quiet", "--config", str(out / "config.json"), "--out", str(again)],
        monkeypatch,
    )
    assert json.loads((again / "config.json").read_text()) == resolved


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--set", "lr_txt=1"], "unknown field 'lr_txt'. Did you mean lr_text?"),
        (["--set", "align_on=Encoder"], "--set: align_on: expected one of"),
        (["--baseline", "--alignment", "none"], "--baseline: the main row has no alignment"),
        (["--n-train", "10", "--data", __file__], "no use with a file"),
    ],
)
def test_cli_errors_exit_2_with_the_reason(argv, match, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_example("reproduce_mosi.py", ["--quick", *argv], monkeypatch)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_ablation_rejects_alignment_fields(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_example("ablation_table2.py", ["--quick", "--set", "alignment=V-A"], monkeypatch)
    assert "alignment is set per row by ablation_table2 (use --specs)" in capsys.readouterr().err


def test_default_folders_differ_per_example_and_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [
        ("reproduce_mosi.py", ["--quick", "--quiet"]),
        ("reproduce_mosi.py", ["--quick", "--quiet", "--set", "patience=3"]),
        ("ablation_table2.py", ["--quick", "--quiet", "--specs", "V-A"]),
        ("reproduce_mosi.py", ["--quick", "--quiet"]),
    ]
    folders = []
    for name, argv in commands:
        run_example(name, argv, monkeypatch)
        line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Wrote ")][-1]
        folders.append(Path(line.rsplit(" to ", 1)[1]))
    assert folders[0] == folders[3]  # the same command, the same folder
    assert len(set(folders[:3])) == 3
    assert folders[0].parts[:2] == ("runs", "reproduce_mosi")
    assert folders[2].parts[:2] == ("runs", "ablation_table2")
    assert folders[0].name.startswith("mosi-synthetic-quick-")
    for folder in folders:
        assert (tmp_path / folder / "table.md").is_file()


def test_progress_by_default(tmp_path, monkeypatch, capsys):
    run_example("reproduce_mosi.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    err = capsys.readouterr().err
    assert "deepalign_V-A seed 1111: epoch 1/2" in err
    assert "epoch 2/2" in err
    assert f"output in {tmp_path}" in err


def test_resume_reads_finished_runs_and_continues_unfinished_ones(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--baseline", "--seeds", "1", "2", "--out", str(tmp_path)]
    argv.append("--keep-checkpoints")  # the simulated interruption below needs a checkpoint
    run_example("reproduce_mosi.py", argv, monkeypatch)
    first = json.loads((tmp_path / "results.json").read_text())["runs"]
    capsys.readouterr()
    # "interrupt" one run after its last epoch: no results.json, its checkpoint remains
    (tmp_path / "seed2" / "Self_MM_deepalign" / "results.json").unlink()
    run_example("reproduce_mosi.py", [*argv, "--resume"], monkeypatch)
    err = capsys.readouterr().err
    assert err.count("finished, read back") == 3
    assert "[Self_MM (deepalign)] seed 2 (2/2): training" in err
    assert "epoch 1/2" not in err  # the unfinished run continued after its last epoch
    again = json.loads((tmp_path / "results.json").read_text())["runs"]
    for a, b in zip(first, again, strict=True):
        assert a["test"] == b["test"]
        assert a["curves"] == b["curves"]


def test_resume_with_other_options_is_a_clean_error(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--quiet", "--seeds", "1", "--out", str(tmp_path), "--keep-checkpoints"]
    run_example("reproduce_mosi.py", argv, monkeypatch)
    (tmp_path / "seed1" / "deepalign_V-A" / "results.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_example("reproduce_mosi.py", [*argv, "--resume", "--set", "patience=3"], monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.patience: checkpoint 8, now 3" in err
    assert "--resume needs the options" in err


def test_finished_runs_drop_their_checkpoints_and_resume_with_other_options_is_refused(
    tmp_path, monkeypatch, capsys
):
    argv = ["--quick", "--quiet", "--seeds", "1", "--out", str(tmp_path)]
    run_example("reproduce_mosi.py", argv, monkeypatch)
    run_dir = tmp_path / "seed1" / "deepalign_V-A"
    assert (run_dir / "results.json").is_file()
    assert not list(run_dir.glob("checkpoint*.pt"))  # results.json is all --resume needs
    with pytest.raises(SystemExit) as exit_info:
        run_example("reproduce_mosi.py", [*argv, "--resume", "--set", "patience=3"], monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.patience: finished run 8, now 3" in err


@pytest.mark.skipif(not REAL_MOSI.is_file(), reason=f"real data absent: {REAL_MOSI}")
def test_quick_with_a_file_smoke_tests_that_file(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--quiet", "--data", str(REAL_MOSI), "--text-mode", "features"]
    with_file = [*argv, "--out", str(tmp_path)]
    run_example("reproduce_mosi.py", with_file, monkeypatch)
    assert "SYNTHETIC" not in capsys.readouterr().err
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["source"] == REAL_MOSI.name  # no machine path in a record
    assert record["data"]["quick_head"] == cli_data.QUICK_BATCHES * cli_data.QUICK_BATCH_SIZE
    assert record["data"]["size"] == REAL_MOSI.stat().st_size
    assert len(record["data"]["sha256_first_mib"]) == 64
    assert record["config"]["feature_dims"] == [100, 73, 100]  # the file's widths
