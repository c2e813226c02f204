"""Where the factored path's stage 1 should run: the Triton kernel against cuBLAS, in whole model steps, one run.

    PYTHONPATH=. python bench/stage1_ab.py [--case gpu] [--targets all] [--modes train,infer-no_grad] [--rounds 4]

``fourierft.kernels.blockmm`` serves stage 1 either through its Triton kernel or through cuBLAS' batched GEMM;
the kernel takes less GPU time but a launch costs the host more. As shipped, inference launches the kernel and
training does not (``fourierft/kernels/factored.py``). Here every stage-1 call is sent one way (``kernel``: the
Triton kernel wherever it serves the operands; ``cublas``: never) or left as shipped (``shipped``), each variant
built fresh as in ``bench/train_step.py`` (``ours-factored``: the factored path in every layer), the variants
interleaved over ``--rounds`` rounds so a neighbour's load hits all of them alike, with the frozen model
(``floor``) once per mode. Each row has the step's median time on the full batch and ``host_ms``: the time per
step of the same model on a batch of one 16-token row, where the GPU waits on the host, so that is the host's time
to issue the step. Rows go to ``bench/results/stage1_ab-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import INFER, make_variant, measure, step_fn  # noqa: E402
from bench.results import write_results  # noqa: E402
from fourierft.kernels import blockmm as bm, factored  # noqa: E402

VARIANTS = ("shipped", "kernel", "cublas")


def stage1(variant: str):
    """The ``blockmm`` that factored.py calls for ``variant``: the shipped one, or one forcing ``kernel``."""
    if variant == "shipped":
        return bm.blockmm
    forced = variant == "kernel"
    return lambda *args, kernel=True, **kw: bm.blockmm(*args, kernel=forced, **kw)


def timed(variant: str, case: str, targets: str, mode: str, steps: int, cuda: bool) -> tuple[float, float]:
    """(median ms of a full step, ms per step of a one-row, 16-token step) for a fresh model of ``variant``."""
    model, batch = make_variant("floor" if variant == "floor" else "ours-factored", case, targets, 1000, 300.0)
    original, factored.blockmm = factored.blockmm, stage1("shipped" if variant == "floor" else variant)
    try:
        ms, _, _ = measure(step_fn(model, batch, mode), steps, 3, cuda)
        small = step_fn(model, {k: v[:1, :16] for k, v in batch.items() if v.dim() > 1}
                        | {k: v[:1] for k, v in batch.items() if v.dim() == 1}, mode)
        for _ in range(3):
            small()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            small()
        sync()
        host = (time.perf_counter() - t) * 1e3 / steps
    finally:
        factored.blockmm = original
        del model, batch
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return ms, host


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="gpu", choices=["gpu", "gpu-gqa", "cpu"])
    ap.add_argument("--targets", default="all")
    ap.add_argument("--modes", default="train,infer-no_grad", help=f"comma list of train, {', '.join(INFER)}")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--results", default=None, help="results file (default bench/results/stage1_ab-<UTC>.json)")
    a = ap.parse_args()
    cuda = a.case != "cpu"
    rows = []
    for mode in a.modes.split(","):
        plan = ["floor"] + [v for r in range(a.rounds) for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1])]
        times: dict[str, list[float]] = {}
        for i, variant in enumerate(plan):
            ms, host = timed(variant, a.case, a.targets, mode, a.steps, cuda)
            times.setdefault(variant, []).append(ms)
            floor = times["floor"][0]
            rows.append({"case": a.case, "targets": a.targets, "mode": mode, "variant": variant,
                         "round": 0 if variant == "floor" else (i - 1) // len(VARIANTS) + 1, "ms": ms,
                         "x_floor": ms / floor, "host_ms": host})
            print(f"{mode:14s} {variant:8s} {ms:8.2f} ms  x floor {ms / floor:5.3f}  host {host:7.2f} ms", flush=True)
        print(f"{mode}: medians " + ", ".join(f"{v} {statistics.median(t):.2f} ms" for v, t in times.items()))
    path = write_results("stage1_ab", rows, out=a.results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
