"""The pieces the CLI adds to transformers' Trainer: per-group learning rates and keeping the best evaluation's
weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .modeling import is_head_param


class _SplitLR(Trainer):
    """Trainer whose optimizer gives the adapter (or body) ``learning_rate`` and the task head ``head_lr``.

    FourierFT coefficients need a learning rate ~100x LoRA's (paper: 5e-2..1.2e-1), which would wreck a freshly
    initialised head; one lr for both either starves the spectrum or blows up the head. Overriding
    ``create_optimizer`` keeps everything else of the Trainer (schedulers scale each group's lr, DDP, resume,
    mixed precision) unchanged.
    """

    def __init__(self, *args: Any, head: list[str], head_lr: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.head, self.head_lr = head, head_lr

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
            for name, p in opt_model.named_parameters():
                if p.requires_grad:
                    groups.setdefault((is_head_param(name, self.head), name in decay), []).append(p)
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(
                [
                    {
                        "params": params,
                        "lr": self.head_lr if is_head else self.args.learning_rate,
                        "weight_decay": self.args.weight_decay if decays else 0.0,
                    }
                    for (is_head, decays), params in groups.items()
                ],
                **kwargs,
            )
        return self.optimizer


TRAINABLE_FILE = "trainable.safetensors"


class AdapterCheckpoints:
    """Checkpoints for wrappers the Trainer does not know (this package's PeftModel): the Trainer would save the
    whole state dict (which fails on tied weights, e.g. GPT-2's lm_head/wte) and could not resume from an adapter.
    We save the adapter in PEFT format (usable as is) plus the trainable tensors, and resume from the latter."""

    def _known(self) -> bool:
        from transformers import PreTrainedModel

        known: tuple[type, ...] = (PreTrainedModel,)
        try:
            from peft import PeftModel

            known += (PeftModel,)
        except ImportError:
            pass
        return isinstance(self.model, known)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self._known():
            return super()._save(output_dir, state_dict)  # type: ignore[misc]
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.model.save_pretrained(output_dir)
        trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, TRAINABLE_FILE)
        if not os.path.exists(path):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
        from safetensors.torch import load_file

        params = dict((model or self.model).named_parameters())
        with torch.no_grad():
            for name, value in load_file(path).items():
                params[name].copy_(value)


class KeepBest(TrainerCallback):
    """Snapshot the trainable weights at the best validation score; ``restore`` puts them back after training.

    Cheaper and model-class agnostic compared with ``load_best_model_at_end`` (which reloads whole checkpoints and
    only knows PreTrainedModel / PEFT's own PeftModel). The snapshot is also written to ``store`` so ``--resume``
    keeps the best seen before an interruption.
    """

    def __init__(self, model: torch.nn.Module, metric: str, greater_is_better: bool, store: Path, main: bool):
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


class CrashAfter(TrainerCallback):
    """Test hook (``FOURIERFT_CLI_CRASH_AFTER_STEP``): stop as if killed, to exercise ``--resume``."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"simulated crash after step {state.global_step}")


class SplitLRTrainer(AdapterCheckpoints, _SplitLR):
    """The CLI's Trainer: split learning rates, adapter-sized checkpoints."""
