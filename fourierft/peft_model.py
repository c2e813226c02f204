"""``PeftModel`` and ``get_peft_model``: the user-facing wrapper, with PEFT's method names.

``PeftModel.base_model`` is the :class:`FourierFTModel`, whose ``model`` is the user's model, so state-dict keys
start with ``base_model.model.`` exactly as in PEFT.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .checkpoint import load_into, read_weights, save_adapter
from .config import FourierFTConfig
from .mixed import batch_size_of, mixed_batch
from .model import FourierFTModel, _normalize_names


class PeftModel(nn.Module):
    """A model with FourierFT adapters. ``forward`` and ``generate`` go to the wrapped model."""

    def __init__(self, model: nn.Module, peft_config: FourierFTConfig, adapter_name: str = "default",
                 low_cpu_mem_usage: bool = False) -> None:
        super().__init__()
        self.base_model = FourierFTModel(model, peft_config, adapter_name, low_cpu_mem_usage)
        flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
        if getattr(model, flag, False):
            self._enable_input_grads()

    # --- passing through ------------------------------------------------------------------------------------------
    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The wrapped model's forward; ``adapter_names`` (one per row, ``"__base__"`` = none) mixes adapters."""
        if adapter_names is None:
            return self.base_model.model(*args, **kwargs)
        with mixed_batch(self.base_model, adapter_names, batch_size_of(args, kwargs)):
            return self.base_model.model(*args, **kwargs)

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        if adapter_names is None:
            return self.base_model.model.generate(*args, **kwargs)
        with mixed_batch(self.base_model, adapter_names, batch_size_of(args, kwargs)):
            return self.base_model.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    @property
    def config(self):
        return getattr(self.base_model.model, "config", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base_model.model.parameters()).dtype

    def _enable_input_grads(self) -> None:
        # With (reentrant) checkpointing and a frozen embedding, no input needs grad and the adapter gets none.
        model = self.base_model.model
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.base_model.model.gradient_checkpointing_enable(**kwargs)
        self._enable_input_grads()

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.model.gradient_checkpointing_disable()

    # --- adapters -------------------------------------------------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, FourierFTConfig]:
        return self.base_model.peft_config

    @property
    def active_adapters(self) -> list[str]:
        return list(self.base_model.active_adapters)

    @property
    def active_adapter(self) -> str | list[str]:
        return self.base_model.active_adapter

    def add_adapter(self, adapter_name: str, peft_config: FourierFTConfig, low_cpu_mem_usage: bool = False) -> None:
        """Add another adapter (not active, not trainable until :meth:`set_adapter`)."""
        self.base_model.inject_adapter(adapter_name, peft_config, low_cpu_mem_usage=low_cpu_mem_usage)

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter with ``dW = sum_i weights[i] dW_i`` (exact; union of entries): see :mod:`fourierft.compose`."""
        self.base_model.add_weighted_adapter(adapters, weights, adapter_name)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model computes its base outputs; adapters (re-merged if they were) come back after."""
        merged = {n: list(layer.merged_adapters) for n, layer in self.base_model.fourierft_layers()}
        self.base_model.disable_adapter_layers()
        trainable = [p for p in self.parameters() if p.requires_grad]  # nothing trains while disabled, as in PEFT
        for p in trainable:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in trainable:
                p.requires_grad_(True)
            self.base_model.enable_adapter_layers()
            for name, layer in self.base_model.fourierft_layers():
                layer.merge(adapter_names=merged.get(name, []))

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self.base_model.merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None, dequantize: bool = False) -> nn.Module:
        return self.base_model.merge_and_unload(progressbar, safe_merge, adapter_names, dequantize)

    def unload(self) -> nn.Module:
        return self.base_model.unload()

    def set_compute_path(self, path: str) -> None:
        self.base_model.set_compute_path(path)

    def export_lora(self, save_directory: str | os.PathLike, adapter_name: str = "default", rank: int | None = None):
        """Write an adapter as a PEFT LoRA checkpoint: exact without ``rank``; see :func:`fourierft.export.export_lora`."""
        from .export import export_lora

        return export_lora(self, save_directory, adapter_name, rank)

    # --- counting -------------------------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts, as PEFT counts them (adapters and saved copies included)."""
        trainable = total = 0
        for p in self.parameters():
            count = p.numel()
            if type(p).__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte of storage
                count *= 2 * p.element_size()
            total += count
            trainable += count if p.requires_grad else 0
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, selected_adapters: list[str] | None = None,
                        **kwargs) -> None:
        """Save adapters in PEFT's layout: ``default`` in ``save_directory``, others in ``save_directory/<name>``."""
        unsupported = sorted(set(kwargs) - {"safe_serialization", "is_main_process"})
        if unsupported:
            raise TypeError(f"save_pretrained got unsupported arguments {unsupported}")
        if kwargs.get("safe_serialization") is False:
            raise ValueError("fourierft writes safetensors only (safe_serialization=False is not supported)")
        if os.path.isfile(save_directory):
            raise ValueError(f"{os.fspath(save_directory)!r} is a file; save_pretrained needs a directory")
        names = list(self.peft_config) if selected_adapters is None else _normalize_names(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; adapters: {sorted(self.peft_config)}")
        for name in names:
            directory = save_directory if name == "default" else os.path.join(save_directory, name)
            save_adapter(self.base_model, name, directory, write=kwargs.get("is_main_process", True))

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: FourierFTConfig | None = None,
                        low_cpu_mem_usage: bool = False, subfolder: str | None = None) -> PeftModel:
        """Load a saved adapter (ours or PEFT's) onto ``model``. On any error ``model`` is left unchanged."""
        directory = os.path.join(model_id, subfolder or "")
        config = (config or FourierFTConfig.from_pretrained(directory)).copy(inference_mode=not is_trainable)
        state, shapes = read_weights(directory)
        peft_model = cls(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
        try:
            load_into(peft_model.base_model, adapter_name, state, shapes)
        except BaseException:
            peft_model.base_model.unload()  # restore the user's model: no half-loaded state
            raise
        return peft_model

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False,
                     low_cpu_mem_usage: bool = False, subfolder: str | None = None) -> None:
        """Load a saved adapter as ``adapter_name`` beside the existing ones (not made active)."""
        directory = os.path.join(model_id, subfolder or "")
        config = FourierFTConfig.from_pretrained(directory).copy(inference_mode=not is_trainable)
        state, shapes = read_weights(directory)
        self.add_adapter(adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage)
        try:
            load_into(self.base_model, adapter_name, state, shapes)
        except BaseException:
            self.delete_adapter(adapter_name)
            raise


def get_peft_model(model: nn.Module, peft_config: FourierFTConfig, adapter_name: str = "default",
                   low_cpu_mem_usage: bool = False, **kwargs) -> PeftModel:
    """Wrap ``model`` with a new FourierFT adapter (PEFT's ``get_peft_model``)."""
    unsupported = sorted(set(kwargs) - {"mixed", "autocast_adapter_dtype", "revision"})
    if unsupported:
        raise TypeError(f"get_peft_model got unsupported arguments {unsupported}")
    if kwargs.get("mixed"):
        raise ValueError("mixed=True (PeftMixedModel) is not supported by fourierft")
    if kwargs.get("revision") is not None:
        peft_config = peft_config.copy(revision=kwargs["revision"])
    name_or_path = getattr(model, "name_or_path", None)
    if peft_config.base_model_name_or_path is None and isinstance(name_or_path, str) and name_or_path:
        peft_config = peft_config.copy(base_model_name_or_path=name_or_path)  # recorded in the checkpoint, as PEFT does
    return PeftModel(model, peft_config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
