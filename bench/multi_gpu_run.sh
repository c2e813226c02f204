#!/usr/bin/env bash
# One device call on 2 GPUs: 1-GPU baselines, DDP and FSDP2 on 2 GPUs, the comparison table, one results file.
# Usage on the device machine, repo root: [B=16] bash bench/multi_gpu_run.sh
# The results file lands in bench/results/ and is copied to $OUT/results/ (what a device call brings back).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/results"
RUNS=$(mktemp -d)  # per-run records hold a full dW each: kept out of $OUT
STAMP=$(mktemp); trap 'rm -rf "$RUNS" "$STAMP"' EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
B=${B:-16}  # global batch of the 2-GPU runs; the 1-GPU runs take B and B/2 (same per-GPU batch)
python3 bench/distributed.py single --global-batch $B --out "$RUNS/single.pt" 2>&1 | grep -v Warning | tail -3
python3 bench/distributed.py single --global-batch $((B / 2)) --out "$RUNS/single_half.pt" 2>&1 | grep -v Warning | tail -3
torchrun --nproc_per_node 2 bench/distributed.py ddp --global-batch $B --out "$RUNS/ddp.pt" 2>&1 | grep -v Warning | tail -3
torchrun --nproc_per_node 2 bench/distributed.py fsdp --global-batch $B --out "$RUNS/fsdp.pt" 2>&1 | grep -v Warning | tail -3
python3 bench/distributed.py compare "$RUNS/single.pt" "$RUNS/single_half.pt" "$RUNS/ddp.pt" "$RUNS/fsdp.pt" \
  --command "B=$B bash bench/multi_gpu_run.sh" | tee "$OUT/distributed.md"
find bench/results -name '*.json' -newer "$STAMP" -exec cp {} "$OUT/results/" \;
