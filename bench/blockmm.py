"""Stage 1 of the factored transforms (``fourierft.kernels.blockmm``): the Triton kernel against cuBLAS, one run.

    PYTHONPATH=. python bench/blockmm.py [--tokens 4096] [--n 1000] [--sizes 4096,11008]

For each size ``d`` the plan ``auto`` builds for n uniform entries gives the two stage-1 products of a layer:
analysis (``L = dft`` ``(2G, N1)`` on ``x`` viewed ``(T, N1, N2)``) and synthesis (``L = inv_dft`` on the stage-2
result as :func:`fourierft.kernels.factored.synthesis` lays it out, plus the frozen output). Each is timed
through ``reference`` (cuBLAS' strided batched GEMM) and through the Triton kernel, with the bytes each must move
(read ``R`` and ``base``, write the result) over the time as a bandwidth, and the kernel's largest error against
float64, and the host time each takes to enqueue a call (what a host-bound step pays per launch). Rows go to
``bench/results/blockmm-<UTC>.json``.

``--sweep`` instead times the kernel (bf16) over the settings in :data:`SWEEP` (columns per step, steps per
program, warps, pipeline stages; ``shipped`` is ``blockmm._config``'s choice), one row per product and setting,
into a results file of its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import entries  # noqa: E402
from bench.results import write_results  # noqa: E402
from fourierft.kernels import blockmm as bm  # noqa: E402
from fourierft.kernels import cuda_timer  # noqa: E402
from fourierft.kernels.factored_plan import make_plan  # noqa: E402


def cases(d: int, n: int, t: int, dtype):
    """(name, L, R, base) for the analysis and the synthesis stage 1 of a length-``d`` transform."""
    p = make_plan(entries(d, d, n)[1].cuda(), d, dtype)
    x = torch.randn(t, d, device="cuda", dtype=dtype)
    r_syn = torch.randn(t, 2 * p.groups, p.n2, device="cuda", dtype=dtype)  # synthesis' stage-2 result
    yield f"analysis {d}", p.dft, x.view(t, p.n1, p.n2), None
    yield f"synthesis {d}", p.inv_dft, r_syn, torch.randn(t, p.n1, p.n2, device="cuda", dtype=dtype)


# (columns per step: tokens per step x columns of a block, steps per program, warps, pipeline stages)
SWEEP = [(128, 1, 4, 1), (128, 2, 4, 2), (128, 4, 4, 2), (128, 4, 8, 2), (128, 8, 4, 3), (256, 1, 4, 1),
         (256, 2, 4, 2), (256, 2, 8, 2), (256, 4, 8, 2), (256, 4, 8, 3), (512, 1, 8, 1), (512, 2, 8, 2)]


def sweep(a) -> None:
    """Time the kernel over :data:`SWEEP` for each product of :func:`cases` (bf16) and write one row per setting."""
    rows, shipped = [], bm._config
    print("| product | setting | Triton ms | TB/s | max err |\n|---|---|---|---|---|")
    for d in (int(s) for s in a.sizes.split(",")):
        for name, l, r, base in cases(d, a.n, a.tokens, torch.bfloat16):
            if not bm.supports(l, r, base):  # cuBLAS serves it (e.g. 11008's analysis): no setting to sweep
                continue
            want = torch.einsum("mk,tkn->tmn", l.double(), r.double()) * 0.5 + (0 if base is None else base.double())
            moved = (r.numel() * 2 + want.numel() * (4 if base is not None else 2))  # bf16 bytes: R, (base), out
            for setting in [None, *SWEEP]:
                if setting is None:
                    bm._config = shipped
                else:
                    cols, steps, warps, stages = setting
                    bm._config = lambda n, has_base, c=cols, st=steps, w=warps, sg=stages: (
                        max(1, c // min(bm._pow2(n), 128)), min(bm._pow2(n), 128), st, w, sg)
                try:
                    got = bm.blockmm(l, r, 0.5, base)
                    err = ((got.double() - want).abs().max() / want.abs().max()).item()
                    ms = timed(lambda: bm.blockmm(l, r, 0.5, base))
                except Exception as e:  # noqa: BLE001 (triton's OutOfResources, by name: a setting too big)
                    if type(e).__name__ != "OutOfResources":
                        raise
                    continue
                finally:
                    bm._config = shipped
                label = "shipped " + str(shipped(r.shape[2], base is not None)) if setting is None else str(setting)
                print(f"| {name} | {label} | {ms:.4f} | {moved / ms / 1e9:.2f} | {err:.1e} |", flush=True)
                rows.append({"product": name, "tokens": a.tokens, "n": a.n, "setting": label, "triton_ms": ms,
                             "tb_per_s": moved / ms / 1e9, "triton_rel_err": err})
    path = write_results("blockmm", rows, out=a.results, note="the stage-1 kernel's settings swept (bf16)")
    print(f"results: {path}")


def timed(fn, reps: int = 50) -> float:
    """Device ms per call: ``reps`` calls queued behind a busy-wait (:func:`fourierft.kernels.cuda_timer`), so a slow
    host's launch gaps do not count."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    return cuda_timer("blockmm", fn, reps) * 1e3


def host_us(fn, reps: int = 50) -> float:
    """Host time to enqueue one call (microseconds): ``reps`` calls after a synchronisation, without waiting for
    them (few enough that the launch queue never fills); what a host-bound step pays per launch."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    us = (time.perf_counter() - t) * 1e6 / reps
    torch.cuda.synchronize()
    return us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sizes", default="4096,11008")
    ap.add_argument("--results", default=None)
    ap.add_argument("--sweep", action="store_true", help="time the kernel over SWEEP's settings instead")
    a = ap.parse_args()
    if a.sweep:
        return sweep(a)
    rows = []
    print("| product | M x K x N | cuBLAS ms | Triton ms | cuBLAS TB/s | Triton TB/s | Triton max err "
          "| host us/call cuBLAS, Triton |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float16):
        for d in (int(s) for s in a.sizes.split(",")):
            for name, l, r, base in cases(d, a.n, a.tokens, dtype):
                alpha = 0.5
                want = torch.einsum("mk,tkn->tmn", l.double(), r.double()) * alpha
                if base is not None:
                    want += base.double()
                got = bm.blockmm(l, r, alpha, base)
                err = ((got.double() - want).abs().max() / want.abs().max()).item()
                ms_ref = timed(lambda: bm.reference(l, r, alpha, base))
                ms_tri = timed(lambda: bm.blockmm(l, r, alpha, base))
                host_ref, host_tri = host_us(lambda: bm.reference(l, r, alpha, base)), host_us(
                    lambda: bm.blockmm(l, r, alpha, base))
                moved = (r.numel() + got.numel() * (2 if base is not None else 1)) * r.element_size()
                t, k, n = r.shape
                shape = f"{l.shape[0]} x {k} x {n}"
                bw_ref, bw_tri = moved / ms_ref / 1e9, moved / ms_tri / 1e9
                print(f"| {name} {str(dtype)[6:]} | {shape} | {ms_ref:.4f} | {ms_tri:.4f} | {bw_ref:.2f} | {bw_tri:.2f} "
                      f"| {err:.1e} | {host_ref:.1f}, {host_tri:.1f} |", flush=True)
                rows.append({"product": name, "dtype": str(dtype).removeprefix("torch."), "tokens": a.tokens,
                             "n": a.n, "shape": shape, "cublas_ms": ms_ref, "triton_ms": ms_tri,
                             "cublas_over_triton": ms_ref / ms_tri, "bytes": moved, "triton_rel_err": err,
                             "cublas_host_us": host_ref, "triton_host_us": host_tri})
    path = write_results("blockmm", rows, out=a.results,
                         note="stage-1 products of the factored path: cuBLAS strided batched GEMM vs the Triton kernel")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
