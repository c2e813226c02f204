"""Modules trained in full beside the adapter (``modules_to_save``, e.g. a classifier head), one copy per adapter.

The layout is PEFT's ``ModulesToSaveWrapper`` (``original_module`` plus ``modules_to_save.<adapter>``), so state-dict
keys and checkpoints agree with PEFT's.
"""

from __future__ import annotations

import copy

from torch import nn

from . import mixed


class ModulesToSaveWrapper(nn.Module):
    """Runs the active adapter's trainable copy of a module, or the original when adapters are off."""

    def __init__(self, module: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False
        self.mixed_adapter_names: list[str] | None = None  # set only inside fourierft.mixed.mixed_batch
        self.original_module.requires_grad_(False)
        self.update(adapter_name)

    def update(self, adapter_name: str) -> None:
        """Add a fresh trainable copy of the original module for ``adapter_name``."""
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module).requires_grad_(True)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def set_adapter(self, adapter_names: list[str]) -> None:
        """The first of ``adapter_names`` that has a copy here becomes active (a full module cannot be summed)."""
        self.active_adapter = next((a for a in adapter_names if a in self.modules_to_save), None)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:  # nn.ModuleDict.pop takes no default
            del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.modules_to_save), None)

    def enable_adapters(self, enabled: bool) -> None:
        self.disable_adapters = not enabled

    def active_module(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        if self.mixed_adapter_names is not None:
            return mixed.wrapper_forward(self, *args, **kwargs)
        return self.active_module()(*args, **kwargs)
