#!/usr/bin/env bash
# The GPU check (issue 21), one script under 8 minutes on one GPU:
#   1. the test suite's CUDA cases (`pytest -m cuda`: the device-parametrised core loss tests,
#      the CUDA tests of the model and functional modules, and a Trainer step of MultiTaskMSA
#      with validation off under torch.cuda.set_sync_debug_mode("error"));
#   2. benchmarks/gpu_check.py: the loss at 4096x1024 and 64x8192 against the cuBLAS GEMM floor
#      measured in the same run, the unbiased estimator, a MultiTaskMSA training step; JSON to
#      benchmarks/results/gpu_check.json and a table on stdout.
# Without CUDA the CUDA cases skip and the benchmark runs a CPU smoke at tiny sizes (writing no
# JSON), so that the script is known to work before a GPU is lent.
# It uses the Python and torch already installed ($PYTHON, default python3; on a GPU machine
# its CUDA build), not scripts/env.sh, whose venv pins the CPU wheel. Extra arguments go to
# gpu_check.py (e.g. --out PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
"$python" -m pytest -q -p no:cacheprovider -m cuda tests
"$python" benchmarks/gpu_check.py "$@"
