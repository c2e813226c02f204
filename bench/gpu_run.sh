#!/usr/bin/env bash
# One device call: environment, per-layer check + timing, GPU train/inference table, CPU table, build table.
# Usage (on the device machine, repo root): bash bench/gpu_run.sh [train_step extra args...]
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv
if [ "${KERNELS:-1}" = 1 ]; then python3 bench/kernels.py ${KARGS:-} 2>&1 | tee "$OUT/kernels.md"; fi
if [ "${GPU:-1}" = 1 ]; then python3 bench/train_step.py --case gpu --out "$OUT/train_gpu.md" "$@" 2>&1 | grep -v Warning | tee "$OUT/train_gpu.log"; fi
if [ "${CPU:-1}" = 1 ]; then python3 bench/train_step.py --case cpu --threads ${CPU_THREADS:-16} --out "$OUT/train_cpu.md" ${CPU_ARGS:-} 2>&1 | grep -v Warning | tee "$OUT/train_cpu.log"; fi
if [ "${BUILD:-1}" = 1 ]; then python3 bench/build.py 2>&1 | grep -v Warning | tee "$OUT/build.md"; fi
