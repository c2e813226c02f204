"""FourierFT layers: one adapter is one module; a layer wraps its frozen ``base_layer`` and holds adapters by name.

Parameter names follow PEFT's layout where it matters for checkpoints: the frozen weight stays at
``<layer>.base_layer.weight``; a coefficient vector lives at ``<layer>.fourierft_adapters.<name>.spectrum`` and is
saved under PEFT's key ``<layer>.fourierft_spectrum`` (see :mod:`fourierft.checkpoint`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import mixed
from .entries import spectral_entries
from .kernels import spectral_linear
from .layers_extra import as_weight, check_extra, conv2d_delta, embedding_delta, extra_layer_types, matrix_shape
from .quantized import quantization_kind
from .spectral import delta_weight


def conv1d_class() -> type[nn.Module] | None:
    """transformers' GPT-2 ``Conv1D`` (weight stored ``(in, out)``), or None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def supported_layer_types() -> tuple[type[nn.Module], ...]:
    conv1d = conv1d_class()
    return (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)


class SpectralAdapter(nn.Module):
    """One FourierFT adapter of one ``(out_features, in_features)`` weight.

    State: ``spectrum`` ``(n,)`` float32 trainable coefficients; ``rows``, ``cols`` ``(n,)`` int64 entries (buffers,
    not saved: regenerated from ``seed`` exactly as the reference does).
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        n_frequency: int,
        scaling: float,
        seed: int,
        init_weights: bool = False,
        device: torch.device | str | None = None,
        entry_sampler=None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.scaling, self.seed = scaling, seed
        # entry_sampler (fourierft.sampling): None = PEFT's uniform entries, regenerated from the seed.
        rows, cols = (entry_sampler or spectral_entries)(out_features, in_features, n_frequency, seed)
        if device is not None and torch.device(device).type == "meta":
            spectrum = torch.empty(n_frequency, device="meta")  # low_cpu_mem_usage: materialised on load
        elif init_weights:
            spectrum = torch.zeros(n_frequency)
        else:
            spectrum = torch.randn(n_frequency)  # drawn on the CPU like the reference, so seeds agree with PEFT
        self.spectrum = nn.Parameter(spectrum.to(device) if device is not None else spectrum)
        entries_device = None if device is None or torch.device(device).type == "meta" else device
        self.register_buffer("rows", rows.to(entries_device), persistent=False)
        self.register_buffer("cols", cols.to(entries_device), persistent=False)

    @property
    def n_frequency(self) -> int:
        return self.spectrum.numel()

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``dW``, ``(out_features, in_features)`` of ``dtype``: see :func:`fourierft.spectral.delta_weight`."""
        rows, cols = self.rows.to(self.spectrum.device), self.cols.to(self.spectrum.device)
        return delta_weight(self.spectrum, rows, cols, self.out_features, self.in_features, self.scaling, dtype)

    def forward(self, x: torch.Tensor, path: str = "auto") -> torch.Tensor:
        """``x @ dW.T``: ``(..., in_features) -> (..., out_features)`` in ``x.dtype``."""
        return spectral_linear(
            x, self.spectrum, self.rows, self.cols, self.out_features, self.in_features, self.scaling, path=path
        )

    def extra_repr(self) -> str:
        return f"n_frequency={self.n_frequency}, scaling={self.scaling}, seed={self.seed}"


class FourierFTLayer(nn.Module):
    """A frozen ``nn.Linear``, GPT-2 ``Conv1D``, ``nn.Conv2d`` or ``nn.Embedding`` plus FourierFT adapters.

    ``y = base_layer(x) + sum over active, unmerged adapters a of x @ dW_a.T``. State changes only through named
    methods: :meth:`update_layer`, :meth:`set_adapter`, :meth:`merge`, :meth:`unmerge`, :meth:`delete_adapter`,
    :meth:`enable_adapters`.
    """

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        conv1d = conv1d_class()
        if isinstance(base_layer, nn.Linear):
            self.out_features, self.in_features = base_layer.out_features, base_layer.in_features
        elif conv1d is not None and isinstance(base_layer, conv1d):
            self.in_features, self.out_features = base_layer.weight.shape  # Conv1D stores (in, out)
        elif isinstance(base_layer, extra_layer_types()):  # Conv2d, Embedding: see fourierft.layers_extra
            check_extra(base_layer)
            self.out_features, self.in_features = matrix_shape(base_layer)
        else:
            raise TypeError(
                f"FourierFT adapts nn.Linear, transformers' Conv1D, nn.Conv2d and nn.Embedding, not "
                f"{type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.fan_in_fan_out = fan_in_fan_out
        self.fourierft_adapters = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        self.compute_path = "auto"
        # Per-row adapter names: set only inside fourierft.mixed.mixed_batch (cleared in its finally), else None.
        self.mixed_adapter_names: list[str] | None = None

    # --- adapters -------------------------------------------------------------------------------------------------
    def update_layer(
        self,
        adapter_name: str,
        n_frequency: int,
        scaling: float,
        seed: int,
        init_weights: bool = False,
        low_cpu_mem_usage: bool = False,
        entry_sampler=None,
    ) -> None:
        """Add (or replace) adapter ``adapter_name`` on this layer, on the base weight's device."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into {self!r}: unmerge it before replacing it")
        weight = self.base_layer.weight
        device = torch.device("meta") if low_cpu_mem_usage or weight.device.type == "meta" else weight.device
        self.fourierft_adapters[adapter_name] = SpectralAdapter(
            self.out_features, self.in_features, n_frequency, scaling, seed, init_weights, device, entry_sampler
        )

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged: unmerge it before deleting it")
        del self.fourierft_adapters[adapter_name]
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def set_adapter(self, adapter_names: list[str]) -> None:
        self.active_adapters = [a for a in adapter_names if a in self.fourierft_adapters]

    def enable_adapters(self, enabled: bool) -> None:
        self.disable_adapters = not enabled

    @property
    def fourierft_spectrum(self) -> dict[str, nn.Parameter]:
        """PEFT's attribute: ``{adapter name: coefficients}`` (read-only view)."""
        return {name: a.spectrum for name, a in self.fourierft_adapters.items()}

    # --- weights --------------------------------------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``dW`` of one adapter, ``(out_features, in_features)`` float32 (PEFT's orientation, also for Conv1D)."""
        return self.fourierft_adapters[adapter_name].delta_weight()

    def _weight_delta(self, adapter_name: str) -> torch.Tensor:
        """``dW`` in the base weight's own layout and dtype (transposed for Conv1D)."""
        kind = quantization_kind(self.base_layer)
        if kind is not None:  # adding dW to quantized storage would round most of it away, or corrupt packed bits
            raise ValueError(
                f"cannot merge into a {kind} weight without losing the adapter: keep it unmerged, or call "
                "merge_and_unload(dequantize=True) to get float layers holding dequantize(W) + dW"
            )
        dw = self.get_delta_weight(adapter_name).to(self.base_layer.weight.device)
        if isinstance(self.base_layer, extra_layer_types()):
            return as_weight(self.base_layer, dw).to(self.base_layer.weight.dtype)
        return (dw.T if self.fan_in_fan_out else dw).to(self.base_layer.weight.dtype)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def check_merge(self, adapter_names: list[str]) -> None:
        """Raise ``ValueError`` if merging these adapters would put NaN or inf into the weight (nothing changes)."""
        merged = self.base_layer.weight.detach().clone()
        for name in adapter_names:
            merged += self._weight_delta(name)
            if not torch.isfinite(merged).all():
                raise ValueError(f"NaN or inf in the merged weights: adapter {name!r} seems to be broken")

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ``dW`` of the given (default: active) adapters into the base weight; already merged ones are skipped."""
        names = self.active_adapters if adapter_names is None else adapter_names
        names = [n for n in names if n in self.fourierft_adapters and n not in self.merged_adapters]
        if safe_merge:
            self.check_merge(names)
        for name in names:
            self.base_layer.weight.data += self._weight_delta(name)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract every merged adapter's ``dW`` again, newest first. Does nothing when nothing is merged."""
        while self.merged_adapters:
            self.base_layer.weight.data -= self._weight_delta(self.merged_adapters.pop())

    # --- forward --------------------------------------------------------------------------------------------------
    def adapter_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """One adapter's contribution ``x @ dW.T`` for input ``x`` ``(..., in_features)`` (Conv2d: ``conv(x, dW)``,
        Embedding: ``dW[x]``; see :mod:`fourierft.layers_extra`)."""
        if isinstance(self.base_layer, nn.Conv2d):
            return conv2d_delta(self.base_layer, self.fourierft_adapters[adapter_name], x)
        if isinstance(self.base_layer, nn.Embedding):
            return embedding_delta(self.base_layer, self.fourierft_adapters[adapter_name], x)
        return self.fourierft_adapters[adapter_name](x, path=self.compute_path)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.mixed_adapter_names is not None:
            return mixed.layer_forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                warnings.warn("adapters are disabled but merged into the weights: unmerge them first", stacklevel=2)
            return result
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                result = result + self.adapter_delta(name, x).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fan_in_fan_out={self.fan_in_fan_out}"


# PEFT's name for the Linear/Conv1D layer class.
FourierFTLinear = FourierFTLayer
