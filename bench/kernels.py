"""Per-layer check and timing of every ``spectral_linear`` path (GPU or CPU), against a float64 reference.

    PYTHONPATH=. python bench/kernels.py [--rows 4096] [--dtype bf16] [--n 1000,10000]

For each shape (LLaMA's q/o 4096x4096, up/gate 11008x4096, down 4096x11008) and n: the relative error of the
adapter output, input grad and spectrum grad against the float64 dense formula (autograd through
``delta_weight(dtype=float64)``), then median times of forward+backward (training) and of the forward alone under
``inference_mode``, next to the frozen layer (``x @ W.T`` with input grads). ``auto`` is timed like the others
(on CUDA it measures the candidates at its first call per key and runs the fastest); the table of its choices
(``fourierft.kernels.path_choices()``) is printed at the end. Rows go to ``bench/results/kernels-<UTC>.json``
(``bench/results.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import entries, measure  # noqa: E402
from bench.results import write_results  # noqa: E402
from fourierft.kernels import choose_path, path_choices, spectral_linear  # noqa: E402
from fourierft.spectral import delta_weight  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--n", default="1000")
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    ap.add_argument("--paths", default="auto,dense,gemm,lowrank,factored")
    ap.add_argument("--scaling", type=float, default=300.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None, help="results file (default bench/results/kernels-<UTC>.json)")
    a = ap.parse_args()
    results = []
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dt = DT[a.dtype]
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; rows {a.rows}; dtype {a.dtype}")
    print("| shape | n | path | err y | err gx | err gc | train ms | x frozen | infer ms | x frozen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in a.shapes.split(","):
        d1, d2 = (int(s) for s in shape.split("x"))
        for n in (int(s) for s in a.n.split(",")):
            torch.manual_seed(0)
            rows, cols = (t.to(dev) for t in entries(d1, d2, n))
            c = torch.randn(n, device=dev)
            x = torch.randn(a.rows, d2, device=dev, dtype=dt)
            g = torch.randn(a.rows, d1, device=dev, dtype=dt)
            w = (torch.randn(d1, d2, device=dev) * 0.02).to(dt)
            # float64 reference through autograd of the one definition
            c64 = c.double().requires_grad_()
            x64 = x.double().requires_grad_()
            dw64 = delta_weight(c64, rows, cols, d1, d2, a.scaling, dtype=torch.float64)
            y64 = x64 @ dw64.T
            y64.backward(g.double())
            ref = (y64.detach(), x64.grad, c64.grad)
            del dw64, y64, x64, c64
            xs = x.clone().requires_grad_()

            def frozen_train():
                (xs @ w.T).backward(g)

            @torch.inference_mode()
            def frozen_inf():
                x @ w.T

            ft, _, _ = measure(frozen_train, a.steps, 3, cuda)
            fi, _, _ = measure(frozen_inf, a.steps, 3, cuda)
            print(f"| {d1}x{d2} | {n} | frozen | | | | {ft:.3f} | 1.00 | {fi:.3f} | 1.00 |", flush=True)
            common = {"shape": f"{d1}x{d2}", "out_features": d1, "in_features": d2, "n": n, "rows": a.rows,
                      "dtype": a.dtype}
            results.append({**common, "path": "frozen", "flop_model_train": False, "flop_model_infer": False,
                            "err_y": None, "err_grad_x": None, "err_grad_c": None, "train_ms": ft,
                            "train_x_frozen": 1.0, "infer_ms": fi, "infer_x_frozen": 1.0})
            auto_t = choose_path(d1, d2, n, device_type=dev, training=True)
            auto_i = choose_path(d1, d2, n, device_type=dev, training=False)
            for p in a.paths.split(","):
                cp = c.clone().requires_grad_()
                xp = x.clone().requires_grad_()
                y = spectral_linear(xp, cp, rows, cols, d1, d2, a.scaling, path=p)
                y.backward(g)
                errs = (rel(y, ref[0]), rel(xp.grad, ref[1]), rel(cp.grad, ref[2]))
                del y

                def train():
                    spectral_linear(xp, cp, rows, cols, d1, d2, a.scaling, path=p).backward(g)

                @torch.inference_mode()
                def inf():
                    spectral_linear(x, cp, rows, cols, d1, d2, a.scaling, path=p)

                tt, _, _ = measure(train, a.steps, 3, cuda)
                ti, _, _ = measure(inf, a.steps, 3, cuda)
                mark = ("T" if p == auto_t else "") + ("I" if p == auto_i else "")
                print(f"| {d1}x{d2} | {n} | {p}{' (flop model ' + mark + ')' if mark else ''} | {errs[0]:.1e} | "
                      f"{errs[1]:.1e} | {errs[2]:.1e} | {tt:.3f} | {tt / ft:.2f} | {ti:.3f} | {ti / fi:.2f} |",
                      flush=True)
                results.append({**common, "path": p, "flop_model_train": p == auto_t, "flop_model_infer": p == auto_i,
                                "err_y": errs[0], "err_grad_x": errs[1], "err_grad_c": errs[2], "train_ms": tt,
                                "train_x_frozen": tt / ft, "infer_ms": ti, "infer_x_frozen": ti / fi})
            del ref, x, g, w, xs
            if cuda:
                torch.cuda.empty_cache()
    print("\nauto's choices (key: device, out, in, n, dtype, training):")
    for key, choice in path_choices().items():
        times = ", ".join(f"{p} {t * 1e3:.3f} ms" for p, t in choice.seconds.items())
        print(f"  {key}: {choice.path} ({choice.how}{': ' + times if times else ''})")
    print(f"results: {write_results('kernels', results, out=a.out)}")


if __name__ == "__main__":
    main()
