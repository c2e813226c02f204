"""Host cost of one adapted layer call: what Python, the dispatcher and the launches take, with almost no work.

    PYTHONPATH=. python bench/host_cost.py [--shape 4096x4096] [--tokens 8] [--variants floor,peft-lora,ours-factored]

A training step of a launch-bound model (``bench/train_step.py``'s all-linear LLaMA: an eager step's host time is
about its GPU time) costs what the host spends per layer. Here one ``nn.Linear`` inside a one-layer model is
wrapped as each variant (``bench/common.py``'s names: ``floor``, ``peft-lora``, ``peft-fourierft``,
``ours-<path>``) through the same model API a user calls (``get_peft_model``, the model's ``forward``), fed a few
tokens, and called ``--calls`` times back to back with one synchronisation at the end: with so little work per call
the device waits on the host, so the time per call is the host's. ``train``: forward + backward (input and adapter
gradients); ``infer``: forward under ``inference_mode``. ``ops/call`` counts the operators a call dispatches that
do work (on a GPU, its launches), ``calls/call`` every operator call (views and allocations too). Rows go to
``bench/results/host_cost-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.results import write_results  # noqa: E402


class OneLinear(nn.Module):
    """A model of one frozen linear layer ``proj``, called as transformers models are (keyword input)."""

    def __init__(self, d_out: int, d_in: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(inputs_embeds)


def build(variant: str, d_out: int, d_in: int, n: int, device: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = OneLinear(d_out, d_in).to(device, dtype).requires_grad_(False)
    if variant == "floor":
        return model
    if variant == "peft-lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["proj"]))
    if variant == "peft-fourierft":
        from bench.common import _with_peft_own_layers
        from peft import FourierFTConfig, get_peft_model

        return _with_peft_own_layers(
            lambda: get_peft_model(model, FourierFTConfig(n_frequency=n, scaling=300.0, target_modules=["proj"])))
    if variant.startswith("ours-"):
        from fourierft import FourierFTConfig, get_peft_model

        peft_model = get_peft_model(model, FourierFTConfig(n_frequency=n, scaling=300.0, target_modules=["proj"]))
        peft_model.base_model.set_compute_path(variant.removeprefix("ours-"))
        return peft_model
    raise ValueError(f"unknown variant {variant!r}")


def call(model: nn.Module, x: torch.Tensor, mode: str) -> None:
    """One call: ``train`` forward and backward, ``infer`` forward under ``inference_mode``."""
    if mode == "infer":
        with torch.inference_mode():
            model(inputs_embeds=x)
    else:
        model(inputs_embeds=x).sum().backward()


def per_call_us(model: nn.Module, x: torch.Tensor, mode: str, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back calls (one sync at the end), in us."""
    def once():
        call(model, x, mode)

    def sync():
        if x.is_cuda:
            torch.cuda.synchronize()

    for _ in range(20):  # warm-up: caches, auto's first-call measurement
        once()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            once()
        sync()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(times)


_NO_LAUNCH = ("empty", "empty_like", "new_empty", "empty_strided", "_unsafe_view", "detach", "lift_fresh")


def ops_per_call(model: nn.Module, x: torch.Tensor, mode: str) -> tuple[int, int]:
    """``(launches, calls)``: the operators one call dispatches that do work (views and allocations left out: on a
    GPU each is a launch), and all the operator calls it makes (views and allocations too: each costs the host a
    trip through the dispatcher). Counted on the call's own thread and autograd's (the dispatch mode follows the
    backward there), with no gradients held before the call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        launches = calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            if not func.is_view and func.overloadpacket.__name__ not in _NO_LAUNCH:
                Count.launches += 1
            return func(*args, **(kwargs or {}))

    x.grad = None  # as after an optimiser's zero_grad: the step's first gradients are stored, not added
    model.zero_grad(set_to_none=True)
    with Count():
        call(model, x, mode)
    return Count.launches, Count.calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096x4096", help="out x in of the linear layer")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--variants", default="floor,peft-lora,peft-fourierft,ours-auto,ours-factored,ours-lowrank")
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=None)
    ap.add_argument("--note", default="", help="appended to the results file's note (e.g. which code ran)")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    d_out, d_in = (int(s) for s in a.shape.split("x"))
    rows = []
    for mode in a.modes.split(","):
        times, ops = {}, {}
        for variant in a.variants.split(","):
            model = build(variant, d_out, d_in, a.n, device, dtype)
            model.train(mode == "train")
            x = torch.randn(1, a.tokens, d_in, device=device, dtype=dtype, requires_grad=mode == "train")
            times[variant] = per_call_us(model, x, mode, a.calls, a.repeats)
            ops[variant] = ops_per_call(model, x, mode)
            del model
        floor, lora = times.get("floor"), times.get("peft-lora")
        print(f"### host cost per layer call, {mode}, {a.shape}, {a.tokens} tokens, {device}")
        print("| variant | us/call | x floor | x LoRA | ops/call | calls/call |\n|---|---|---|---|---|---|")
        for variant, us in times.items():
            xf = us / floor if floor else None
            xl = us / lora if lora else None
            ratios = f"{xf:.2f} | {xl:.2f}" if xf and xl else "- | -"
            launches, calls = ops[variant]
            print(f"| {variant} | {us:.1f} | {ratios} | {launches} | {calls} |")
            rows.append({"mode": mode, "shape": a.shape, "tokens": a.tokens, "n": a.n, "variant": variant,
                         "us_per_call": us, "x_floor": xf, "x_lora": xl, "ops_per_call": launches,
                         "calls_per_call": calls})
    path = write_results("host_cost", rows, out=a.results,
                         note=f"per-call time of one adapted linear layer, {a.calls} calls back to back per repeat, "
                              f"median of {a.repeats}" + (f"; {a.note}" if a.note else ""))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
