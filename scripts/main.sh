#!/usr/bin/env bash
# The main job: reproduce the paper's MOSI table on the embedded default (synthetic data unless
# --data points at an MMSA pickle). Extra arguments go to examples/reproduce_mosi.py.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python examples/reproduce_mosi.py "$@"
