#!/usr/bin/env bash
# One device call on 2 GPUs (issue 6): 1-GPU baseline, DDP and FSDP2 on 2 GPUs, the comparison table.
# Usage on the device machine, repo root: bash bench/multi_gpu_run.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
B=${B:-16}  # global batch of the 2-GPU runs; the 1-GPU runs take B and B/2 (same per-GPU batch)
python3 bench/distributed.py single --global-batch $B --out "$OUT/single.json" 2>&1 | grep -v Warning | tail -3
python3 bench/distributed.py single --global-batch $((B / 2)) --out "$OUT/single_half.json" 2>&1 | grep -v Warning | tail -3
torchrun --nproc_per_node 2 bench/distributed.py ddp --global-batch $B --out "$OUT/ddp.json" 2>&1 | grep -v Warning | tail -3
torchrun --nproc_per_node 2 bench/distributed.py fsdp --global-batch $B --out "$OUT/fsdp.json" 2>&1 | grep -v Warning | tail -3
python3 bench/distributed.py compare "$OUT/single.json" "$OUT/single_half.json" "$OUT/ddp.json" "$OUT/fsdp.json" | tee "$OUT/distributed.md"
