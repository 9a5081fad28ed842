#!/usr/bin/env bash
# The test command: lint, format check, fast tests (with doctests), docs with warnings as errors.
# `bash scripts/test.sh --slow` runs the slow tests instead (real data, training runs, compile).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "${1:-}" = "--slow" ]; then
    exec python -m pytest -m slow -q
fi
ruff check .
ruff format --check .
python -m pytest -m "not slow" -q -p no:cacheprovider
python -m sphinx -W --keep-going -q -b html docs docs/_build/html
python -m sphinx -W --keep-going -q -b doctest docs docs/_build/doctest
