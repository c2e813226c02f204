"""``fourierft train``: data -> model + adapter -> transformers' Trainer -> adapter, metrics.json, plots."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from typing import Any

import torch

from . import _api
from ._errors import CLIError
from .data import Splits, check_columns, class_names, label_ids, load_splits, subsample, texts
from .modeling import META_FILE, attach, head_modules, layer_shapes, load_base, load_config, load_tokenizer, \
    param_counts, resolve_model
from .options import fourierft_kwargs, learning_rates, lora_kwargs, lr_warning

IS_MAIN = int(os.environ.get("RANK", "0")) == 0  # under torchrun/accelerate only rank 0 prints and writes


def say(*parts: Any) -> None:
    if IS_MAIN:
        print(*parts, flush=True)


def _task(args: argparse.Namespace, splits: Splits) -> str:
    if args.task != "auto":
        return args.task
    cols = splits.train[0].keys()
    return "causal-lm" if args.prompt_column in cols and args.response_column in cols else "classification"


def prepare_data(args: argparse.Namespace) -> tuple[Splits, str, list[str] | None]:
    """Load and validate every split before any model is touched: bad data fails in a second."""
    splits = load_splits(args.data, validation=args.validation_data, test=args.test_data,
                         data_config=args.data_config, fractions=args.split, seed=args.split_seed,
                         label_column=args.label_column)
    if not splits.train:
        raise CLIError("the train split is empty")
    task = _task(args, splits)
    if args.subsample is not None:
        if args.subsample < 2:
            raise CLIError("--subsample must be at least 2")
        n_eval = max(64, args.subsample // 8)
        splits.train = subsample(splits.train, args.subsample, args.split_seed)
        splits.validation = subsample(splits.validation, n_eval, args.split_seed)
        splits.test = subsample(splits.test, n_eval, args.split_seed)
    names = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    for what, rows in names.items():
        if not rows:
            raise CLIError(f"the {what} split is empty")
    classes = None
    if task == "classification":
        cols = {args.text_column: "--text-column", args.label_column: "--label-column"}
        for what, rows in names.items():
            check_columns(rows, cols, f"{what} data")
            texts(rows, args.text_column, f"{what} data")
        classes = class_names(splits.train, args.label_column, "train data")
        for what, rows in names.items():
            label_ids(rows, args.label_column, classes, f"{what} data")
    else:
        cols = {args.prompt_column: "--prompt-column", args.response_column: "--response-column"}
        for what, rows in names.items():
            check_columns(rows, cols, f"{what} data")
            texts(rows, args.response_column, f"{what} data")
    return splits, task, classes


def encode_split(rows: list[dict[str, Any]], task: str, tok: Any, args: argparse.Namespace,
                 classes: list[str] | None, *, by_length: bool = False) -> Any:
    from .encode import encode_causal, encode_classification

    if task == "classification":
        assert classes is not None
        ys = label_ids(rows, args.label_column, classes, "data")
        return encode_classification(tok, texts(rows, args.text_column, "data"), ys, args.max_length,
                                     by_length=by_length)
    return encode_causal(tok, texts(rows, args.prompt_column, "data", allow_empty=True),
                         texts(rows, args.response_column, "data"), args.max_length)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    if args.bf16 and args.fp16:
        raise CLIError("pick one of --bf16 and --fp16")
    if args.fp16 and (args.cpu or not torch.cuda.is_available()):
        raise CLIError("--fp16 needs a GPU; on the CPU use --bf16")
    lr, head_lr = learning_rates(args)
    splits, task, classes = prepare_data(args)
    from .runs import run_folders

    final, partial = run_folders(args.out, args.method, resume=args.resume, overwrite=args.overwrite, check=IS_MAIN)
    warning = lr_warning(args, lr)  # after the input checks, so a bad-input error stays the only stderr line
    if warning and IS_MAIN:
        print(warning, file=sys.stderr, flush=True)
    name, display = resolve_model(args.model)
    load_config(name)  # "unknown model" should say so, not fail later on the tokenizer
    tok = load_tokenizer(name)
    from transformers import set_seed

    set_seed(args.seed)  # the new head and the adapter's initial values: the same for a seed, and on every rank
    model, missing = load_base(name, task, classes, tok.pad_token_id, args.dtype)
    head = args.modules_to_save if args.modules_to_save is not None else head_modules(model, task, missing)
    model = attach(model, args.method, head, task, fourierft_kwargs(args), lora_kwargs(args))
    counts = param_counts(model, head)
    shapes = layer_shapes(model)
    train_set = encode_split(splits.train, task, tok, args, classes)
    val_set = encode_split(splits.validation, task, tok, args, classes, by_length=True)
    test_set = encode_split(splits.test, task, tok, args, classes, by_length=True)
    from .loop import describe, fit

    summary = describe(args, display, splits, task, classes, head, counts, shapes, lr, head_lr, len(train_set))
    for line in summary["lines"]:
        say(line)
    if IS_MAIN:
        os.makedirs(partial, exist_ok=True)
    try:
        result = fit(args, model, tok, task, head, lr, head_lr, train_set, val_set, test_set, partial)
    except BaseException:
        if not IS_MAIN:
            raise
        if not any((partial / "checkpoints").glob("checkpoint-*")):
            shutil.rmtree(partial, ignore_errors=True)  # nothing to resume from: leave nothing behind
        else:
            print(f"fourierft train: stopped; continue with: fourierft train ... --out {final} --resume",
                  file=sys.stderr)
        raise
    if not IS_MAIN:
        return 0
    for cfg in getattr(model, "peft_config", {}).values():  # PEFT records the base; needed by merge/eval elsewhere
        if getattr(cfg, "base_model_name_or_path", "") in (None, ""):
            cfg.base_model_name_or_path = name
    model.save_pretrained(str(partial))
    if args.method in ("full", "head"):
        tok.save_pretrained(str(partial))  # a full model folder should be usable on its own
    meta = {"base_model": name, "method": args.method, "task": task, "classes": classes,
            "text_column": args.text_column, "label_column": args.label_column,
            "prompt_column": args.prompt_column, "response_column": args.response_column,
            "max_length": args.max_length, "layer_shapes": shapes}
    (partial / META_FILE).write_text(json.dumps(meta, indent=2))
    total_s = time.time() - started
    metrics = {**summary["record"], **result, "time_total_s": round(total_s, 1), "backend": _api.BACKEND,
               "versions": {"torch": torch.__version__, "python": platform.python_version(),
                            "transformers": __import__("transformers").__version__},
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "device": result.get("device")}}
    (partial / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = []
    if not args.no_plots:
        from .plots import training_curves

        plots = training_curves(result["history"], result["before"], partial, task)
    from .runs import publish

    publish(partial, final, keep_checkpoints=args.keep_checkpoints)
    _report(result, counts, total_s, final, plots, task)
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _report(result: dict[str, Any], counts: dict[str, int], total_s: float, final: Any, plots: list[str],
            task: str) -> None:
    b, a = result["before"], result["after"]
    metric = "accuracy" if task == "classification" else "token accuracy"
    say(f"{metric} before training: validation {_pct(b.get('val_accuracy'))}, test {_pct(b.get('test_accuracy'))}")
    say(f"{metric} after training:  validation {_pct(a.get('val_accuracy'))}, test {_pct(a.get('test_accuracy'))}"
        f"  (weights of the best validation pass, step {result['best_step']})")
    if task == "causal-lm":
        say(f"test loss {b['test_loss']:.4f} -> {a['test_loss']:.4f} (perplexity {math.exp(min(a['test_loss'], 50)):.2f})")
    say(f"trainable: {counts['adapter']:,} adapter + {counts['head']:,} head of {counts['total']:,} parameters")
    say(f"time: {result['train_s']:.0f} s training ({result['s_per_epoch']:.0f} s/epoch), {total_s:.0f} s in all")
    files = ", ".join(p for p in ["metrics.json", *plots])
    say(f"saved to {final}/: the model/adapter, {files}")
