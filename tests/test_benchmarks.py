"""Smoke tests of benchmarks/: every script's --quick run writes the documented JSON and plot.

No timing is asserted (the machines that run the suite are shared and noisy): only that each
script runs, and that its report has the common structure and its own result keys.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TIMING_KEYS = {"median_s", "iqr_s", "samples", "runs_per_sample"}
ENVIRONMENT_KEYS = {"platform", "cpu", "torch", "num_threads", "device", "device_name", "date"}

# script name -> (the variants every result times, keys of each result, whether memory is measured)
EXPECTED = {
    "loss": (
        ("deepalign", "onepass", "torch_cov", "floor"),
        {"n", "d", "path", "time_vs_onepass", "time_vs_floor", "memory_vs_onepass"},
        True,
    ),
    "wide": (("gram", "dxd"), {"d", "dxd_over_gram_time", "dxd_over_gram_memory"}, True),
    "spec": (("spec", "independent"), {"n", "d", "spec_over_independent"}, True),
    "ulgm": (("incremental", "rescan"), {"num_samples"}, False),
    "overhead": (
        ("math", "ctx_style", "setup_context", "kernel", "unvalidated", "loss"),
        {"n", "d"},
        False,
    ),
    "train_step": (
        ("bare", "ulgm", "ulgm_align", "extras"),
        {"batch_size", "overhead_percent"},
        True,
    ),
}


def load_script(name: str):
    return load_script_named(f"bench_{name}")


def load_script_named(stem: str):
    return load_script_path(BENCHMARKS / f"{stem}.py")


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    """The scripts import their sibling ``common``; restore the thread count they change."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    threads = __import__("torch").get_num_threads()
    yield
    __import__("torch").set_num_threads(threads)
    sys.modules.pop("common", None)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_quick_run_writes_report(name, tmp_path):
    out, plot = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    returned = load_script(name).main(["--quick", "--out", str(out), "--plot", str(plot)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert plot.stat().st_size > 0
    assert report["benchmark"] == name
    assert report["quick"] is True
    assert set(report["environment"]) >= ENVIRONMENT_KEYS
    assert report["environment"]["num_threads"] == 1
    variants, result_keys, memory = EXPECTED[name]
    assert report["results"]
    for result in report["results"]:
        assert result_keys <= set(result)
        for variant in variants:
            assert set(result[variant]) >= TIMING_KEYS
            assert result[variant]["median_s"] > 0
            assert result[variant]["iqr_s"] <= result[variant]["median_s"] * 10
            assert ("peak_bytes" in result[variant]) == memory
    summary = report["summary"]
    assert {"title", "columns", "rows", "note"} <= set(summary)
    assert len(summary["rows"]) == len(report["results"])
    assert all(len(row) == len(summary["columns"]) for row in summary["rows"])


def test_ulgm_quick_sizes(tmp_path):
    report = load_script("ulgm").main(["--quick"])
    assert [r["num_samples"] for r in report["results"]] == [1000, 16326]
    assert {"batch_size", "dims", "incremental_largest_over_smallest"} <= set(report["settings"])


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("loss").main(["--help"])
    assert exit_info.value.code == 0
    assert "--threads" in capsys.readouterr().out


def test_run_all_renders_tables(tmp_path, monkeypatch):
    run_all = load_script_path(BENCHMARKS / "run_all.py")
    report = load_script("spec").main(["--quick"])
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmarks:start -->\nold\n<!-- benchmarks:end -->\nend\n")
    page = tmp_path / "benchmarks.rst"
    page.write_text("Title\n=====\n\n.. benchmarks:start\n\nold\n\n.. benchmarks:end\n")
    monkeypatch.setattr(run_all, "README", readme)
    monkeypatch.setattr(run_all, "DOCS_PAGE", page)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    for _ in range(2):  # regenerating is idempotent
        run_all.render([report])
    markdown, rst = readme.read_text(), page.read_text()
    assert "old" not in markdown
    assert "old" not in rst
    assert markdown.count(report["summary"]["title"]) == 1
    assert markdown.startswith("intro\n")
    assert markdown.endswith("end\n")
    assert ".. list-table::" in rst
    assert "PyTorch" in rst


def load_script_path(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_versions_ratios_noise_and_verdicts():
    compare = load_script_named("compare_versions").compare

    def report(rows):
        return {"results": rows}

    def timing(median, iqr):
        return {"median_s": median, "iqr_s": iqr}

    baseline = {
        "loss": report([{"n": 32, "d": 16, "deepalign": timing(2.0, 0.2)}]),
        "wide": report([{"d": 256, "gram": timing(1.0, 0.0), "dxd": timing(4.0, 0.4)}]),
        "spec": report([{"n": 8, "d": 8, "spec": timing(1.0, 0.1)}]),  # no current row
    }
    current = {
        "loss": report([{"n": 32, "d": 16, "deepalign": timing(3.0, 0.3)}]),
        "wide": report(
            [
                {"d": 256, "gram": timing(0.5, 0.0), "dxd": timing(4.1, 0.41)},
                {"d": 1024, "gram": timing(9.0, 0.0)},  # no baseline case
            ]
        ),
    }
    rows = compare(baseline, current)
    got = [(r["benchmark"], r["case"], r["variant"], r["verdict"]) for r in rows]
    assert got == [
        ("loss", "32×16", "deepalign", "slower"),
        ("wide", "N=64, d=256", "gram", "faster"),
        ("wide", "N=64, d=256", "dxd", "same"),
    ]
    # 3.0 / 2.0, with relative IQRs 0.1 and 0.1 in quadrature
    assert rows[0]["ratio"] == pytest.approx(1.5)
    assert rows[0]["noise"] == pytest.approx(0.1 * 2**0.5)
    assert rows[2]["ratio"] == pytest.approx(4.1 / 4.0)
    table = load_script_named("compare_versions").summary(rows, "abc1234")
    assert table["rows"][0] == [
        "loss",
        "deepalign",
        "32×16",
        "2000000 µs",
        "3000000 µs",
        "1.50 ± 0.14 (slower)",
    ]


def test_gpu_check_cpu_smoke_writes_its_report(tmp_path, capsys):
    """scripts/gpu_check.sh's benchmark part on a CPU: smoke sizes, the table, the JSON."""
    sys.modules.pop("bench_loss", None)
    sys.modules.pop("bench_train_step", None)
    out = tmp_path / "gpu_check.json"
    returned = load_script_named("gpu_check").main(["--device", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["mode"] == "cpu-smoke"
    assert [(r["n"], r["d"], r["path"]) for r in report["loss"]] == [
        (64, 32, "dxd"),
        (8, 128, "gram"),
    ]
    for result in report["loss"]:
        for variant in ("deepalign", "unbiased", "unbiased_indep", "floor"):
            assert result[variant]["median_s"] > 0
    assert report["train_step"]["batch_size"] == 4
    printed = capsys.readouterr().out
    assert "CPU smoke" in printed
    assert "unbiased ÷ plug-in" in printed
    assert "train step, batch 4" in printed
