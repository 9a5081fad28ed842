#!/usr/bin/env bash
# The test command: lint, format check, the package (sdist and wheel built, checked, installed
# into a clean venv: scripts/package_check.sh, ~30 s), fast tests (with doctests), docs with
# warnings as errors. pytest's summary stays the last line a run prints.
# `bash scripts/test.sh --slow` runs the slow tests instead (real data, training runs, compile).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "${1:-}" = "--slow" ]; then
    exec python -m pytest -m slow -q
fi
ruff check .
ruff format --check .
bash scripts/package_check.sh
python -m pytest -m "not slow" -q -p no:cacheprovider
python -m sphinx -W --keep-going -q -b html docs docs/_build/html
python -m sphinx -W --keep-going -q -b doctest docs docs/_build/doctest
