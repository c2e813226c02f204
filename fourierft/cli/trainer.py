"""What the CLI hands transformers' plain ``Trainer``: the optimizer's parameter groups and two callbacks
(keep the best evaluation's weights; readable progress)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .modeling import is_head_param


def _no_decay(model: nn.Module) -> set[str]:
    """Parameter names that take no weight decay: biases and normalisation weights (the Trainer's own rule)."""
    names = set()
    for mod_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()
        for p_name, _ in module.named_parameters(recurse=False):
            if is_norm or p_name == "bias":
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(model: nn.Module, head: list[str], lr: float, head_lr: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: the adapter (or body) at ``lr``, the task head at ``head_lr``, each split by weight decay.

    FourierFT coefficients need a learning rate ~100x LoRA's (paper: 5e-2..1.2e-1), which would wreck a freshly
    initialised head; one lr for both either starves the spectrum or blows up the head. The groups reach the plain
    Trainer through ``optimizer_cls_and_kwargs``; its scheduler scales each group's lr."""
    skip = _no_decay(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((is_head_param(name, head), name not in skip), []).append(p)
    return [{"params": params, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decays else 0.0}
            for (is_head, decays), params in groups.items()]


class KeepBest(TrainerCallback):
    """Snapshot the trainable weights at the best validation score; ``restore`` puts them back after training.

    Cheaper and model-class agnostic compared with ``load_best_model_at_end`` (which reloads whole checkpoints).
    The snapshot is also written to ``store`` so ``--resume`` keeps the best seen before an interruption.
    ``metrics`` of ``on_evaluate`` may gain ``eval_accuracy`` from an earlier callback (generated answers).
    """

    def __init__(self, model: nn.Module, metric: str, greater_is_better: bool, store: Path, main: bool):
        self.model, self.metric, self.greater, self.store, self.main = model, metric, greater_is_better, store, main
        self.best: float | None = None
        self.best_step = 0
        self.state: dict[str, torch.Tensor] | None = None
        if store.exists():
            saved = torch.load(store, map_location="cpu", weights_only=True)
            self.best, self.best_step, self.state = saved["best"], saved["step"], saved["state"]

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        if self.best is None or (value > self.best if self.greater else value < self.best):
            self.best, self.best_step = float(value), state.global_step
            self.state = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters()
                          if p.requires_grad}
            if self.main:
                tmp = self.store.with_suffix(".tmp")
                torch.save({"best": self.best, "step": self.best_step, "state": self.state}, tmp)
                os.replace(tmp, self.store)

    def restore(self) -> None:
        if self.state is not None:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, value in self.state.items():
                    params[name].copy_(value)


class Progress(TrainerCallback):
    """A progress bar with elapsed time and an estimate on a terminal; one line per evaluation either way
    (step, train loss, validation loss and accuracy, steps/s). Replaces the Trainer's printer of raw log dicts."""

    def __init__(self, main: bool, tty: bool | None = None, accuracy_name: str = "accuracy"):
        self.main = main
        self.tty = _isatty() if tty is None else tty
        self.accuracy_name = accuracy_name
        self.bar: Any = None
        self.started = 0.0
        self.first_step = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any):
        self.started, self.first_step = time.time(), state.global_step
        if self.main and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                                        "{rate_fmt}]")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        if not self.main or not metrics or "eval_loss" not in metrics:
            return  # the before/after passes (keys val_*, test_*) are reported by the caller
        done = state.global_step - self.first_step
        rate = done / max(time.time() - self.started, 1e-9)
        parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {state.epoch or 0:.2f}"]
        if self.last_loss is not None:
            parts.append(f"train loss {self.last_loss:.4f}")
        parts.append(f"validation loss {metrics['eval_loss']:.4f}")
        if metrics.get("eval_accuracy") is not None:
            parts.append(f"{self.accuracy_name} {100 * metrics['eval_accuracy']:.1f}%")
        parts.append(f"{rate:.2f} steps/s")
        line = "  " + ", ".join(parts)
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False
