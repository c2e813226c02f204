"""Data-parallel FourierFT on GPUs through torch.distributed's own engines (DDP, FSDP2): same loss as one GPU.

    python bench/distributed.py single --out $TMP/single.pt                 # 1 GPU, the whole global batch
    torchrun --nproc_per_node 2 bench/distributed.py ddp --out $TMP/ddp.pt  # 2 GPUs, half the batch each
    torchrun --nproc_per_node 2 bench/distributed.py fsdp --out $TMP/fsdp.pt
    python bench/distributed.py compare $TMP/single.pt $TMP/ddp.pt $TMP/fsdp.pt

The model is LLaMA-shaped (bf16, hidden 2048, intermediate 5504, 8 layers), all linear layers adapted (n = 1000,
scaling 300), trained on Zipf-distributed tokens (something to learn) with AdamW. Each run saves (torch.save) its
per-step global loss, the median step time (after warm-up) and tokens/s, peak memory and the trained dW of one layer;
``compare`` prints the table against the first run and writes its rows through bench/results.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import fourierft

try:
    from bench.results import write_results
except ModuleNotFoundError:  # run as ``python bench/distributed.py``: this folder is on sys.path, the repo root is not
    from results import write_results

GLOBAL_BATCH, SEQ, STEPS, WARMUP = 8, 1024, 30, 5


def build(device: torch.device) -> torch.nn.Module:
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
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    owner = model.base_model.model.model.layers[3]
    if mode == "fsdp":
        owner.unshard()  # a collective: every rank gathers the layer's full parameters, so PEFT's API reads them
    with torch.no_grad():
        delta = probe.get_delta_weight("default").float().cpu()
    if mode == "fsdp":
        owner.reshard()
    if rank == 0:
        record = {"mode": mode, "gpus": world, "card": torch.cuda.get_device_name(device), "losses": losses,
                  "global_batch": batch, "step_ms": 1000 * step_s, "tokens_per_s": batch * SEQ / step_s,
                  "peak_gib_per_gpu": peak_gib, "delta": delta}
        torch.save(record, out)
    if distributed:
        dist.destroy_process_group()


def compare(paths: list[str], command: str | None) -> None:
    """Print the runs against the first (same global batch: loss and dW differences) and record them."""
    runs = [torch.load(p, weights_only=True) for p in paths]
    ref = runs[0]
    print(f"card: {ref['card']}; sequences of {SEQ} tokens, {STEPS} steps, median step after {WARMUP}; loss and dW")
    print("compared with the first run when the global batch is the same")
    print("| run | GPUs | global batch | step ms | tokens/s | peak GiB/GPU | max rel. loss diff | dW rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for r in runs:
        same = r["global_batch"] == ref["global_batch"]
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"])) if same else None
        ddiff = ((r["delta"] - ref["delta"]).norm() / ref["delta"].norm()).item() if same else None
        rows.append({"run": r["mode"], "gpus": r["gpus"], "global_batch": r["global_batch"],
                     "step_ms": round(r["step_ms"], 1), "tokens_per_s": round(r["tokens_per_s"]),
                     "peak_gib_per_gpu": round(r["peak_gib_per_gpu"], 2),
                     "max_rel_loss_diff_vs_1gpu": float(f"{diff:.3g}") if same else None,
                     "dw_rel_diff": float(f"{ddiff:.3g}") if same else None,
                     "loss_every_5th_step": " ".join(f"{x:.3f}" for x in r["losses"][::5])})
        print(f"| {r['mode']} | {r['gpus']} | {r['global_batch']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['peak_gib_per_gpu']:.2f} | {f'{diff:.2e}' if same else '-'} | {f'{ddiff:.2e}' if same else '-'} |")
    for row in rows:
        print(f"losses ({row['run']}, batch {row['global_batch']}):", row["loss_every_5th_step"])
    note = (f"LLaMA-shaped bf16 (hidden 2048, intermediate 5504, 8 layers), all linear layers adapted, n=1000, "
            f"scaling 300, AdamW, {STEPS} steps of {SEQ}-token sequences, median step after {WARMUP}; loss and dW "
            "compared with the first run when the global batch is the same.")
    print(f"results: {write_results('distributed', rows, command=command, note=note)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["single", "ddp", "fsdp", "compare"])
    parser.add_argument("paths", nargs="*", help="compare: the runs' saved files, the reference first")
    parser.add_argument("--out", help="single/ddp/fsdp: where the run is saved (torch.save)")
    parser.add_argument("--global-batch", type=int, default=GLOBAL_BATCH,
                        help="sequences per step, all GPUs (default: %(default)s)")
    parser.add_argument("--command", help="compare: the command line recorded in the results file "
                                          "(default: this one); bench/multi_gpu_run.sh passes its own")
    args = parser.parse_args()
    if args.mode == "compare":
        compare(args.paths, args.command)
    else:
        run(args.mode, args.out, args.global_batch)
