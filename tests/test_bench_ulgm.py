"""Smoke test of benchmarks/bench_ulgm.py: --quick runs and writes the documented JSON."""

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ulgm.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_ulgm", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "ulgm.json"
    load_benchmark().main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert {"machine", "torch_version", "num_threads", "batch_size", "dims", "results"} <= set(
        report
    )
    assert [r["num_samples"] for r in report["results"]] == [1000, 16326]
    for result in report["results"]:
        for kind in ("incremental", "rescan"):
            assert result[kind]["median_s"] > 0
            assert result[kind]["iqr_s"] >= 0
