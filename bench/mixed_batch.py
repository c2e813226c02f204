"""Throughput of mixed-adapter batches against serving one adapter at a time.

A LLaMA-shaped model (random weights) with ``--adapters`` FourierFT adapters on q_proj/v_proj. One batch of ``--rows``
rows is split round-robin over K distinct adapters (K = 1, 8, 64 by default) and run two ways, forward only:

* ``mixed``: one call, ``model(input_ids, adapter_names=[...])`` (base layers once, each adapter on its own rows);
* ``one-at-a-time``: K calls, ``set_adapter(name)`` then the rows of that adapter.

Prints rows/s (median of ``--repeats``) as a Markdown table, with the machine. Run:
``python bench/mixed_batch.py [--device cuda] [--hidden 512] [--rows 64] [--seq 64]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fourierft  # noqa: E402


def build(args) -> fourierft.PeftModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=max(128, args.seq))
    model = LlamaForCausalLM(cfg).to(args.device).eval()
    config = lambda i: fourierft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=args.n,
                                                 random_loc_seed=i)
    peft_model = fourierft.get_peft_model(model, config(0), adapter_name="a0")
    for i in range(1, max(args.counts)):
        peft_model.add_adapter(f"a{i}", config(i))
    return peft_model.eval()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()

    peft_model = build(args)
    ids = torch.randint(0, 1000, (args.rows, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; torch {torch.__version__}; LLaMA-shaped hidden {args.hidden}, {args.layers} layers, "
          f"q/v adapters n={args.n}; batch {args.rows} x {args.seq} tokens; forward, median of {args.repeats}\n")
    print("| distinct adapters | mixed batch rows/s | one adapter at a time rows/s | speed-up |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for k in args.counts:
            names = [f"a{i % k}" for i in range(args.rows)]
            groups = {f"a{j}": [i for i, n in enumerate(names) if n == f"a{j}"] for j in range(k)}
            mixed = timed(lambda: peft_model(input_ids=ids, adapter_names=names), args.repeats, args.device)

            def one_at_a_time():
                for name, idx in groups.items():
                    peft_model.set_adapter(name)
                    peft_model(input_ids=ids[idx])

            serial = timed(one_at_a_time, args.repeats, args.device)
            print(f"| {k} | {args.rows / mixed:.1f} | {args.rows / serial:.1f} | {serial / mixed:.2f}x |")


if __name__ == "__main__":
    main()
