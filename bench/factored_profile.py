"""Where the factored path's time goes on one layer, and how it moves with the split ``N1`` (GPU, bf16).

    PYTHONPATH=. python bench/factored_profile.py [--rows 4096] [--n 1000]

Prints, per LLaMA shape: the per-op CUDA time of one training step and one inference forward (torch.profiler), then
median times of the factored path for each divisor ``N1`` near the cost model's choice, beside lowrank and the
frozen layer in the same process. The timings go to ``bench/results/factored_profile-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import layer_inputs  # noqa: E402
from bench.results import write_results  # noqa: E402
from fourierft.kernels import clear_caches, factored_plan, spectral_linear  # noqa: E402


def timed(fn, steps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    ap.add_argument("--results", default=None, help="results file (default bench/results/factored_profile-<UTC>.json)")
    a = ap.parse_args()
    records = []
    dev, dt = "cuda", torch.bfloat16
    print(f"device: {torch.cuda.get_device_name()}; rows {a.rows}; n {a.n}; bf16")
    orig = factored_plan.split_cost
    for shape in a.shapes.split(","):
        d1, d2 = (int(s) for s in shape.split("x"))
        rows, cols, c, x, w, g = layer_inputs(d1, d2, a.n, a.rows, dev, dt)

        def step(path):
            def fn():
                y = spectral_linear(x, c, rows, cols, d1, d2, 300.0, path=path, base=x @ w.T)
                y.backward(g)
            return fn

        def infer(path):
            def fn():
                with torch.inference_mode():
                    spectral_linear(x, c, rows, cols, d1, d2, 300.0, path=path, base=x @ w.T)
            return fn

        frozen_t = timed(lambda: (x @ w.T).backward(g))
        frozen_i = timed(lambda: torch.inference_mode()(lambda: x @ w.T)())
        low_t, low_i = timed(step("lowrank")), timed(infer("lowrank"))
        print(f"\n## {shape}: frozen train {frozen_t:.3f} ms, infer {frozen_i:.3f} ms; "
              f"lowrank train {low_t:.3f}, infer {low_i:.3f}")
        common = {"shape": shape, "n": a.n, "rows": a.rows, "frozen_train_ms": frozen_t, "frozen_infer_ms": frozen_i,
                  "lowrank_train_ms": low_t, "lowrank_infer_ms": low_i}
        for fn, name in ((step("factored"), "train"), (infer("factored"), "infer")):
            fn()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
            print(f"### factored {name} (5 calls, incl. the frozen x @ W.T)")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
        for d in (d1, d2):
            choice = orig(d, a.n)[0]
            divs = [k for k in range(2, d) if d % k == 0 and choice / 4 <= k <= choice * 4]
            print(f"split of d={d}: cost model picks N1={choice}")
            for n1 in divs:
                factored_plan.split_cost = lambda dd, nn, *_, n1=n1, d=d: (n1, 0.0) if dd == d else orig(dd, nn)
                clear_caches()
                ft, fi = timed(step("factored")), timed(infer("factored"))
                print(f"  N1={n1:5d}: train {ft:.3f} ms, infer {fi:.3f} ms")
                records.append({**common, "split_size": d, "n1": n1, "cost_model_n1": n1 == choice,
                                "factored_train_ms": ft, "factored_infer_ms": fi})
            factored_plan.split_cost = orig
            clear_caches()
    print(f"results: {write_results('factored_profile', records, out=a.results)}")


if __name__ == "__main__":
    main()
