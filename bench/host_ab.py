"""Host cost of one adapted layer call, this checkout's fourierft against another checkout's, in one process.

    python bench/host_ab.py --other /path/to/other/checkout [--shape 32x32 --n 64 --tokens 4] [--paths factored]

``bench/host_cost.py`` measures the library it is run from, one variant after the other; two versions then meet
only across processes, which on a shared machine differ by more than a change's worth. Here the other checkout's
package is loaded beside this one (as ``fourierft_other``), each builds its own ``Linear`` layer over the same
frozen ``nn.Linear`` (the layers themselves, not through ``get_peft_model``: both packages register with the same
PEFT tables), and the variants are timed in interleaved rounds, so a neighbour's load hits all of them alike. Both
packages also register the same ``torch.library`` custom ops (what ``torch.compile`` runs), the later one's
replacing the first's: run it as a process of its own, not inside another program.
The frozen layer alone (``floor``) and PEFT's LoRA layer (r = 16) are timed in the same rounds.

With so little work per call (a few tokens) the device waits on the host, so a call's time is the host's. On CUDA
that is wall time over ``--calls`` back-to-back calls and one synchronisation (the backward runs on autograd's
device thread); on the CPU it is the calling thread's own CPU time (the backward runs on it), which leaves out
what other processes take of the core. ``train``: forward and backward; ``infer``: forward under ``no_grad``;
``mixed``: a mixed-adapter batch under ``no_grad``, ``--adapters`` K adapters (fourierft's sharing their entries)
on 2K rows, ``layer(x, adapter_names=[...])`` (the frozen layer: its plain forward on those rows).
Rows go to ``bench/results/host_ab-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import fourierft  # noqa: E402  (this checkout's: its folder is first on sys.path)
from bench.results import write_results  # noqa: E402


def load_other(path: Path):
    """The ``fourierft`` package of another checkout, imported as ``fourierft_other`` (its imports are relative)."""
    init = path / "fourierft" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--other {path}: no fourierft/__init__.py there; give the root of a fourierft checkout")
    spec = importlib.util.spec_from_file_location("fourierft_other", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fourierft_other"] = module
    spec.loader.exec_module(module)
    return module


def adapter_names(adapters: int) -> list[str]:
    """The layer's adapters: ``default`` (the one it is built with), then ``a1, a2, ...``."""
    return ["default"] + [f"a{i}" for i in range(1, adapters)]


def layer(kind: str, package, frozen: nn.Linear, n: int, path: str, adapters: int = 1) -> nn.Module:
    """``floor`` (the frozen layer), ``peft-lora`` or fourierft's ``Linear`` from ``package`` on ``path``, with
    ``adapters`` adapters (:func:`adapter_names`; fourierft's share their entries: one seed)."""
    if kind == "floor":
        return frozen
    if kind == "peft-lora":
        from peft import LoraConfig
        from peft.tuners.lora import Linear as LoraLinear

        config = LoraConfig(r=16, lora_alpha=32)
        module = LoraLinear(frozen, "default", config=config, r=16, lora_alpha=32)
        for name in adapter_names(adapters)[1:]:
            module.update_layer(name, 16, 32, config=config)
        return module
    config = package.FourierFTConfig(n_frequency=n, scaling=300.0, target_modules=["proj"])
    adapted = importlib.import_module(package.__name__ + ".layer").Linear(frozen, "default", config, n)
    for name in adapter_names(adapters)[1:]:
        adapted.update_layer(name, n, config)
    adapted.set_compute_path(path)
    return adapted


def call_fn(module: nn.Module, x: torch.Tensor, g: torch.Tensor, mode: str, names: list[str]) -> Callable[[], None]:
    if mode == "train":
        return lambda: module(x).backward(g)
    if mode == "mixed" and not isinstance(module, nn.Linear):  # the frozen layer takes no adapter_names
        def mixed() -> None:
            with torch.no_grad():
                module(x, adapter_names=names)

        return mixed

    def infer() -> None:
        with torch.no_grad():
            module(x)

    return infer


def per_call_us(fn: Callable[[], None], calls: int, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls * 1e6
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", type=Path, required=True, help="root of the other fourierft checkout")
    ap.add_argument("--shape", default="32x32", help="out x in of the linear layer")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--paths", default="factored", help="fourierft compute paths to time, comma-separated")
    ap.add_argument("--modes", default="train,infer", help="train, infer, mixed (a mixed-adapter batch)")
    ap.add_argument("--adapters", type=int, default=32, help="mixed: adapters on the layer, one per two rows")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--results", default=None)
    ap.add_argument("--note", default="", help="appended to the results file's note (e.g. which code each side is)")
    a = ap.parse_args()
    other = load_other(a.other.resolve())
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:
        torch.set_num_threads(1)  # one thread: the thread's CPU time is the call's
    d_out, d_in = (int(s) for s in a.shape.split("x"))
    torch.manual_seed(0)
    weight = torch.randn(d_out, d_in) / d_in ** 0.5
    kinds = [("floor", None, ""), ("peft-lora", None, "")]
    kinds += [(f"ours-{p}", pkg, code) for p in a.paths.split(",") for pkg, code in ((fourierft, "this"), (other, "other"))]
    records = []
    for mode in a.modes.split(","):
        adapters = a.adapters if mode == "mixed" else 1
        rows = 2 * adapters if mode == "mixed" else 1
        names = [adapter_names(adapters)[i % adapters] for i in range(rows)]
        x = torch.randn(rows, a.tokens, d_in, device=device, dtype=dtype, requires_grad=mode == "train")
        g = torch.randn(rows, a.tokens, d_out, device=device, dtype=dtype)
        fns = {}
        for kind, pkg, code in kinds:
            frozen = nn.Linear(d_in, d_out, bias=False)
            frozen.weight.data.copy_(weight)
            frozen = frozen.to(device, dtype).requires_grad_(False)
            module = layer(kind if pkg is None else "ours", pkg, frozen, a.n, kind.removeprefix("ours-"), adapters)
            fns[(kind, code)] = call_fn(module, x, g, mode, names)
        for fn in fns.values():  # warm-up: caches, plans, library heuristics
            for _ in range(20):
                fn()
        times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
        for _ in range(a.rounds):  # interleaved: a neighbour's load hits every variant alike
            for key, fn in fns.items():
                times[key].append(per_call_us(fn, a.calls, cuda))
        med = {key: statistics.median(v) for key, v in times.items()}
        floor, lora = med[("floor", "")], med[("peft-lora", "")]
        print(f"### host cost per layer call, {mode}, {a.shape}, n={a.n}, {rows} x {a.tokens} tokens"
              f"{f', {adapters} adapters' if mode == 'mixed' else ''}, {device}")
        print("| variant | code | us/call (median) | min | x floor | x LoRA |\n|---|---|---|---|---|---|")
        for (kind, code), us in med.items():
            print(f"| {kind} | {code or '-'} | {us:.1f} | {min(times[(kind, code)]):.1f} | {us / floor:.2f} | "
                  f"{us / lora:.2f} |")
            records.append({"mode": mode, "shape": a.shape, "rows": rows, "tokens": a.tokens, "adapters": adapters,
                            "n": a.n, "variant": kind, "code": code or None, "us_median": us,
                            "us_min": min(times[(kind, code)]), "x_floor": us / floor, "x_lora": us / lora})
        for path in a.paths.split(","):
            ratio = med[(f"ours-{path}", "this")] / med[(f"ours-{path}", "other")]
            print(f"{mode} ours-{path}: this / other = {ratio:.3f}")
    path = write_results("host_ab", records, out=a.results,
                         note=f"this checkout against {a.other} in one process, {a.rounds} interleaved rounds of "
                              f"{a.calls} calls, median" + (f"; {a.note}" if a.note else ""))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
