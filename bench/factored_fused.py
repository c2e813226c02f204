"""The factored path with its fused Triton kernels against its PyTorch version, lowrank and the frozen layer (GPU).

    PYTHONPATH=. python bench/factored_fused.py [--rows 4096] [--n 1000] [--sweep]

Per LLaMA shape (q/o 4096x4096, up/gate 11008x4096, down 4096x11008, GQA k/v 1024x4096): median ms of one layer's
training step (forward + backward, the frozen ``x @ W.T`` included) and inference forward for the frozen layer,
lowrank, factored in PyTorch and the ``fused`` path (factored with the Triton kernels), all in one process.
``--sweep`` also times each kernel alone over block sizes (``factored_triton.ANALYSIS_BLOCKS`` /
``SYNTHESIS_BLOCKS``). Rows go to ``bench/results/factored_fused-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import layer_inputs  # noqa: E402
from bench.factored_profile import timed  # noqa: E402
from bench.results import write_results  # noqa: E402
from fourierft.kernels import clear_caches, factored, factored_triton, spectral_linear  # noqa: E402

# (rows, columns per chunk, warps, stages); a block that does not fit in shared memory is reported and skipped
ANALYSIS = [(16, 16, 8, 2), (16, 16, 8, 3), (16, 16, 4, 2), (32, 16, 8, 2), (16, 32, 8, 2), (32, 16, 8, 3)]
SYNTHESIS = [(16, 8, 8, 2), (16, 8, 8, 3), (16, 8, 4, 2), (32, 8, 8, 2), (16, 16, 8, 1), (16, 16, 8, 2)]


def timed_or_none(fn) -> float | None:
    """Median ms of ``fn``, or None where its block does not fit the card (Triton's OutOfResources)."""
    try:
        return timed(fn)
    except Exception as e:  # noqa: BLE001 (triton.runtime.errors.OutOfResources, by name: triton may be absent)
        if type(e).__name__ != "OutOfResources":
            raise
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,1024x4096")
    ap.add_argument("--sweep", action="store_true", help="also time each kernel over block sizes")
    ap.add_argument("--results", default=None, help="results file (default bench/results/factored_fused-<UTC>.json)")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    print(f"device: {torch.cuda.get_device_name()}; rows {a.rows}; n {a.n}; bf16")
    records = []

    def row(shape, kind, name, train=None, infer=None):
        records.append({"shape": shape, "n": a.n, "rows": a.rows, "kind": kind, "name": name,
                        "train_ms": train, "infer_ms": infer})

    for shape in a.shapes.split(","):
        d1, d2 = (int(s) for s in shape.split("x"))
        rows, cols, c, x, w, g = layer_inputs(d1, d2, a.n, a.rows, dev, dt)

        def step(path):
            return lambda: spectral_linear(x, c, rows, cols, d1, d2, 300.0, path=path, base=x @ w.T).backward(g)

        def infer(path):
            def fn():
                with torch.inference_mode():
                    spectral_linear(x, c, rows, cols, d1, d2, 300.0, path=path, base=x @ w.T)
            return fn

        times = {"frozen": (timed(lambda: (x @ w.T).backward(g)), timed(torch.inference_mode()(lambda: x @ w.T)))}
        times["lowrank"] = (timed(step("lowrank")), timed(infer("lowrank")))
        times["factored (pytorch)"] = (timed(step("factored")), timed(infer("factored")))
        times["factored (triton)"] = (timed(step("fused")), timed(infer("fused")))
        print(f"\n## {shape}, n = {a.n}: ms per call (x frozen layer)")
        ft, fi = times["frozen"]
        for name, (tt, ti) in times.items():
            print(f"  {name:20s} train {tt:7.3f} ({tt / ft:5.2f}x)   infer {ti:7.3f} ({ti / fi:5.2f}x)")
            row(shape, "path", name, tt, ti)
        if not a.sweep:
            continue
        pu, pv = factored.plan(rows, d1, dt, half=False), factored.plan(cols, d2, dt, half=False)
        xd = x.detach()
        xk = factored_triton.analysis(xd, pv, a.n)
        base = xd @ w.T
        keep = factored_triton.ANALYSIS_BLOCKS, factored_triton.SYNTHESIS_BLOCKS
        for blocks in ANALYSIS:
            factored_triton.ANALYSIS_BLOCKS = blocks
            ms = timed_or_none(lambda: factored_triton.analysis(xd, pv, a.n))
            print(f"  analysis  {blocks}: {'too big' if ms is None else f'{ms:.3f} ms'}")
            row(shape, "analysis", str(blocks), ms)
        for blocks in SYNTHESIS:
            factored_triton.SYNTHESIS_BLOCKS = blocks
            ms = timed_or_none(lambda: factored_triton.synthesis(xk, pu, c.detach(), 1e-5, base))
            print(f"  synthesis {blocks}: {'too big' if ms is None else f'{ms:.3f} ms'}")
            row(shape, "synthesis", str(blocks), ms)
        factored_triton.ANALYSIS_BLOCKS, factored_triton.SYNTHESIS_BLOCKS = keep
        clear_caches()
    print(f"results: {write_results('factored_fused', records, out=a.results)}")


if __name__ == "__main__":
    main()
