"""QLoRA-style training on a 4-bit base: fourierft vs PEFT LoRA r=16 on the same bitsandbytes NF4 model.

    PYTHONPATH=. python bench/quantized.py [--steps 10]

LLaMA-shaped (hidden 4096, intermediate 11008, 4 layers, batch 4 x 1024 tokens); every decoder linear layer is a
bitsandbytes ``Linear4bit`` (NF4, double quantization, bf16 compute). Variants: the frozen 4-bit model with input
grads (floor), PEFT LoRA r=16 and fourierft (n=1000, scaling 300), on q,v and on all linear layers. Prints one
markdown table: median train step (forward + backward + AdamW), peak memory, ratio to floor and to LoRA (both in the
same run), and writes its rows through bench/results.py.
"""

from __future__ import annotations

import argparse
import gc

import torch
from torch import nn

from bench.common import build_base, measure
from bench.results import write_results


def quantize_decoder(model: nn.Module) -> nn.Module:
    """Replace every decoder ``nn.Linear`` by a bitsandbytes NF4 ``Linear4bit`` (quantized on the GPU)."""
    import bitsandbytes as bnb

    for parent in list(model.model.layers.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
                setattr(parent, name, q.cuda())
    return model


def variant(name: str, targets: str) -> tuple[nn.Module, dict]:
    model, batch = build_base("gpu")
    model = quantize_decoder(model)
    torch.cuda.empty_cache()
    tm = "all-linear" if targets == "all" else ["q_proj", "v_proj"]
    if name == "floor":
        model.enable_input_require_grads()
    elif name == "peft-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=tm))
    else:
        import fourierft

        model = fourierft.get_peft_model(model, fourierft.FourierFTConfig(n_frequency=1000, scaling=300.0,
                                                                          target_modules=tm))
    return model, batch


def step_fn(model: nn.Module, batch: dict):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3) if params else None

    def step():
        loss = model(**batch).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, median taken (default: %(default)s)")
    parser.add_argument("--command", help="the command line recorded in the results file (default: this one); "
                                          "bench/quantized_run.sh passes its own")
    args = parser.parse_args()
    print(f"card: {torch.cuda.get_device_name()}")
    rows = []
    for targets in ("qv", "all"):
        results = {}
        for name in ("floor", "peft-lora", "fourierft"):
            model, batch = variant(name, targets)
            ms, peak, _ = measure(step_fn(model, batch), args.steps, 3, cuda=True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            results[name] = (ms, peak, trainable)
            del model, batch
            gc.collect()
            torch.cuda.empty_cache()
        for name, (ms, peak, trainable) in results.items():
            rows.append({"targets": targets, "variant": name, "trainable": trainable, "step_ms": round(ms, 1),
                         "x_floor": round(ms / results["floor"][0], 2),
                         "x_lora": round(ms / results["peft-lora"][0], 2), "peak_gib": round(peak, 2)})
    print("| targets | variant | trainable | step ms | x floor | x LoRA | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['targets']} | {r['variant']} | {r['trainable']:,} | {r['step_ms']:.1f} | {r['x_floor']:.2f} | "
              f"{r['x_lora']:.2f} | {r['peak_gib']:.2f} |")
    note = (f"LLaMA-shaped (hidden 4096, intermediate 11008, 4 layers), every decoder linear layer bitsandbytes NF4 "
            f"with double quantization and bf16 compute, step = forward + backward + AdamW, median of {args.steps}; "
            "fourierft n=1000, scaling 300; PEFT LoRA r=16.")
    print(f"results: {write_results('quantized', rows, command=args.command, note=note)}")


if __name__ == "__main__":
    main()
