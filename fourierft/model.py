"""``FourierFTModel``: injects FourierFT layers into a model and manages its adapters.

Adapters are found by type (:class:`FourierFTLayer`, :class:`ModulesToSaveWrapper`), never by parameter names.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .config import FourierFTConfig
from .layer import FourierFTLayer, conv1d_class
from .layers_extra import extra_layer_types, matrix_shape
from .mixed import batch_size_of, mixed_batch
from .modules_to_save import ModulesToSaveWrapper
from .sampling import sampler_for
from .quantized import merged_float_linear, quantization_kind
from .targeting import TARGET_MODULE_MAPPING, default_targets, find_targets


def _normalize_names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


class FourierFTModel(nn.Module):
    """A model with FourierFT adapters injected (PEFT's ``FourierFTModel``).

    Args:
        model: the model to adapt (changed in place: its target layers are wrapped).
        config: the adapter's configuration (copied; the caller's object is never changed).
        adapter_name: name of this first adapter.
        low_cpu_mem_usage: create the coefficients on the meta device; they are materialised when loaded.
    """

    prefix: str = "fourierft_"
    tuner_layer_cls = FourierFTLayer
    target_module_mapping = TARGET_MODULE_MAPPING

    def __init__(
        self,
        model: nn.Module,
        config: FourierFTConfig,
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, FourierFTConfig] = {}
        self.active_adapters: list[str] = []
        self.inject_adapter(adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage)

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        if adapter_names is None:
            return self.model(*args, **kwargs)
        with mixed_batch(self, adapter_names, batch_size_of(args, kwargs)):  # per-row adapters, see fourierft.mixed
            return self.model(*args, **kwargs)

    # --- finding adapter modules ----------------------------------------------------------------------------------
    def fourierft_layers(self) -> Iterator[tuple[str, FourierFTLayer]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, FourierFTLayer))

    def saved_modules(self) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper))

    @property
    def active_adapter(self) -> str | list[str]:
        return self.active_adapters[0] if len(self.active_adapters) == 1 else list(self.active_adapters)

    # --- adding and removing --------------------------------------------------------------------------------------
    def inject_adapter(self, adapter_name: str, config: FourierFTConfig, low_cpu_mem_usage: bool = False) -> None:
        """Add adapter ``adapter_name`` to every target layer. On any error the model is left as it was."""
        if not isinstance(config, FourierFTConfig):
            raise TypeError(f"config must be a FourierFTConfig, got {type(config).__name__}")
        if adapter_name in self.peft_config:
            raise ValueError(f"an adapter named {adapter_name!r} exists already: pick another name or delete it")
        if not self.peft_config and any(True for _ in self.fourierft_layers()):
            raise ValueError(
                "this model already has FourierFT layers (it is another PeftModel's base model): add adapters "
                "through that PeftModel (add_adapter / load_adapter), or unload() it first"
            )
        config = config.copy()
        if config.target_modules is None:  # saved resolved, as PEFT does, so the checkpoint says what was adapted
            defaults = default_targets(self.model)
            config.target_modules = defaults if isinstance(defaults, str) else set(defaults)
        if config.task_type == "SEQ_CLS":  # PEFT trains and saves the classification head with the adapter
            extra = [n for n in ("classifier", "score") if n not in (config.modules_to_save or [])]
            config.modules_to_save = [*(config.modules_to_save or []), *extra]
        targets = find_targets(self.model, config)  # raises before anything changes
        for target in targets:
            self._check_fits(target.name, target.module, target.n_frequency)
        first = not self.peft_config
        self.peft_config[adapter_name] = config
        for target in targets:
            self._create_and_replace(config, adapter_name, target.module, target.name.rpartition(".")[2],
                                     None, target.name, n_frequency=target.n_frequency,
                                     low_cpu_mem_usage=low_cpu_mem_usage)
        self._wrap_modules_to_save(config, adapter_name)
        if first:
            self.set_adapter(adapter_name)
        else:
            self._mark_trainable()

    @staticmethod
    def _check_fits(name: str, module: nn.Module, n_frequency: int) -> None:
        base = module.base_layer if isinstance(module, FourierFTLayer) else module
        # in/out features, not weight.numel(): quantized weights are stored packed.
        shape = (base.out_features, base.in_features) if isinstance(base, nn.Linear) else tuple(base.weight.shape)
        if isinstance(base, extra_layer_types()):  # Conv2d: the (out, in * kh * kw) view; see fourierft.layers_extra
            shape = matrix_shape(base)
        if n_frequency > shape[0] * shape[1]:
            raise ValueError(
                f"n_frequency={n_frequency} is more than layer {name!r} has spectral entries "
                f"({shape[0]}x{shape[1]} = {shape[0] * shape[1]}): lower n_frequency or set n_frequency_pattern for it"
            )

    def _create_and_replace(self, fourierft_config, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs) -> None:
        """Wrap ``target`` (at ``current_key``) in a FourierFT layer, or add the adapter to an existing one."""
        n_frequency = optional_kwargs.get("n_frequency", fourierft_config.n_frequency)
        low_cpu_mem_usage = optional_kwargs.get("low_cpu_mem_usage", False)
        if not isinstance(target, FourierFTLayer):
            target = self._create_new_module(fourierft_config, adapter_name, target, n_frequency=n_frequency,
                                             low_cpu_mem_usage=low_cpu_mem_usage)
            _replace(self.model, current_key, target)
        else:
            target.update_layer(adapter_name, n_frequency, fourierft_config.scaling,
                                fourierft_config.random_loc_seed, fourierft_config.init_weights, low_cpu_mem_usage,
                                entry_sampler=sampler_for(fourierft_config))

    @staticmethod
    def _create_new_module(fourierft_config, adapter_name, target, **kwargs) -> FourierFTLayer:
        """A new FourierFT layer around ``target``, with ``fan_in_fan_out`` corrected for its type (warned)."""
        conv1d = conv1d_class()
        is_conv1d = conv1d is not None and isinstance(target, conv1d)
        if is_conv1d != fourierft_config.fan_in_fan_out and isinstance(target, (nn.Linear, *(c for c in [conv1d] if c))):
            warnings.warn(
                f"fan_in_fan_out is {fourierft_config.fan_in_fan_out} but the target is "
                f"{type(target).__name__}: using fan_in_fan_out={is_conv1d} for it",
                stacklevel=3,
            )
        layer = FourierFTLayer(target, fan_in_fan_out=is_conv1d)
        layer.update_layer(adapter_name, kwargs.get("n_frequency", fourierft_config.n_frequency),
                           fourierft_config.scaling, fourierft_config.random_loc_seed,
                           fourierft_config.init_weights, kwargs.get("low_cpu_mem_usage", False),
                           entry_sampler=sampler_for(fourierft_config))
        return layer

    def _wrap_modules_to_save(self, config: FourierFTConfig, adapter_name: str) -> None:
        for pattern in config.modules_to_save or []:
            for key, module in list(self.model.named_modules()):
                if not key or not re.fullmatch(rf"(.*\.)?{pattern}", key):
                    continue
                if isinstance(module, ModulesToSaveWrapper):
                    module.update(adapter_name)
                elif not any(isinstance(m, ModulesToSaveWrapper) for m in self._parents(key)):
                    _replace(self.model, key, ModulesToSaveWrapper(module, adapter_name))

    def _parents(self, key: str) -> list[nn.Module]:
        parts = key.split(".")
        return [self.model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter with ``dW = sum_i weights[i] dW_i`` on every layer: see :mod:`fourierft.compose`."""
        from .compose import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter everywhere. The active adapters lose it; if none is left, the first remaining is active."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"no adapter named {adapter_name!r}; adapters: {sorted(self.peft_config)}")
        merged = [n for n, layer in self.fourierft_layers() if adapter_name in layer.merged_adapters]
        if merged:
            raise ValueError(f"adapter {adapter_name!r} is merged (e.g. into {merged[0]}): unmerge it first")
        del self.peft_config[adapter_name]
        for _, layer in self.fourierft_layers():
            if adapter_name in layer.fourierft_adapters:
                layer.delete_adapter(adapter_name)
        for _, wrapper in self.saved_modules():
            wrapper.delete_adapter(adapter_name)
        remaining = [a for a in self.active_adapters if a != adapter_name]
        if not remaining and self.peft_config:
            remaining = [next(iter(self.peft_config))]
        self.set_adapter(remaining) if remaining else setattr(self, "active_adapters", [])

    # --- state ----------------------------------------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make these adapters active (their outputs are summed) and trainable; all others frozen."""
        names = _normalize_names(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"unknown adapter(s) {unknown or names}; adapters: {sorted(self.peft_config)}")
        for key, wrapper in self.saved_modules():  # a full module cannot be summed (PEFT refuses this too)
            saving = [n for n in names if n in wrapper.modules_to_save]
            if len(saving) > 1:
                raise ValueError(
                    f"Only one adapter can be set at a time for ModulesToSaveWrapper: adapters {saving} each train "
                    f"their own copy of {key!r} (modules_to_save); activate only one of them"
                )
        self.active_adapters = names
        for _, module in [*self.fourierft_layers(), *self.saved_modules()]:
            module.set_adapter(names)
        self._mark_trainable()

    def _mark_trainable(self) -> None:
        """Only the active adapters' coefficients, saved modules and configured biases train (not in inference mode)."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for name in self.active_adapters:
            config = self.peft_config[name]
            if config.inference_mode:
                continue
            for _, layer in self.fourierft_layers():
                if name in layer.fourierft_adapters:
                    layer.fourierft_adapters[name].spectrum.requires_grad_(True)
                    if config.bias == "fourier_only" and getattr(layer.base_layer, "bias", None) is not None:
                        layer.base_layer.bias.requires_grad_(True)
            for _, wrapper in self.saved_modules():
                if name in wrapper.modules_to_save:
                    wrapper.modules_to_save[name].requires_grad_(True)
            if config.bias == "all":
                for pname, p in self.model.named_parameters():
                    if pname.endswith(".bias") and ".fourierft_adapters." not in pname:
                        p.requires_grad_(True)

    def enable_adapter_layers(self) -> None:
        for _, module in [*self.fourierft_layers(), *self.saved_modules()]:
            module.enable_adapters(True)

    def disable_adapter_layers(self) -> None:
        """Turn every adapter off (merged ones are unmerged first, with a warning), so outputs are the base model's."""
        if any(layer.merged for _, layer in self.fourierft_layers()):
            warnings.warn("unmerging adapters to disable them", stacklevel=2)
            self.unmerge_adapter()
        for _, module in [*self.fourierft_layers(), *self.saved_modules()]:
            module.enable_adapters(False)

    def set_compute_path(self, path: str) -> None:
        """Force how adapted layers compute ``x @ dW.T`` (one of ``fourierft.kernels.PATHS``; ``"auto"`` decides)."""
        from .kernels import PATHS

        if path not in PATHS:
            raise ValueError(f"unknown compute path {path!r}; choose one of {list(PATHS)}")
        for _, layer in self.fourierft_layers():
            layer.compute_path = path

    # --- merging --------------------------------------------------------------------------------------------------
    def _merge_names(self, adapter_names: list[str] | None) -> list[str]:
        names = self.active_adapters if adapter_names is None else _normalize_names(adapter_names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; adapters: {sorted(self.peft_config)}")
        return names

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge adapters into the weights (idempotent). ``safe_merge`` checks every layer first: on NaN/inf it raises
        ``ValueError`` and no weight changes. Quantized layers refuse (see :mod:`fourierft.quantized`)."""
        self._merge([layer for _, layer in self.fourierft_layers()], self._merge_names(adapter_names), safe_merge)

    @staticmethod
    def _merge(layers: list[FourierFTLayer], names: list[str], safe_merge: bool) -> None:
        if safe_merge:
            for layer in layers:
                layer.check_merge([n for n in names if n in layer.fourierft_adapters and n not in layer.merged_adapters])
        for layer in layers:
            layer.merge(adapter_names=names)

    def unmerge_adapter(self) -> None:
        for _, layer in self.fourierft_layers():
            layer.unmerge()

    def _unload(self, merge: bool, safe_merge: bool = False, adapter_names: list[str] | None = None,
                dequantize: bool = False) -> nn.Module:
        layers = dict(self.fourierft_layers())
        quantized = {n for n, layer in layers.items() if quantization_kind(layer.base_layer)}
        replacements = {n: layer.base_layer for n, layer in layers.items()}
        if merge:
            if quantized and not dequantize:
                name = min(quantized)
                raise ValueError(
                    f"layer {name!r} has a {quantization_kind(layers[name].base_layer)} weight: merging into it would "
                    "lose the adapter. Pass dequantize=True for float layers holding dequantize(W) + dW, or keep "
                    "the adapter unmerged"
                )
            names = self._merge_names(adapter_names)
            for name in quantized:  # new float layers: built (and checked) before anything changes
                layer = layers[name]
                delta = sum((layer.get_delta_weight(a) for a in names if a in layer.fourierft_adapters),
                            torch.zeros(layer.out_features, layer.in_features, device=layer.base_layer.weight.device))
                replacements[name] = merged_float_linear(layer.base_layer, delta)
                if safe_merge and not torch.isfinite(replacements[name].weight).all():
                    raise ValueError(f"NaN or inf in the merged weights of {name!r}: an adapter seems to be broken")
            self._merge([layers[n] for n in layers if n not in quantized], names, safe_merge)
        for name, replacement in replacements.items():
            _replace(self.model, name, replacement)
        for name, wrapper in list(self.saved_modules()):
            _replace(self.model, name, wrapper.active_module() if merge else wrapper.original_module)
        self.peft_config.clear()
        self.active_adapters = []
        return self.model

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None, dequantize: bool = False) -> nn.Module:
        """Merge the (given or active) adapters and return the plain model, trained ``modules_to_save`` in place.

        Adapted quantized layers need ``dequantize=True``: they become float ``nn.Linear`` layers holding
        ``dequantize(W) + dW`` (other quantized layers stay quantized)."""
        return self._unload(merge=True, safe_merge=safe_merge, adapter_names=adapter_names, dequantize=dequantize)

    def unload(self) -> nn.Module:
        """Remove every adapter without merging: the original model comes back."""
        self.unmerge_adapter()
        return self._unload(merge=False)

    @torch.no_grad()
    def materialize(self, device: torch.device | str) -> None:
        """Give meta-device coefficients (``low_cpu_mem_usage``) real storage before loading into them."""
        for _, layer in self.fourierft_layers():
            for adapter in layer.fourierft_adapters.values():
                if adapter.spectrum.is_meta:
                    adapter.spectrum = nn.Parameter(torch.zeros_like(adapter.spectrum, device=device),
                                                    requires_grad=adapter.spectrum.requires_grad)
                adapter.rows, adapter.cols = adapter.rows.to(device), adapter.cols.to(device)
