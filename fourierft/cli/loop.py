"""The training run itself, on transformers' Trainer, and the honest description printed before it starts."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from . import _api


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def steps_per_epoch(args: argparse.Namespace, n_train: int) -> int:
    return max(1, math.ceil(n_train / (args.batch_size * args.grad_accum * _world())))


def _device(args: argparse.Namespace) -> str:
    if torch.cuda.is_available() and not args.cpu:
        return f"cuda x{max(_world(), 1)} ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def describe(args: argparse.Namespace, display: str, splits: Any, task: str, classes: list[str] | None,
             head: list[str], counts: dict[str, int], shapes: dict[str, list[int]], lr: float, head_lr: float,
             n_train: int) -> dict[str, Any]:
    """Everything the run will do, as lines for the terminal and as a record for metrics.json."""
    spe = steps_per_epoch(args, n_train)
    total = args.max_steps if args.max_steps > 0 else math.ceil(spe * args.epochs)
    sizes = f"{len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test examples"
    sub = f" (--subsample {args.subsample}: a quick look, not the full task)" if args.subsample else " (all of it)"
    targets = sorted({k.rsplit(".", 1)[-1] for k in shapes})
    if args.method == "fourierft":
        adapter = (f"FourierFT n_frequency={args.n_frequency} scaling={args.scaling:g} "
                   f"random_loc_seed={args.random_loc_seed} init={'zero' if args.init_weights else 'N(0,1)'} "
                   f"on {len(shapes)} layers ({', '.join(targets)})"
                   f" [library: {_api.BACKEND}]")
    elif args.method == "lora":
        adapter = f"LoRA (PEFT) r={args.lora_r} alpha={args.lora_alpha:g} on {len(shapes)} layers ({', '.join(targets)})"
    else:
        adapter = {"full": "full fine-tuning (every weight)", "head": "head only (body frozen)"}[args.method]
    precision = "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32"
    lines = [
        f"fourierft train: {adapter}",
        f"  model: {display}",
        f"  data: {splits.source}: {sizes}{sub}" + "".join(f"; {n}" for n in splits.notes),
        f"  task: {task}" + (f", {len(classes)} classes ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''})"
                             if classes else "") + f", max length {args.max_length} tokens",
        f"  trainable: {counts['adapter']:,} adapter + {counts['head']:,} head ({', '.join(head) or 'none'}) "
        f"= {counts['trainable']:,} of {counts['total']:,} parameters ({100 * counts['trainable'] / counts['total']:.2f}%)",
        f"  optimiser: AdamW, lr {lr:g} ({'coefficients' if args.method == 'fourierft' else 'body'}) / {head_lr:g} (head), "
        f"{args.scheduler} schedule, warm-up {args.warmup:g}; {total} steps "
        f"({args.epochs:g} epochs x {spe} steps, batch {args.batch_size} x {args.grad_accum} x {_world()} devices"
        f"{', length-grouped' if args.group_by_length else ''})",
        f"  device: {_device(args)}, {precision}",
    ]
    record = {"method": args.method, "model": display, "data": splits.source, "data_notes": splits.notes,
              "subsample": args.subsample, "sizes": {"train": len(splits.train), "validation": len(splits.validation),
                                                      "test": len(splits.test)},
              "task": task, "classes": classes, "head_modules": head, "params": counts, "adapted_layers": shapes,
              "lr": lr, "head_lr": head_lr, "steps": total, "steps_per_epoch": spe, "epochs": args.epochs,
              "batch_size": args.batch_size, "grad_accum": args.grad_accum, "max_length": args.max_length,
              "seed": args.seed, "split_seed": args.split_seed, "precision": precision,
              "group_by_length": args.group_by_length,
              "fourierft": {"n_frequency": args.n_frequency, "scaling": args.scaling,
                            "random_loc_seed": args.random_loc_seed, "init_weights": args.init_weights}
              if args.method == "fourierft" else None}
    return {"lines": lines, "record": record}


def fit(args: argparse.Namespace, model: torch.nn.Module, tok: Any, task: str, head: list[str], lr: float,
        head_lr: float, train_set: Any, val_set: Any, test_set: Any, partial: Path) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, TrainingArguments

    from .encode import CausalCollator, accuracy_metrics, argmax_logits, token_accuracy
    from .runs import latest_checkpoint
    from .trainer import CrashAfter, KeepBest, SplitLRTrainer

    spe = steps_per_epoch(args, len(train_set))
    every = max(1, spe // max(1, args.evals_per_epoch))
    total = args.max_steps if args.max_steps > 0 else math.ceil(spe * args.epochs)
    warmup = int(args.warmup * total) if args.warmup < 1 else int(args.warmup)  # an int on every transformers 5.x
    targs = TrainingArguments(
        output_dir=str(partial / "checkpoints"), num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=lr, weight_decay=args.weight_decay,
        warmup_steps=warmup, lr_scheduler_type=args.scheduler,
        logging_steps=args.logging_steps or max(1, spe // 10), eval_strategy="steps", eval_steps=every,
        save_strategy="steps", save_steps=every, save_total_limit=1, seed=args.seed, bf16=args.bf16,
        fp16=args.fp16,
        # on a machine without a GPU, transformers runs torchrun's processes as independent single-process runs
        # unless use_cpu is set (it then trains data-parallel over gloo)
        use_cpu=args.cpu or not torch.cuda.is_available(),
        report_to=args.report_to, dataloader_num_workers=args.num_workers,
        label_names=["labels"], remove_unused_columns=False, disable_tqdm=not _tty(),
        # not the fused AdamW (Trainer's default on torch >= 2.8): it updates parameters without bumping their
        # version counters, which an early library cache missed (docs/cli-needs.md, fixed); every measured number
        # in docs/cli.md used this optimizer
        optim="adamw_torch",
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # rank 0 chose the folders
        shared = [str(partial)]
        torch.distributed.broadcast_object_list(shared, src=0)
        partial = Path(shared[0])
        targs.output_dir = str(partial / "checkpoints")
    if args.group_by_length:  # batches of similar length: less padding (RT snippets: 27 tokens mean, 68 max)
        fields = TrainingArguments.__dataclass_fields__
        if "train_sampling_strategy" in fields:  # transformers >= 5.2x; older 5.x has the boolean
            targs.train_sampling_strategy = "group_by_length"
        elif "group_by_length" in fields:
            targs.group_by_length = True
    collator = DataCollatorWithPadding(tok) if task == "classification" else CausalCollator(tok.pad_token_id)
    keep = KeepBest(model, "accuracy", True, partial / "best_trainable.pt", main=targs.process_index == 0)
    callbacks: list[Any] = [keep]
    if os.environ.get("FOURIERFT_CLI_CRASH_AFTER_STEP"):
        callbacks.append(CrashAfter(int(os.environ["FOURIERFT_CLI_CRASH_AFTER_STEP"])))
    trainer = SplitLRTrainer(
        model=model, args=targs, train_dataset=train_set, eval_dataset=val_set, data_collator=collator,
        compute_metrics=accuracy_metrics if task == "classification" else token_accuracy,
        preprocess_logits_for_metrics=None if task == "classification" else argmax_logits,
        callbacks=callbacks, head=head, head_lr=head_lr,
    )
    if task == "classification":
        # the classifier's loss is a mean over its batch and ignores num_items_in_batch; left True (the model's
        # forward takes **kwargs), the Trainer multiplies it by the number of processes under DDP: a loss and
        # gradients world-size times too large (and, on some transformers 5.x, doubled evaluation losses)
        trainer.model_accepts_loss_kwargs = False
    before_file = partial / "before.json"
    resume_from = latest_checkpoint(partial) if args.resume else None
    t = time.time()
    if before_file.exists():  # resumed: the untouched model was measured by the first attempt
        before = json.loads(before_file.read_text())
    else:
        before = {**_strip(trainer.evaluate(val_set, metric_key_prefix="val"), "val"),
                  **_strip(trainer.evaluate(test_set, metric_key_prefix="test"), "test")}
        if targs.process_index == 0:
            before_file.write_text(json.dumps(before))
    eval_before_s = time.time() - t
    t = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.state.global_step % every:  # the last steps were not validated yet
        trainer.evaluate()
    train_s = time.time() - t
    keep.restore()
    after = {**_strip(trainer.evaluate(val_set, metric_key_prefix="val"), "val"),
             **_strip(trainer.evaluate(test_set, metric_key_prefix="test"), "test")}
    epochs_run = trainer.state.epoch or args.epochs
    return {"before": before, "after": after, "best_step": keep.best_step, "best_val_accuracy": keep.best,
            "history": trainer.state.log_history, "train_s": round(train_s, 1),
            "s_per_epoch": round(train_s / max(epochs_run, 1e-9), 1), "eval_before_s": round(eval_before_s, 1),
            "resumed_from": resume_from, "device": _device(args), "global_step": trainer.state.global_step,
            "world_size": targs.world_size}


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    keep = ("loss", "accuracy", "runtime")
    return {f"{prefix}_{k}": v for k in keep if (v := metrics.get(f"{prefix}_{k}")) is not None}


def _tty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False
