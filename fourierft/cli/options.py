"""``fourierft train`` options: data, every FourierFTConfig field, optimisation and Trainer settings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._errors import CLIError
from .data import DEFAULT_DATA

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


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _pattern(text: str) -> dict[str, int]:
    """``--n-frequency-pattern 'query=2000,value=500'`` or a JSON object."""
    try:
        if text.strip().startswith("{"):
            value = json.loads(text)
        else:
            value = {k.strip(): int(v) for k, v in (item.split("=", 1) for item in _csv_list(text))}
    except (ValueError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"expected 'name=n,...' or a JSON object, got {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a mapping of layer names to n_frequency")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(t) for t in _csv_list(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three fractions like 0.8,0.1,0.1, got {text!r}") from exc
    if len(parts) != 3 or any(p <= 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="HF model id or local folder (default: the embedded all-MiniLM-L6-v2)")
    g.add_argument("--data", default=DEFAULT_DATA,
                   help=f"local .csv/.tsv/.jsonl/.json (optionally .gz/.bz2/.xz), a `datasets` name, or "
                        f"'{DEFAULT_DATA}' (default: the embedded Rotten Tomatoes snippets)")
    g.add_argument("--data-config", default=None, help="`datasets` configuration name (e.g. sst2 for glue)")
    g.add_argument("--validation-data", default=None, help="separate validation file (default: split --data)")
    g.add_argument("--test-data", default=None, help="separate test file (default: split --data)")
    g.add_argument("--task", choices=["auto", "classification", "causal-lm"], default="auto",
                   help="auto: causal-lm if the data has the prompt and response columns, else classification")
    g.add_argument("--text-column", default="text")
    g.add_argument("--label-column", default="label")
    g.add_argument("--prompt-column", default="prompt")
    g.add_argument("--response-column", default="response")
    g.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), help="train,validation,test fractions")
    g.add_argument("--split-seed", type=int, default=42, help="seed of the train/validation/test split")
    g.add_argument("--subsample", type=int, default=None, metavar="N",
                   help="train on N examples (validation and test on N/8 each, at least 64): a quick look")
    g.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens")
    g.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the loaded base model (bfloat16 halves the memory of large models)")

    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(DEFAULT_LR), default="fourierft",
                   help="fourierft (default); lora (PEFT), full fine-tuning or head-only as references")
    g.add_argument("--modules-to-save", type=_csv_list, default=None,
                   help="modules trained in full and saved with the adapter (default: the task head: "
                        "classifier/score, pooler and anything the checkpoint lacks)")

    g = p.add_argument_group("FourierFT (FourierFTConfig fields)")
    g.add_argument("--n-frequency", type=int, default=1000, help="spectral coefficients per layer")
    g.add_argument("--scaling", type=float, default=150.0, help="dW = scaling * Re(ifft2(S))")
    g.add_argument("--random-loc-seed", type=int, default=777, help="seed of the spectral entries")
    g.add_argument("--target-modules", type=_csv_list, default=None,
                   help="comma-separated module names, or one regex (default: the model type's usual targets)")
    g.add_argument("--exclude-modules", type=_csv_list, default=None)
    g.add_argument("--layers-to-transform", type=_int_list, default=None)
    g.add_argument("--layers-pattern", type=_csv_list, default=None)
    g.add_argument("--n-frequency-pattern", type=_pattern, default=None, metavar="NAME=N,...")
    g.add_argument("--fan-in-fan-out", type=_bool, default=None, metavar="BOOL",
                   help="weights stored (in, out), e.g. GPT-2 Conv1D (default: detected)")
    g.add_argument("--bias", choices=["none", "all", "fourier_only"], default="none")
    g.add_argument("--init-weights", type=_bool, default=CLI_INIT_WEIGHTS, metavar="BOOL",
                   help="true (default here): coefficients start at zero; false: N(0,1) (PEFT's default)")
    g.add_argument("--entry-sampling", choices=["uniform", "frequency_biased"], default=None,
                   help="uniform: PEFT's entries (default); frequency_biased: the paper's band (adapter then "
                        "stores its entries and only fourierft loads it)")
    g.add_argument("--frequency-center", type=float, default=None, help="centre of the band (frequency_biased)")
    g.add_argument("--frequency-width", type=float, default=None, help="width of the band (frequency_biased)")

    g = p.add_argument_group("LoRA reference (--method lora)")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.0)

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=None,
                   help="adapter learning rate (FourierFT coefficients default 1e-1; lora 5e-4, full 5e-5, head 1e-3)")
    g.add_argument("--head-lr", type=float, default=None, help="head learning rate (FourierFT default 6e-3)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=float, default=0.06, help="warm-up: a fraction of the steps, or a step count")
    g.add_argument("--scheduler", default="linear", help="transformers scheduler name (linear, cosine, constant, ...)")
    g.add_argument("--epochs", type=float, default=3)
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=32, help="per device")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--seed", type=int, default=42, help="training seed (init, shuffling, dropout)")
    g.add_argument("--group-by-length", type=_bool, default=True, metavar="BOOL",
                   help="batch examples of similar length together (default true: on the default task it halves "
                        "the padded tokens, 1.5x faster steps on CPU)")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder (default: runs/<method>, runs/<method>-2, ...)")
    g.add_argument("--overwrite", action="store_true", help="replace --out (only once the new run succeeded)")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run at <out>.partial")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints in the result")
    g.add_argument("--evals-per-epoch", type=int, default=1, help="validation passes per epoch")
    g.add_argument("--logging-steps", type=int, default=None, help="default: about 10 loss points per epoch")
    g.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    g.add_argument("--fp16", action="store_true", help="float16 mixed precision")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    g.add_argument("--report-to", default="none", help="Trainer loggers: none, tensorboard, wandb, ...")
    g.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    g.add_argument("--no-plots", action="store_true")


def learning_rates(args: argparse.Namespace) -> tuple[float, float]:
    lr, head_lr = DEFAULT_LR[args.method]
    lr = args.lr if args.lr is not None else lr
    head_lr = args.head_lr if args.head_lr is not None else (lr if args.method != "fourierft" else head_lr)
    if lr <= 0 or head_lr <= 0:
        raise CLIError("learning rates must be positive")
    return lr, head_lr


def lr_warning(args: argparse.Namespace, lr: float) -> str | None:
    """A loud warning when the coefficient learning rate cannot move the spectrum (the PEFT benchmark trap)."""
    if args.method != "fourierft" or lr * abs(args.scaling) >= MIN_LR_TIMES_SCALING:
        return None
    return (f"warning: --lr {lr:g} is far too small for FourierFT coefficients (lr x scaling = {lr * args.scaling:.3g}; "
            f"the paper trains at 5e-2..1.2e-1 with scaling 100-150, lr x scaling 5-18). PEFT's own benchmark "
            f"trained FourierFT at 1e-4 and learned nothing. Use --lr 1e-1 (the default) unless you mean it.")


def fourierft_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """FourierFTConfig fields from the options; unset optional ones keep the library's defaults."""
    kwargs: dict[str, Any] = {
        "n_frequency": args.n_frequency,
        "scaling": args.scaling,
        "random_loc_seed": args.random_loc_seed,
        "bias": args.bias,
    }
    targets = args.target_modules
    if targets is not None:  # one entry with regex characters is a regex, as in PEFT
        kwargs["target_modules"] = targets[0] if len(targets) == 1 and any(c in targets[0] for c in "*[]()|^$\\") \
            else targets
    optional = {"exclude_modules": args.exclude_modules, "layers_to_transform": args.layers_to_transform,
                "layers_pattern": args.layers_pattern, "n_frequency_pattern": args.n_frequency_pattern,
                "fan_in_fan_out": args.fan_in_fan_out, "init_weights": args.init_weights,
                "entry_sampling": args.entry_sampling, "frequency_center": args.frequency_center,
                "frequency_width": args.frequency_width}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def lora_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout}
    if args.target_modules is not None:
        kwargs["target_modules"] = args.target_modules
    for name in ("exclude_modules", "layers_to_transform", "layers_pattern"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs
