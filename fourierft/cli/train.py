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

from ._errors import CLIError
from .data import Splits, check_columns, class_names, label_ids, load_splits, subsample, texts
from .modeling import META_FILE, attach, head_modules, is_causal_lm, layer_shapes, load_base, load_config, \
    load_tokenizer, param_counts
from .options import check_train_args, fourierft_kwargs, learning_rates, lora_kwargs, lr_warning
from .presets import ModelRef, resolve_model


def is_main() -> bool:
    """Rank 0 of a torchrun/accelerate launch (``RANK``, which the launcher sets), or a single process: the one
    that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def say(*parts: Any) -> None:
    if is_main():
        print(*parts, flush=True)


def pick_task(args: argparse.Namespace, splits: Splits, causal: bool) -> str:
    """auto: prompt/response columns -> causal-lm; other data on a causal LM -> instruct; else classification."""
    if args.task != "auto":
        return args.task
    cols = splits.train[0].keys()
    if args.prompt_column in cols and args.response_column in cols:
        return "causal-lm"
    return "instruct" if causal else "classification"


def prepare_data(args: argparse.Namespace, causal: bool) -> tuple[Splits, str, list[str] | None]:
    """Load and validate every split before the model's weights are touched: bad data fails in a second."""
    splits = load_splits(args.data, validation=args.validation_data, test=args.test_data,
                         data_config=args.data_config, fractions=args.split, seed=args.split_seed,
                         label_column=args.label_column)
    if not splits.train:
        raise CLIError("the train split is empty")
    task = pick_task(args, splits, causal)
    if args.subsample is not None:
        n_eval = max(64, args.subsample // 8)
        splits.train = subsample(splits.train, args.subsample, args.split_seed)
        splits.validation = subsample(splits.validation, n_eval, args.split_seed)
        splits.test = subsample(splits.test, n_eval, args.split_seed)
    names = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    for what, rows in names.items():
        if not rows:
            raise CLIError(f"the {what} split is empty")
    classes = None
    if task in ("classification", "instruct"):
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


def encode_split(rows: list[dict[str, Any]], task: str, tok: Any, columns: dict[str, str], max_length: int,
                 classes: list[str] | None, *, by_length: bool = False) -> Any:
    """Token ids for ``task``; ``columns`` maps text/label/prompt/response to column names."""
    from .encode import encode_causal, encode_classification
    from .instruct import encode_instruct

    if task in ("classification", "instruct"):
        assert classes is not None
        ys = label_ids(rows, columns["label"], classes, "data")
        xs = texts(rows, columns["text"], "data")
        if task == "instruct":
            return encode_instruct(tok, xs, ys, classes, max_length)
        return encode_classification(tok, xs, ys, max_length, by_length=by_length)
    return encode_causal(tok, texts(rows, columns["prompt"], "data", allow_empty=True),
                         texts(rows, columns["response"], "data"), max_length)


def _columns(args: argparse.Namespace) -> dict[str, str]:
    return {"text": args.text_column, "label": args.label_column, "prompt": args.prompt_column,
            "response": args.response_column}


def run(args: argparse.Namespace) -> int:
    started = time.time()
    check_train_args(args)
    main = is_main()
    lr, head_lr = learning_rates(args)
    ref = resolve_model(args.model)
    config = None if ref.gguf_file else load_config(ref)  # a GGUF file's config comes with its weights (one read)
    splits, task, classes = prepare_data(args, is_causal_lm(ref, config))
    if task != "classification" and args.method == "head":
        raise CLIError(f"--method head trains a classification head; the {task} task has none")
    from .runs import record_args, run_folders

    final, partial = run_folders(args.out, args.method, resume=args.resume, overwrite=args.overwrite, check=main)
    if main:
        record_args(partial, args, resume=args.resume)  # --resume refuses other arguments than the first attempt's
    warning = lr_warning(args, lr)  # after the input checks, so a bad-input error stays the only stderr line
    if warning and main:
        print(warning, file=sys.stderr, flush=True)
    owns_group = not _process_group_initialized()  # torchrun's processes: the Trainer starts the group
    try:
        code = _train(args, ref, config, splits, task, classes, lr, head_lr, final, partial, main, started)
    except BaseException:
        if main and not args.resume and not any((partial / "checkpoints").glob("checkpoint-*")):
            shutil.rmtree(partial, ignore_errors=True)  # nothing to resume from: leave nothing behind
        elif main and partial.exists():
            print("fourierft train: stopped; continue with the same arguments and --resume", file=sys.stderr)
        raise
    # Close the group this run started, on success only (a rank that failed must not wait on its peers). Left to
    # interpreter shutdown, gloo's worker threads can abort the process after the work is done (pytorch#190489).
    if owns_group and _process_group_initialized():
        torch.distributed.destroy_process_group()
    return code


def _process_group_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _train(args: argparse.Namespace, ref: ModelRef, config: Any, splits: Splits, task: str,
           classes: list[str] | None, lr: float, head_lr: float, final: Any, partial: Any, main: bool,
           started: float) -> int:
    tok = load_tokenizer(ref)
    from transformers import set_seed

    set_seed(args.seed)  # the new head and the adapter's initial values: the same for a seed, and on every rank
    model, missing = load_base(ref, task, classes, tok.pad_token_id, args.dtype, config)
    if task == "classification":
        # the classifier's loss is a mean over its batch and ignores num_items_in_batch; left to the Trainer's guess
        # (the forward takes **kwargs), it is multiplied by the number of processes under DDP. accepts_loss_kwargs
        # is the model attribute the Trainer reads for this.
        model.accepts_loss_kwargs = False
    head = args.modules_to_save if args.modules_to_save is not None else head_modules(model, task, missing)
    model = attach(model, args.method, head, task, fourierft_kwargs(args, ref.targets), lora_kwargs(args, ref.targets))
    counts = param_counts(model, head)
    shapes = layer_shapes(model)
    cols = _columns(args)
    sets = [encode_split(rows, task, tok, cols, args.max_length, classes, by_length=i > 0)
            for i, rows in enumerate((splits.train, splits.validation, splits.test))]
    from .loop import describe, fit

    summary = describe(args, ref.display, splits, task, classes, head, counts, shapes, lr, head_lr, len(sets[0]))
    for line in summary["lines"]:
        say(line)
    result = fit(args, model, tok, task, head, lr, head_lr, *sets, partial, main, classes)
    if not main:
        return 0
    for cfg in getattr(model, "peft_config", {}).values():  # a portable name (hub id), not this machine's path
        cfg.base_model_name_or_path = ref.portable
    model.save_pretrained(str(partial))
    if args.method in ("full", "head"):
        tok.save_pretrained(str(partial))  # a full model folder should be usable on its own
    meta = {"base_model": ref.preset or ref.portable, "method": args.method, "task": task, "classes": classes,
            "text_column": args.text_column, "label_column": args.label_column,
            "prompt_column": args.prompt_column, "response_column": args.response_column,
            "max_length": args.max_length, "layer_shapes": shapes}
    (partial / META_FILE).write_text(json.dumps(meta, indent=2))
    total_s = time.time() - started
    import transformers

    metrics = {**summary["record"], **result, "time_total_s": round(total_s, 1),
               "versions": {"torch": torch.__version__, "python": platform.python_version(),
                            "transformers": transformers.__version__},
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "device": result.get("device")}}
    (partial / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = []
    if not args.no_plots:
        from .plots import training_curves

        plots = training_curves(result["history"], result["before"], partial, task)
    from ..folder_io import apply_umask
    from .runs import publish

    apply_umask(str(partial))  # safetensors' writer makes 0600 files; the run folder gets the umask's permissions
    publish(partial, final, keep_checkpoints=args.keep_checkpoints)
    _report(result, counts, total_s, final, plots, task)
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


METRIC_NAMES = {"classification": "accuracy", "causal-lm": "token accuracy", "instruct": "answer accuracy"}


def _report(result: dict[str, Any], counts: dict[str, int], total_s: float, final: Any, plots: list[str],
            task: str) -> None:
    b, a = result["before"], result["after"]
    metric = METRIC_NAMES[task]
    say(f"{metric} before training: validation {_pct(b.get('val_accuracy'))}, test {_pct(b.get('test_accuracy'))}")
    say(f"{metric} after training:  validation {_pct(a.get('val_accuracy'))}, test {_pct(a.get('test_accuracy'))}"
        f"  (weights of the best validation pass, step {result['best_step']})")
    if task != "classification":
        say(f"test loss {b['test_loss']:.4f} -> {a['test_loss']:.4f} "
            f"(per answer token; perplexity {math.exp(min(a['test_loss'], 50)):.2f})")
    say(f"trainable: {counts['adapter']:,} adapter + {counts['head']:,} head of {counts['total']:,} parameters")
    say(f"time: {result['train_s']:.0f} s training ({result['s_per_epoch']:.0f} s/epoch), {total_s:.0f} s in all")
    files = ", ".join(p for p in ["metrics.json", *plots])
    say(f"saved to {final}/: the model/adapter, {files}")
