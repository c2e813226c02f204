"""Why one variant's step time falls in a fast or a slow mode: per-step device time beside the host's enqueue time.

    PYTHONPATH=. python bench/step_spread.py [--case gpu] [--targets all] [--variants floor,peft-lora,ours-factored]

Each variant is built once (as in ``bench/train_step.py``) and timed in ``--blocks`` blocks of ``--steps`` steps,
each step synchronised as ``bench.common.measure`` does. Per step the rows hold the device time (CUDA events, the
figure ``train_step`` reports) and the host time the step's Python took to enqueue its work (before the
synchronisation). A step whose device time follows its host time is bound by the host, not the GPU. Alternate
blocks run with Python's garbage collector disabled (``gc``: false), so a collection inside the step shows as the
difference. Rows go to ``bench/results/step_spread-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import make_variant, step_fn  # noqa: E402
from bench.results import write_results  # noqa: E402


class GcClock:
    """Time spent in Python's garbage collector, and full (generation 2) collections, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.ms, self.full, self._t = 0.0, 0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.ms += (time.perf_counter() - self._t) * 1e3
            self.full += info["generation"] == 2

    def take(self) -> tuple[float, int]:
        out = (self.ms, self.full)
        self.ms, self.full = 0.0, 0
        return out


def timed_steps(fn, steps: int, clock: GcClock) -> list[tuple[float, float, float, int]]:
    """(device ms, host ms, ms in the garbage collector, full collections) of each of ``steps`` synchronised
    calls."""
    out = []
    torch.cuda.synchronize()
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        clock.take()
        t = time.perf_counter()
        a.record()
        fn()
        b.record()
        host = (time.perf_counter() - t) * 1e3
        b.synchronize()
        out.append((a.elapsed_time(b), host, *clock.take()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="gpu", choices=["gpu", "gpu-gqa"])
    ap.add_argument("--targets", default="all")
    ap.add_argument("--variants", default="floor,peft-lora,ours-factored")
    ap.add_argument("--modes", default="train,infer", help="comma list of train, infer, infer-no_grad")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--scaling", type=float, default=300.0)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--results", default=None)
    a = ap.parse_args()
    rows = []
    print(f"device: {torch.cuda.get_device_name()}; cpus {len(os.sched_getaffinity(0))}; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| mode | variant | block | gc | device ms (median, max) | host ms (median, max) | gc ms, full collections |")
    print("|---|---|---|---|---|---|---|")
    clock = GcClock()
    gc.callbacks.append(clock)
    for mode in a.modes.split(","):
        for run, variant in enumerate(a.variants.split(",")):  # a variant may come twice: ``run`` tells them apart
            model, batch = make_variant(variant, a.case, a.targets, a.n, a.scaling)
            fn = step_fn(model, batch, mode)
            for _ in range(a.warmup):
                fn()
            for block in range(a.blocks):
                collect = block % 2 == 0
                gc.collect()
                if not collect:
                    gc.disable()
                try:
                    times = timed_steps(fn, a.steps, clock)
                finally:
                    gc.enable()
                dev, host = [t[0] for t in times], [t[1] for t in times]
                print(f"| {mode} | {variant} | {block} | {collect} | {statistics.median(dev):.2f}, {max(dev):.2f} "
                      f"| {statistics.median(host):.2f}, {max(host):.2f} | {sum(t[2] for t in times):.1f}, "
                      f"{sum(t[3] for t in times)} |", flush=True)
                rows += [{"case": a.case, "targets": a.targets, "mode": mode, "variant": variant, "run": run,
                          "block": block, "gc": collect, "step": i, "device_ms": d, "host_ms": h, "gc_ms": g,
                          "gc_full": f, "load": os.getloadavg()[0]} for i, (d, h, g, f) in enumerate(times)]
            del model, batch, fn
            gc.collect()
            torch.cuda.empty_cache()
    gc.callbacks.remove(clock)
    print(f"results: {write_results('step_spread', rows, out=a.results)}")


if __name__ == "__main__":
    main()
