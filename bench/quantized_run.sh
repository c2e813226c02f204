#!/usr/bin/env bash
# One device call: carries bitsandbytes as a wheel in .whl/ (the GPU image has none).
# Usage on the device machine, repo root: bash bench/quantized_run.sh [--steps N]
# The results file lands in bench/results/ and is copied to $OUT/results/ (what a device call brings back).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/bitsandbytes-*.whl || exit 1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/results"
STAMP=$(mktemp); trap 'rm -f "$STAMP"' EXIT
python3 bench/quantized.py --command "bash bench/quantized_run.sh $*" "$@" 2>&1 | grep -v Warning | tee "$OUT/quantized.md"
find bench/results -name '*.json' -newer "$STAMP" -exec cp {} "$OUT/results/" \;
