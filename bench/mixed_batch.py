"""Throughput of mixed-adapter batches: fourierft against PEFT LoRA's own mixed batch and the frozen model.

``--level model`` (the default): a LLaMA-shaped model (random weights, bf16 on CUDA) with K adapters on
q_proj/v_proj, fourierft's and, beside it, PEFT LoRA r=16's on an identical copy. One batch of ``--rows`` rows is
split round-robin over K distinct adapters (``--counts``, default 1 8 64) and run, forward only:

* ``base``           the frozen model (``disable_adapter()``), the floor;
* ``ours-mixed``     ``model(input_ids, adapter_names=[...])``: base layers once, adapters that share their entries
                     (``--shared``: one ``random_loc_seed``, PEFT's default) in one call;
* ``ours-serial``    K calls, ``set_adapter(name)`` then that adapter's rows (prefill only);
* ``peft-lora-mixed`` PEFT LoRA's ``model(input_ids, adapter_names=[...])``.

The variants are timed in interleaved rounds (median of ``--repeats``). ``--generate T`` times
``generate(..., adapter_names=[...], max_new_tokens=T)`` instead (greedy, KV cache: one
prefill of ``--seq`` tokens, then T - 1 one-token steps), the way a server decodes a mixed batch, and beside it
``max_new_tokens=1`` (the prefill alone), so that each row also gives the time of one decoding step,
``(t(T) - t(1)) / (T - 1)``.

``--level layer`` times one adapted layer instead (no model code): a frozen ``d x d`` linear plus K adapters that
share their entries (one seed), on a batch of ``--rows`` rows x ``--seq`` tokens (``--seq 1``: one decoding step):

* ``base``           the frozen layer alone;
* ``ours-mixed``     base + :func:`fourierft.kernels.spectral_linear_mixed` (one call for all K adapters);
* ``ours-grouped``   base + one :func:`fourierft.kernels.spectral_linear` per adapter on its rows (scatter back);
* ``peft-lora-mixed`` PEFT LoRA r=16 with K adapters, ``adapter_names=`` (PEFT's own mixed-batch forward).

Prints a Markdown table with the machine; rows go to ``bench/results/mixed_batch-<UTC>.json``
(``bench/results.py``). Run: ``python bench/mixed_batch.py [--device cuda] [--hidden 4096] [--shared]
[--rows 64] [--seq 256] [--counts 1 32] [--generate 16]``.
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
from bench.results import write_results  # noqa: E402


def build(args, method: str):
    """The LLaMA-shaped model (seed 0, so every call builds the same weights) with ``max(counts)`` adapters
    ``a0, a1, ...`` on q_proj/v_proj: fourierft's (``method="fourierft"``) or PEFT LoRA r=16's (``"lora"``)."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=max(128, args.seq + args.generate), pad_token_id=0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = LlamaForCausalLM(cfg).to(args.device, dtype).eval()
    targets = ["q_proj", "v_proj"]
    if method == "fourierft":
        config = lambda i: fourierft.FourierFTConfig(target_modules=targets, n_frequency=args.n, task_type="CAUSAL_LM",
                                                     random_loc_seed=777 if args.shared else i)
        wrap = fourierft.get_peft_model
    else:  # LoRA's B starts at zero; init_lora_weights=False makes every adapter's output differ, as after training
        config = lambda i: peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM",
                                           init_lora_weights=False)
        wrap = peft.get_peft_model
    peft_model = wrap(model, config(0), adapter_name="a0")
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
    """The median seconds of ``fn()`` over ``repeats`` calls, after a warm-up call."""
    return interleaved({"fn": fn}, repeats, device)["fn"]


def interleaved(variants: dict, repeats: int, device: str) -> dict:
    """The median seconds of each variant over ``repeats`` rounds, each round timing every variant once (after
    one warm-up call each), round ``r`` starting at the ``r``-th variant (no variant always follows the same one)."""
    for fn in variants.values():
        fn()
    times = {key: [] for key in variants}
    order = list(variants.items())
    for r in range(repeats):
        for key, fn in order[r % len(order):] + order[:r % len(order)]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def layer_level(args) -> list[dict]:
    """Per-layer timings of a mixed batch (see the module docstring); returns the result rows."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from torch import nn

    from bench.common import entries
    from fourierft.kernels import spectral_linear, spectral_linear_mixed

    dev, dt, d = args.device, (torch.bfloat16 if args.device == "cuda" else torch.float32), args.hidden
    torch.manual_seed(0)
    base = nn.Linear(d, d, bias=False).to(dev, dt).requires_grad_(False)
    rows, cols = (t.to(dev) for t in entries(d, d, args.n))  # shared: every adapter from one seed
    kmax = max(args.counts)
    spectra = torch.randn(kmax, args.n, device=dev)
    scalings = torch.full((kmax,), 300.0, device=dev)
    lora = get_peft_model(nn.Sequential(nn.Linear(d, d, bias=False)).to(dev, dt),
                          LoraConfig(r=16, lora_alpha=32, target_modules=["0"], init_lora_weights=False),
                          adapter_name="a0")
    for i in range(1, kmax):
        lora.add_adapter(f"a{i}", LoraConfig(r=16, lora_alpha=32, target_modules=["0"], init_lora_weights=False))
    assert isinstance(lora, PeftModel)
    lora.eval()
    x = torch.randn(args.rows, args.seq, d, device=dev, dtype=dt)
    out = []
    print(f"| K | tokens | base ms | ours-mixed ms | ours-grouped ms | peft-lora-mixed ms | mixed x base | "
          f"mixed K / mixed K=1 | LoRA / ours-mixed |")
    print("|---|---|---|---|---|---|---|---|---|")
    first = None
    with torch.inference_mode():
        tb = timed(lambda: base(x), args.repeats, dev)
        for k in args.counts:
            ra = torch.arange(args.rows, device=dev) % k
            names = [f"a{i % k}" for i in range(args.rows)]
            groups = [(a, torch.nonzero(ra == a).flatten()) for a in range(k)]

            def mixed():
                return base(x) + spectral_linear_mixed(x, spectra[:k], ra, rows, cols, d, d, scalings[:k])

            def grouped():
                y = base(x)
                for a, idx in groups:
                    y[idx] += spectral_linear(x[idx], spectra[a], rows, cols, d, d, 300.0)
                return y

            tm = timed(mixed, args.repeats, dev)
            tg = timed(grouped, args.repeats, dev)
            tl = timed(lambda: lora(x, adapter_names=names), args.repeats, dev)
            first = first or tm
            print(f"| {k} | {args.rows}x{args.seq} | {tb * 1e3:.3f} | {tm * 1e3:.3f} | {tg * 1e3:.3f} | "
                  f"{tl * 1e3:.3f} | {tm / tb:.2f} | {tm / first:.2f} | {tl / tm:.2f} |", flush=True)
            out.append({"level": "layer", "hidden": d, "n": args.n, "rows": args.rows, "seq": args.seq, "k": k,
                        "base_ms": tb * 1e3, "ours_mixed_ms": tm * 1e3, "ours_grouped_ms": tg * 1e3,
                        "peft_lora_mixed_ms": tl * 1e3, "mixed_x_base": tm / tb, "mixed_over_k1": tm / first,
                        "lora_over_ours_mixed": tl / tm})
    return out


def model_level(args) -> list[dict]:
    """Whole-model timings of a mixed batch (see the module docstring); returns the result rows."""
    ours, lora = build(args, "fourierft"), build(args, "lora")
    ids = torch.randint(0, 1000, (args.rows, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    mode = f"generate {args.generate}" if args.generate else "prefill"
    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"machine: {machine}; torch {torch.__version__}; LLaMA-shaped hidden {args.hidden}, {args.layers} layers, "
          f"q/v adapters (fourierft n={args.n}, {'shared' if args.shared else 'distinct'} entries; LoRA r=16); "
          f"batch {args.rows} x {args.seq} tokens; {mode}; median of {args.repeats}\n")

    def run(model, new=args.generate, **names):
        if new:  # greedy, exactly `new` new tokens
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, **names)
        return model(input_ids=ids, **names)

    def frozen(new=args.generate):
        with ours.disable_adapter():
            run(ours, new)

    steps = args.generate > 1  # also the prefill alone: one decoding step's time
    print("| K | base ms | ours-mixed ms | ours-serial ms | peft-lora-mixed ms | ours x base | ours K / ours K=1 | "
          "LoRA / ours |" + (" base step ms | ours step ms | LoRA step ms | ours step / K=1 |" if steps else "")
          + "\n|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if steps else ""))
    variants = {"base": frozen}  # timed in interleaved rounds: a host that slows down mid-run slows all alike
    if steps:
        variants["base", 1] = lambda: frozen(1)
    for k in args.counts:
        names = [f"a{i % k}" for i in range(args.rows)]
        variants[("mixed", k)] = lambda names=names: run(ours, adapter_names=names)
        variants[("lora", k)] = lambda names=names: run(lora, adapter_names=names)
        if steps:
            variants[("mixed", k, 1)] = lambda names=names: run(ours, 1, adapter_names=names)
            variants[("lora", k, 1)] = lambda names=names: run(lora, 1, adapter_names=names)
        if not args.generate:
            groups = {f"a{j}": [i for i, n in enumerate(names) if n == f"a{j}"] for j in range(k)}

            def one_at_a_time(groups=groups):
                for name, idx in groups.items():
                    ours.set_adapter(name)
                    ours(input_ids=ids[idx])

            variants[("serial", k)] = one_at_a_time
    with torch.no_grad():
        t = interleaved(variants, args.repeats, args.device)
    records, base, first = [], t["base"], t[("mixed", args.counts[0])]
    step = (lambda full, prefill: (full - prefill) / (args.generate - 1) * 1e3) if steps else None  # ms
    first_step = step(first, t[("mixed", args.counts[0], 1)]) if steps else None
    for k in args.counts:
        mixed, lora_mixed, serial = t[("mixed", k)], t[("lora", k)], t.get(("serial", k))
        steps_ms = (step(base, t["base", 1]), step(mixed, t[("mixed", k, 1)]), step(lora_mixed, t[("lora", k, 1)])
                    ) if steps else (None, None, None)
        print(f"| {k} | {base * 1e3:.2f} | {mixed * 1e3:.2f} | "
              f"{'-' if serial is None else f'{serial * 1e3:.2f}'} | {lora_mixed * 1e3:.2f} | {mixed / base:.2f} | "
              f"{mixed / first:.2f} | {lora_mixed / mixed:.2f} |"
              + (" {:.3f} | {:.3f} | {:.3f} | {:.2f} |".format(*steps_ms, steps_ms[1] / first_step) if steps else ""),
              flush=True)
        records.append({"level": "model", "mode": mode, "hidden": args.hidden, "layers": args.layers,
                        "n": args.n, "rows": args.rows, "seq": args.seq, "shared_entries": args.shared, "k": k,
                        "base_ms": base * 1e3, "ours_mixed_ms": mixed * 1e3,
                        "ours_serial_ms": None if serial is None else serial * 1e3,
                        "peft_lora_mixed_ms": lora_mixed * 1e3, "mixed_x_base": mixed / base,
                        "mixed_over_k1": mixed / first, "lora_over_ours_mixed": lora_mixed / mixed,
                        "base_step_ms": steps_ms[0], "ours_step_ms": steps_ms[1], "lora_step_ms": steps_ms[2],
                        "ours_step_over_k1": None if not steps else steps_ms[1] / first_step})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=["model", "layer"], default="model")
    parser.add_argument("--shared", action="store_true",
                        help="model level: every adapter from one seed (shared entries)")
    parser.add_argument("--results", default=None, help="results file (default bench/results/mixed_batch-<UTC>.json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--generate", type=int, default=0,
                        help="model level: time generate() of this many new tokens instead of one forward")
    args = parser.parse_args()
    if args.level == "layer":
        print(f"machine: {torch.cuda.get_device_name() if args.device == 'cuda' else cpu_name()}; torch "
              f"{torch.__version__}; one {args.hidden}x{args.hidden} layer, n={args.n}, adapters sharing entries; "
              f"batch {args.rows} x {args.seq} tokens; forward, median of {args.repeats}\n")
        print(f"results: {write_results('mixed_batch', layer_level(args), out=args.results)}")
        return

    print(f"results: {write_results('mixed_batch', model_level(args), out=args.results)}")


if __name__ == "__main__":
    main()
