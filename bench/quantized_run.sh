#!/usr/bin/env bash
# One device call (issue 7): carries bitsandbytes as a wheel in .whl/ (the GPU image has none).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/bitsandbytes-*.whl || exit 1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 bench/quantized.py "$@" 2>&1 | grep -v Warning | tee "$OUT/quantized.md"
