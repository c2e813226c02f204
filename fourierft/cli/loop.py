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
                   )
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
                             if classes else "") + f", max length {args.max_length} tokens"
        + ("; the text as the user turn of the chat template, the class name as the answer (loss on the answer "
           "tokens, scored by the greedily generated answer)" if task == "instruct" else ""),
        f"  trainable: {counts['adapter']:,} adapter + {counts['head']:,} head ({', '.join(head) or 'none'}) "
        f"= {counts['trainable']:,} of {counts['total']:,} parameters ({100 * counts['trainable'] / counts['total']:.2f}%)",
        f"  optimiser: AdamW, lr {lr:g} ({'coefficients' if args.method == 'fourierft' else 'body'}) / {head_lr:g} (head), "
        f"{args.scheduler} schedule, warm-up {args.warmup:g}; {total} steps "
        f"({'--max-steps' if args.max_steps > 0 else f'{args.epochs:g} epochs'} of {spe} steps each, "
        f"batch {args.batch_size} x {args.grad_accum} x {_world()} devices"
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
        head_lr: float, train_set: Any, val_set: Any, test_set: Any, partial: Path, main: bool,
        classes: list[str] | None = None) -> dict[str, Any]:
    """Train with transformers' plain ``Trainer``; ``before``/``after`` are the validation and test scores of the
    untouched model and of the best validation pass's weights. For ``instruct`` the sets are
    :class:`~fourierft.cli.instruct.InstructSet` and accuracy is that of generated answers."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from .encode import CausalCollator, accuracy_metrics, argmax_logits, token_accuracy
    from .runs import latest_checkpoint
    from .trainer import KeepBest, Progress, param_groups

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
        # save_total_limit 1: the Trainer removes the old checkpoint only once the new one is complete
        save_strategy="steps", save_steps=every, save_total_limit=1,
        seed=args.seed, bf16=args.bf16,
        fp16=args.fp16,
        # on a machine without a GPU, transformers runs torchrun's processes as independent single-process runs
        # unless use_cpu is set (it then trains data-parallel over gloo)
        use_cpu=args.cpu or not torch.cuda.is_available(),
        report_to=args.report_to, dataloader_num_workers=args.num_workers,
        label_names=["labels"], remove_unused_columns=False,
        # instruct scores generated answers (AnswerAccuracy): evaluation needs the loss only, and gathering the
        # logits would hold examples x length x vocabulary floats (64 x 100 x 49,152 for SmolLM2: 1.3 GB)
        prediction_loss_only=task == "instruct",
        disable_tqdm=True,  # Progress draws the bar and the evaluation lines
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
    keep = KeepBest(model, "accuracy", True, partial / "best_trainable.pt", main=main)
    progress = Progress(main, accuracy_name={"classification": "accuracy", "causal-lm": "token accuracy",
                                             "instruct": "answer accuracy"}[task])
    callbacks: list[Any] = [keep, progress]
    sets = {"val": val_set, "test": test_set}
    if task == "instruct":  # the Trainer sees the token-level data; answers are generated from the prompts
        from .instruct import AnswerAccuracy, answer_accuracy

        assert classes is not None
        callbacks.insert(0, AnswerAccuracy(model, tok, val_set, classes, args.eval_batch_size))
        sets = {"val": val_set.data, "test": test_set.data}
        train_set = train_set.data

    def score(prefix: str) -> dict[str, float]:
        out = _strip(trainer.evaluate(sets[prefix], metric_key_prefix=prefix), prefix)
        if task == "instruct":
            s = val_set if prefix == "val" else test_set
            out[f"{prefix}_accuracy"], _ = answer_accuracy(model, tok, s.prompts, s.gold, classes,
                                                           args.eval_batch_size)
        return out

    optimizer = (torch.optim.AdamW, {"params": param_groups(model, head, lr, head_lr, args.weight_decay),
                                     "lr": lr, "betas": (targs.adam_beta1, targs.adam_beta2),
                                     "eps": targs.adam_epsilon})
    trainer = Trainer(
        model=model, args=targs, train_dataset=train_set, eval_dataset=sets["val"], data_collator=collator,
        compute_metrics={"classification": accuracy_metrics, "causal-lm": token_accuracy}.get(task),
        preprocess_logits_for_metrics=argmax_logits if task == "causal-lm" else None,
        callbacks=callbacks, optimizer_cls_and_kwargs=optimizer,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts; Progress prints readable lines instead
    before_file = partial / "before.json"
    resume_from = latest_checkpoint(partial) if args.resume else None
    if args.resume and resume_from is None and main:
        print("  --resume: no complete checkpoint yet: training starts over", flush=True)
    t = time.time()
    if before_file.exists():  # resumed: the untouched model was measured by the first attempt
        before = json.loads(before_file.read_text())
    else:
        before = {**score("val"), **score("test")}
        if main:
            before_file.write_text(json.dumps(before))
    eval_before_s = time.time() - t
    t = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    if not evaluated or evaluated[-1] != trainer.state.global_step:  # the last steps were not validated yet
        trainer.evaluate()
    train_s = time.time() - t
    keep.restore()
    after = {**score("val"), **score("test")}
    epochs_run = trainer.state.epoch or args.epochs
    return {"before": before, "after": after, "best_step": keep.best_step, "best_val_accuracy": keep.best,
            "history": trainer.state.log_history, "train_s": round(train_s, 1),
            "s_per_epoch": round(train_s / max(epochs_run, 1e-9), 1), "eval_before_s": round(eval_before_s, 1),
            "resumed_from": resume_from, "device": _device(args), "global_step": trainer.state.global_step,
            "world_size": targs.world_size}


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    keep = ("loss", "accuracy", "runtime")
    return {f"{prefix}_{k}": v for k in keep if (v := metrics.get(f"{prefix}_{k}")) is not None}

