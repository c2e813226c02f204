"""Adapter-building benchmark: a 7B-shaped LLaMA (32 layers, 4096 / 11008) on the meta device, all-linear, n=1000.

    PYTHONPATH=. python bench/build.py [--layers 32] [--peft-layers 2]

Times ``get_peft_model`` for fourierft and for PEFT. PEFT draws a full ``randperm(d1 * d2)`` per layer (minutes for
32 layers), so by default it is timed on ``--peft-layers`` layers and scaled linearly to ``--layers`` (its cost is
the same per layer of one shape; the scaled figure is marked). ``--peft-layers 32`` times it in full. Prints a table
and writes the rows through bench/results.py.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

try:
    from bench.results import write_results
except ModuleNotFoundError:  # run as ``python bench/build.py``: this folder is on sys.path, the repo root is not
    from results import write_results


def llama(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def time_build(which: str, layers: int, n: int) -> tuple[float, int]:
    model = llama(layers)
    if which == "peft":
        from peft import FourierFTConfig, get_peft_model
    else:
        from fourierft import FourierFTConfig, get_peft_model
    cfg = FourierFTConfig(n_frequency=n, scaling=300.0, target_modules="all-linear")
    t = time.perf_counter()
    model = get_peft_model(model, cfg)
    dt = time.perf_counter() - t
    ntrain = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dt, ntrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="decoder layers of the model (default: %(default)s)")
    ap.add_argument("--peft-layers", type=int, default=2,
                    help="layers PEFT is timed on, scaled to --layers (default: %(default)s)")
    ap.add_argument("--n", type=int, default=1000, help="n_frequency (default: %(default)s)")
    a = ap.parse_args()
    # PEFT first: building ours registers fourierft's layers for PEFT's FourierFT type process-wide
    peft, peft_n = time_build("peft", a.peft_layers, a.n)
    ours, ours_n = time_build("ours", a.layers, a.n)
    scale = a.layers / a.peft_layers
    scaled = peft * scale
    note = "" if a.peft_layers == a.layers else f" (timed on {a.peft_layers} layers, scaled x{scale:g})"
    cpu = platform.processor() or platform.machine()
    print(f"cpu: {cpu}; threads {torch.get_num_threads()}; torch {torch.__version__}")
    print("| build (meta device, all-linear, n=%d, %d layers) | seconds | trainable |" % (a.n, a.layers))
    print("|---|---|---|")
    print(f"| fourierft | {ours:.3f} | {ours_n:,} |")
    print(f"| PEFT FourierFT{note} | {scaled:.1f} | {peft_n * a.layers // a.peft_layers:,} |")
    print(f"| speed-up | {scaled / ours:.0f}x | |")
    rows = [{"variant": "fourierft", "layers": a.layers, "layers_timed": a.layers, "seconds": round(ours, 4),
             "trainable": ours_n},
            {"variant": "PEFT FourierFT", "layers": a.layers, "layers_timed": a.peft_layers,
             "seconds": round(scaled, 2), "trainable": peft_n * a.layers // a.peft_layers}]
    note = (f"get_peft_model on a {a.layers}-layer LLaMA (4096 / 11008) on the meta device, all-linear, n={a.n}; "
            f"seconds are for all layers, scaled from the layers timed; {torch.get_num_threads()} threads.")
    print(f"results: {write_results('build', rows, note=note)}")


if __name__ == "__main__":
    main()
