#!/usr/bin/env bash
# One device call: environment, per-layer check + timing, GPU train/inference table, CPU table, build table.
# Usage (on the device machine, repo root): [KERNELS=0] [GPU=0] [CPU=0] [BUILD=0] [KARGS=...] [CPU_ARGS=...]
#   bash bench/gpu_run.sh [train_step extra args...]
# Each benchmark writes its results file into bench/results/; those are copied to $OUT/results/ (what a device call
# brings back), the printed output to $OUT/*.log.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/results"
STAMP=$(mktemp); trap 'rm -f "$STAMP"' EXIT
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv
if [ "${KERNELS:-1}" = 1 ]; then python3 bench/kernels.py ${KARGS:-} 2>&1 | tee "$OUT/kernels.log"; fi
if [ "${GPU:-1}" = 1 ]; then python3 bench/train_step.py --case gpu "$@" 2>&1 | grep -v Warning | tee "$OUT/train_gpu.log"; fi
if [ "${CPU:-1}" = 1 ]; then python3 bench/train_step.py --case cpu --threads ${CPU_THREADS:-16} ${CPU_ARGS:-} 2>&1 | grep -v Warning | tee "$OUT/train_cpu.log"; fi
if [ "${BUILD:-1}" = 1 ]; then python3 bench/build.py 2>&1 | grep -v Warning | tee "$OUT/build.log"; fi
find bench/results -name '*.json' -newer "$STAMP" -exec cp {} "$OUT/results/" \;
