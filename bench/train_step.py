"""Train-step benchmark: median step time (forward + backward + AdamW), peak memory, ratios to floor and PEFT.

    PYTHONPATH=. python bench/train_step.py --case gpu     # bf16 LLaMA-shaped, q,v and all-linear, + inference
    PYTHONPATH=. python bench/train_step.py --case gpu-gqa # the same, LLaMA-3-shaped (k/v narrower), 2 x 4096 tokens
    PYTHONPATH=. python bench/train_step.py --case cpu     # fp32 all-MiniLM-L6-v2-shaped BERT, query,value

One run, one machine: every variant is built fresh from the same seed in this process and timed the same way.
A variant name ending in ``+compile`` is the same variant under ``torch.compile`` (default inductor backend);
``+graphs`` under ``torch.compile(mode="reduce-overhead")``, which replays the compiled graphs as CUDA graphs.
Prints a markdown table per case (and writes it to --out if given); the rows go to
``bench/results/train_step-<UTC>.json`` (``bench/results.py``, or --results).
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import INFER_UNDER, make_variant, measure, merge_all  # noqa: E402
from bench.results import write_results  # noqa: E402

PATHS = ("gemm", "lowrank", "factored")


def _ours_prefix() -> str:
    """``ours`` when the model code (``fourierft.get_peft_model``) is importable, else the direct wrapper."""
    try:
        from fourierft import get_peft_model  # noqa: F401

        return "ours"
    except Exception:  # noqa: BLE001
        return "direct"


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# variant suffix -> torch.compile options; "+graphs" also replays each compiled graph as a CUDA graph (launches hidden)
COMPILE_MODES = {"+compile": {}, "+graphs": {"mode": "reduce-overhead"}}


def build(variant, case, targets, n, scaling):
    for suffix, options in COMPILE_MODES.items():
        if variant.endswith(suffix):
            # every variant is a new model through the same forward code: without a reset dynamo's recompile limit
            # (8) is reached after a few variants and the rest would silently run eager
            torch._dynamo.reset()
            model, batch = make_variant(variant.removesuffix(suffix), case, targets, n, scaling)
            return model, batch, torch.compile(model, **options)
    model, batch = make_variant(variant, case, targets, n, scaling)
    return model, batch, model


def _report_graph_breaks(variant: str) -> None:
    """Print dynamo's graph-break reasons so far (a private counter: skipped where this torch lacks it)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return
    breaks = dict(counters.get("graph_break", {}))
    stats = dict(counters.get("stats", {}))
    print(f"  {variant}: {sum(breaks.values())} graph breaks, dynamo stats {stats}"
          + "".join(f"\n    {n} x {r[:300]}" for r, n in breaks.items()), flush=True)


def train_row(variant, case, targets, n, scaling, steps, warmup):
    model, batch, run = build(variant, case, targets, n, scaling)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step():
        out = run(**batch)
        out.loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    if variant.endswith("+graphs"):
        # one eager step first, as docs/guide.md advises before compiling: auto measures, and the kernels' caches
        # are built outside the CUDA-graph pool (a cache entry made during graph warm-up would live in the pool)
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    ms, peak, _ = measure(step, steps, warmup, case.startswith("gpu"))
    if run is not model:
        _report_graph_breaks(variant)
    ntrain = sum(p.numel() for p in params)
    del model, run, opt, params
    _free()
    return ms, peak, ntrain


def infer_row(variant, case, targets, n, scaling, steps, warmup, merged, under="inference_mode"):
    model, batch, run = build(variant, case, targets, n, scaling)
    model.eval()
    if merged:
        merge_all(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    @INFER_UNDER[under][1]()
    def fwd():
        run(**inputs)

    ms, peak, _ = measure(fwd, steps, warmup, case.startswith("gpu"))
    del model, run
    _free()
    return ms, peak


def result_rows(mode, case, targets, rows, floor_key, peft_key, n, scaling, steps):
    """Flat result records of one table (``bench/results.py`` schema)."""
    base = rows[floor_key][0]
    peft = rows.get(peft_key, (None,))[0]
    return [{"case": case, "targets": targets, "mode": mode, "variant": name, "n": n, "scaling": scaling,
             "steps": steps, "ms": ms, "x_floor": ms / base, "peft_fourierft_over_this": peft / ms if peft else None,
             "peak_gib": peak, "trainable": ntrain} for name, (ms, peak, ntrain) in rows.items()]


def fmt_table(title, rows, floor_key, peft_key):
    base = rows[floor_key][0]
    peft = rows.get(peft_key, (None,))[0]
    lines = [f"### {title}", "", "| variant | ms | x floor | PEFT FourierFT / this | peak GiB | trainable |",
             "|---|---|---|---|---|---|"]
    for name, (ms, peak, ntrain) in rows.items():
        vs = f"{peft / ms:.2f}" if peft else "-"
        pk = f"{peak:.2f}" if peak is not None else "-"
        lines.append(f"| {name} | {ms:.1f} | {ms / base:.2f} | {vs} | {pk} | {ntrain:,} |")
    return "\n".join(lines)


def _auto_choices() -> str:
    """What ``auto`` chose for each layer key in this process, and why (measured times or the flop model)."""
    try:
        from fourierft.kernels import path_choices
    except ImportError:
        return ""
    lines = [f"  {k}: {c.path} ({c.how}: " + ", ".join(f"{p} {t * 1e3:.3f} ms" for p, t in c.seconds.items()) + ")"
             for k, c in path_choices().items()]
    return "auto's choices (key: device, out, in, n, dtype, training):\n" + "\n".join(lines) if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["gpu", "gpu-gqa", "cpu"], required=True)
    ap.add_argument("--targets", default=None, help="comma list of qv,all (gpu default both, cpu qv)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--scaling", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS), help="our paths to time (plus auto)")
    ap.add_argument("--prefix", default=None, help="ours or direct (default: ours when importable)")
    ap.add_argument("--skip", default="", help="comma list of variants to skip")
    ap.add_argument("--also", default="", help="comma list of extra variants (e.g. ours-auto beside direct-*)")
    ap.add_argument("--no-infer", action="store_true")
    ap.add_argument("--infer-under", default="inference_mode",
                    help=f"comma list of {', '.join(INFER_UNDER)}: the context of the inference forwards")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the printed tables here (markdown)")
    ap.add_argument("--results", default=None, help="results file (default bench/results/train_step-<UTC>.json)")
    a = ap.parse_args()
    unders = a.infer_under.split(",")
    if any(u not in INFER_UNDER for u in unders):
        ap.error(f"--infer-under takes {', '.join(INFER_UNDER)}, not {a.infer_under!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = a.case.startswith("gpu")
    scaling = a.scaling or (300.0 if gpu else 150.0)
    steps = a.steps or (15 if gpu else 20)
    targets = (a.targets or ("qv,all" if gpu else "qv")).split(",")
    prefix = a.prefix or _ours_prefix()
    ours = [f"{prefix}-{p}" for p in ["auto", *a.paths.split(",")] if p]
    extra = [v for v in a.also.split(",") if v]
    variants = [v for v in ["floor", "peft-lora", "peft-fourierft", *ours, *extra] if v not in a.skip.split(",")]
    dev = torch.cuda.get_device_name() if gpu else f"CPU {platform.processor() or platform.machine()}"
    head = (f"device: {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; n={a.n}; "
            f"scaling={scaling}; steps={steps} (median), warmup={a.warmup}")
    print(head, flush=True)
    out = [head]
    records = []
    for tg in targets:
        rows = {}
        for v in variants:
            try:
                rows[v] = train_row(v, a.case, tg, a.n, scaling, steps, a.warmup)
            except Exception as err:  # noqa: BLE001 (one broken variant must not lose the others' numbers)
                print(f"  train {tg} {v}: FAILED {type(err).__name__}: {err}", flush=True)
                _free()
                continue
            print(f"  train {tg} {v}: {rows[v][0]:.1f} ms", flush=True)
        if "floor" not in rows:
            continue
        records += result_rows("train", a.case, tg, rows, "floor", "peft-fourierft", a.n, scaling, steps)
        out.append(fmt_table(f"train step, {a.case}, targets {tg}", rows, "floor", "peft-fourierft"))
        print(out[-1], flush=True)
    for under in unders if gpu and not a.no_infer else ():
        mode = INFER_UNDER[under][0]
        for tg in targets:
            rows = {"frozen": (*infer_row("floor", a.case, tg, a.n, scaling, steps, a.warmup, False, under), 0)}
            jobs = [(v, v, False) for v in variants if v != "floor"]
            jobs += [(f"{v.split('-')[0]}-merged", v, True) for v in variants if v.endswith("-auto")]
            for label, v, merged in jobs:
                try:
                    rows[label] = (*infer_row(v, a.case, tg, a.n, scaling, steps, a.warmup, merged, under), 0)
                except Exception as err:  # noqa: BLE001
                    print(f"  {mode} {tg} {label}: FAILED {type(err).__name__}: {err}", flush=True)
                    _free()
                    continue
                print(f"  {mode} {tg} {label}: {rows[label][0]:.1f} ms", flush=True)
            records += result_rows(mode, a.case, tg, rows, "frozen", "peft-fourierft", a.n, scaling, steps)
            out.append(fmt_table(f"inference forward under {under}, {a.case}, targets {tg} (unmerged unless named)",
                                 rows, "frozen", "peft-fourierft"))
            print(out[-1], flush=True)
    choices = _auto_choices()
    if choices:
        out.append(choices)
        print(choices, flush=True)
    if a.out:
        Path(a.out).write_text("\n\n".join(out) + "\n")
    if records:
        print(f"results: {write_results('train_step', records, out=a.results, note=head)}")


if __name__ == "__main__":
    main()
