#!/usr/bin/env bash
# One-shot device check: build skipkern (CUDA extension for sm_90a included), run the GPU tests, benchmark
# the paper's shapes, write one JSON under bench/results/ (and $OUT when set) and print the table.
#   bash bench/gpu_check.sh             # on a CUDA machine; no network needed
#   bash bench/gpu_check.sh --dry-run   # anywhere: GPU parts skipped, benchmarks as CPU smoke runs
# Options pass through to bench/gpu_check.py (--parts, --budget, --json).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python3 bench/gpu_check.py "$@"
