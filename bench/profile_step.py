"""Where a model step's GPU time goes: torch.profiler kernel totals per variant, one run.

    PYTHONPATH=. python bench/profile_step.py --case gpu --targets all --variants floor,peft-lora,ours-auto

For each variant (built as in ``bench/train_step.py``) a few training steps and inference forwards run under
``torch.profiler``; the rows are each kernel's CUDA time per step (summed over its calls), its share of the step,
and the step's total kernel time beside the wall time (wall above kernel time means launches or syncs show).
Kernels are grouped into a few families by name (rows ``(family) <name>``) so variants compare at a glance. Rows go to
``bench/results/profile_step-<UTC>.json`` (``bench/results.py``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import INFER, make_variant, step_fn  # noqa: E402
from bench.results import write_results  # noqa: E402

FAMILIES = (  # first match wins: substrings of kernel names
    ("gemm", ("gemm", "cutlass", "sm90", "sm80", "nvjet", "xmma", "cublas")),
    ("attention", ("flash", "fmha", "attention")),
    ("copy/cast", ("copy", "cast", "convert", "to_copy")),
    ("reduce", ("reduce", "sum")),
    ("index", ("index", "gather", "scatter")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, keys in FAMILIES if any(k in low for k in keys)), "other")


def run_profile(fn, steps: int) -> tuple[dict[str, tuple[int, float]], float]:
    """({kernel: (calls per step, CUDA us per step)}, wall ms per step) for ``steps`` calls of ``fn``."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) * 1e3 / steps
    kernels = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if us and ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels[ev.key] = (ev.count // steps, us / steps)
    return kernels, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="gpu", choices=["gpu", "gpu-gqa"])
    ap.add_argument("--targets", default="all")
    ap.add_argument("--variants", default="floor,peft-lora,ours-auto")
    ap.add_argument("--modes", default="train,infer", help="comma list of train, infer, infer-no_grad")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--scaling", type=float, default=300.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    rows = []
    for mode in args.modes.split(","):
        for variant in args.variants.split(","):
            v = "floor" if (variant == "frozen" or (variant == "floor" and mode in INFER)) else variant
            model, batch = make_variant(v, args.case, args.targets, args.n, args.scaling)
            kernels, wall = run_profile(step_fn(model, batch, mode), args.steps)
            total = sum(us for _, us in kernels.values())
            fams: dict[str, float] = {}
            for name, (_, us) in kernels.items():
                fams[family(name)] = fams.get(family(name), 0.0) + us
            print(f"\n## {mode} {variant}: kernels {total / 1e3:.2f} ms/step, wall {wall:.2f} ms/step")
            print("  families: " + ", ".join(f"{f} {us / 1e3:.2f}" for f, us in sorted(fams.items(), key=lambda x: -x[1])))
            top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[: args.top]
            for name, (calls, us) in top:
                print(f"  {us / 1e3:8.3f} ms {calls:5d}x  {name[:110]}")
            base = {"case": args.case, "targets": args.targets, "mode": mode, "variant": variant, "n": args.n}
            rows.append({**base, "kernel": "(total)", "family": "-", "calls": 0, "ms": total / 1e3,
                         "share": 1.0, "wall_ms": wall})
            rows += [{**base, "kernel": f"(family) {f}", "family": f, "calls": 0, "ms": us / 1e3, "share": us / total,
                      "wall_ms": None} for f, us in sorted(fams.items(), key=lambda x: -x[1])]
            rows += [{**base, "kernel": name[:160], "family": family(name), "calls": calls, "ms": us / 1e3,
                      "share": us / total, "wall_ms": None} for name, (calls, us) in top]
            del model, batch, kernels
            gc.collect()
            torch.cuda.empty_cache()
    path = write_results("profile_step", rows, out=args.results,
                         note=f"torch.profiler CUDA kernel time per step, {args.steps} steps after 3 warm-up; "
                              f"top {args.top} kernels per variant and mode, plus each total")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
