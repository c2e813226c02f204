"""Data-parallel FourierFT on GPUs through torch.distributed's own engines (DDP, FSDP2): same loss as one GPU.

    python bench/distributed.py single --out $OUT/single.json                 # 1 GPU, the whole global batch
    torchrun --nproc_per_node 2 bench/distributed.py ddp --out $OUT/ddp.json  # 2 GPUs, half the batch each
    torchrun --nproc_per_node 2 bench/distributed.py fsdp --out $OUT/fsdp.json
    python bench/distributed.py compare $OUT/single.json $OUT/ddp.json $OUT/fsdp.json

The model is LLaMA-shaped (bf16, hidden 2048, intermediate 5504, 8 layers), all linear layers adapted (n = 1000,
scaling 300), trained on Zipf-distributed tokens (something to learn) with AdamW. Each run records its per-step
global loss, the median step time (after warm-up) and tokens/s, peak memory and the trained dW of one layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import fourierft

GLOBAL_BATCH, SEQ, STEPS, WARMUP = 8, 1024, 30, 5


def build(device: torch.device) -> fourierft.PeftModel:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=8, num_attention_heads=16,
                         num_key_value_heads=16, vocab_size=32000, max_position_embeddings=SEQ)
    base = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    adapter = fourierft.FourierFTConfig(n_frequency=1000, scaling=300.0, target_modules="all-linear", init_weights=True)
    return fourierft.get_peft_model(base, adapter)


def data(step: int, batch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    probs = 1.0 / torch.arange(1, 32001, dtype=torch.float64) ** 1.1
    return torch.multinomial(probs, batch * SEQ, replacement=True, generator=g).view(batch, SEQ).to(device)


def run(mode: str, out: str, batch: int) -> None:
    distributed = mode in ("ddp", "fsdp")
    if distributed:
        dist.init_process_group("nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    model = build(device)
    probe = model.base_model.model.model.layers[3].self_attn.q_proj
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        wrapped = fully_shard(model)
    else:
        wrapped = model
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    losses, times = [], []
    torch.cuda.reset_peak_memory_stats()
    for step in range(STEPS):
        ids = data(step, batch, device).chunk(world)[rank]
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        global_loss = loss.detach().float()
        if distributed:
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(global_loss.item())
    step_s = statistics.median(times[WARMUP:])
    spectrum = probe.fourierft_adapters["default"].spectrum
    spectrum = spectrum.full_tensor() if hasattr(spectrum, "full_tensor") else spectrum
    delta = fourierft.delta_weight(spectrum.detach().float(), probe.fourierft_adapters["default"].rows,
                                   probe.fourierft_adapters["default"].cols, probe.out_features, probe.in_features,
                                   300.0)
    if rank == 0:
        record = {"mode": mode, "gpus": world, "card": torch.cuda.get_device_name(device), "losses": losses,
                  "global_batch": batch, "step_ms": 1000 * step_s, "tokens_per_s": batch * SEQ / step_s,
                  "peak_gib_per_gpu": torch.cuda.max_memory_allocated(device) / 2**30, "delta": delta.cpu().tolist()}
        with open(out, "w") as fh:
            json.dump(record, fh)
    if distributed:
        dist.destroy_process_group()


def compare(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    ref = runs[0]
    ref_delta = torch.tensor(ref["delta"])
    print(f"card: {ref['card']}; sequences of {SEQ} tokens, {STEPS} steps, median step after {WARMUP}; loss and dW")
    print(f"compared with the first run when the global batch is the same")
    print("| run | GPUs | global batch | step ms | tokens/s | peak GiB/GPU | max rel. loss diff | dW rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        batch = r.get("global_batch", GLOBAL_BATCH)
        if batch != ref.get("global_batch", GLOBAL_BATCH):
            print(f"| {r['mode']} | {r['gpus']} | {batch} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['peak_gib_per_gpu']:.2f} | - | - |")
            continue
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"]))
        ddiff = ((torch.tensor(r["delta"]) - ref_delta).norm() / ref_delta.norm()).item()
        print(f"| {r['mode']} | {r['gpus']} | {batch} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['peak_gib_per_gpu']:.2f} | {diff:.2e} | {ddiff:.2e} |")
    print("losses (1 GPU):", " ".join(f"{x:.3f}" for x in ref["losses"][::5]))
    for r in runs[1:]:
        print(f"losses ({r['mode']}, batch {r.get('global_batch', GLOBAL_BATCH)}):", " ".join(f"{x:.3f}" for x in r["losses"][::5]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "ddp", "fsdp", "compare"])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--out")
    parser.add_argument("--global-batch", type=int, default=GLOBAL_BATCH, help="sequences per step, all GPUs")
    args = parser.parse_args()
    compare(args.paths) if args.mode == "compare" else run(args.mode, args.out, args.global_batch)
