"""``FourierFTModel``: PEFT's FourierFT tuner with fourierft's layers.

A subclass of :class:`peft.tuners.fourierft.FourierFTModel` (PEFT's ``BaseTuner`` does the targeting,
``modules_to_save``, tied weights, adapter bookkeeping and checkpoints). What is ours:

* the layers (:mod:`fourierft.layer`): O(n) bit-exact entries, fast kernels, Conv2d and Embedding, quantized bases;
* mixed-adapter batches (``adapter_names=``, :mod:`fourierft.mixed`);
* :meth:`set_compute_path`, :meth:`add_weighted_adapter` (:mod:`fourierft.compose`),
  ``merge_and_unload(dequantize=True)`` for quantized bases;
* disabling adapters unmerges merged ones first, in the named call, not later inside ``forward``;
* injecting an adapter is a transaction (:mod:`fourierft.transaction`): if it fails, the model is as it was;
* a target naming a container (``"mlp"``) adapts the linear layers inside it (PEFT refuses it); a target that matches
  nothing is answered with the model's layer names.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import torch
from peft.tuners.fourierft import FourierFTModel as PeftFourierFTModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from .config import matching_pattern
from .kernels._reuse import reuse_scope
from .layer import FourierFTLayer, Linear, n_frequency_of
from .mixed import adapter_names_hooks, batch_size
from .quantized import merged_float_linear, quantization_kind
from .sampling import check_entries
from .shared_entries import call_scope
from .targets import (ancestors, check_adapter_name, is_adaptable, is_excluded, layer_class_for, no_match_hint,
                      warn_other_base, warn_unmatched)
from .transaction import restoring


class FourierFTModel(PeftFourierFTModel):
    """PEFT's FourierFT tuner building fourierft's layers. See :class:`peft.tuners.fourierft.FourierFTModel`."""

    tuner_layer_cls = FourierFTLayer

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        """PEFT's ``inject_adapter``, all or nothing: on any error no layer is wrapped or changed. A config that
        records another base model than ``model`` is warned about first (``from_pretrained``, ``load_adapter``)."""
        check_adapter_name(adapter_name)
        warn_other_base(self.peft_config[adapter_name], model)
        try:
            with restoring(self, model) as before:
                super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                       low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        except ValueError as err:
            if "not found in the base model" not in str(err):
                raise
            raise type(err)(f"{err} {no_match_hint(model, self.peft_config[adapter_name].target_modules)}") from None
        # kept until the adapter's weights are loaded: a load that is refused undoes the injection too
        self._before_injection = (adapter_name, before)
        warn_unmatched(self.peft_config[adapter_name], [n for n, _ in model.named_modules()],
                       self.targeted_module_names)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """PEFT's key mapping, then a check that every coefficient and entry vector fits its layer; a misfit is
        refused before anything is written, and an adapter injected just for this load is removed again."""
        mapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        own, modules = model.state_dict(), dict(model.named_modules())
        prefix = "base_model.model."
        misfits = []
        for key, value in mapped.items():
            target = own.get(key, own.get(key.removeprefix(prefix)))
            if ".fourierft_" in key and target is not None and tuple(target.shape) != tuple(value.shape):
                misfits.append(f"{key.removeprefix(prefix)}: {tuple(value.shape)} in the checkpoint, "
                               f"{tuple(target.shape)} in the model")
            elif ".fourierft_rows." in key and target is not None:  # stored entries: in range, distinct
                name = key.split(".fourierft_rows.")[0]
                layer = modules.get(name, modules.get(prefix + name))
                try:
                    check_entries(value, mapped.get(key.replace("_rows.", "_cols."), value), layer.out_features,
                                  layer.in_features, f"layer {key.removeprefix(prefix).split('.fourierft_')[0]!r}")
                except ValueError as err:
                    misfits.append(str(err))
        if misfits:
            tuner = getattr(model, "base_model", None)
            pending = getattr(tuner, "_before_injection", None)
            if pending is not None and pending[0] == adapter_name:
                pending[1].restore()
                tuner.peft_config.pop(adapter_name, None)
                tuner._before_injection = None
            raise ValueError(f"adapter {adapter_name!r} does not fit this model (is it for another base model?): "
                             + "; ".join(misfits[:3]) + (f"; and {len(misfits) - 3} more" if len(misfits) > 3 else ""))
        return mapped

    def _create_and_replace(self, fourierft_config, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs) -> None:
        if current_key is None:
            raise ValueError("Current Key shouldn't be `None`")
        if isinstance(target, FourierFTLayer):
            n = n_frequency_of(fourierft_config, optional_kwargs.get("n_frequency_key", current_key),
                               target.get_base_layer(), type(target))
            target.update_layer(adapter_name, n, config=fourierft_config)
            return
        if not is_adaptable(target):
            inside = self._linear_layers_inside(fourierft_config, target, current_key)
            if inside:  # a container named as a target ("mlp"): the linear layers inside it
                for sub, layer in inside:
                    parent_name, _, name = sub.rpartition(".")
                    key = f"{current_key}.{sub}"
                    # n_frequency_pattern is tried on the layer's own name, then on the container's
                    n_key = key if matching_pattern(fourierft_config, key) is not None else current_key
                    self._create_and_replace(fourierft_config, adapter_name, layer, name,
                                             target.get_submodule(parent_name) if parent_name else target, key,
                                             n_frequency_key=n_key)
                return
        try:
            new_module = self._create_new_module(fourierft_config, adapter_name, target, current_key=current_key,
                                                 n_frequency_key=optional_kwargs.get("n_frequency_key", current_key))
        except ValueError as err:
            raise ValueError(f"layer {current_key!r}: {err}") from None
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until it is made active
        self._replace_module(parent, target_name, new_module, target)

    def _linear_layers_inside(self, config, container: nn.Module, key: str) -> list[tuple[str, nn.Module]]:
        """``(name inside, layer)`` of the linear layers (or fourierft layers on them, from another adapter) in
        ``container`` that are neither excluded nor targets by their own names (PEFT reaches those itself)."""
        found = []
        for sub, module in container.named_modules():
            full = f"{key}.{sub}"
            linear = isinstance(module, Linear) or is_adaptable(module) and layer_class_for(module)[0] is Linear
            if (sub and linear and not is_excluded(config, full)
                    and not self._check_target_module_exists(config, full)
                    and not any(isinstance(m, FourierFTLayer) for m in ancestors(container, sub))):
                found.append((sub, module))
        return found

    @staticmethod
    def _create_new_module(fourierft_config, adapter_name, target, **kwargs) -> FourierFTLayer:
        """A new FourierFT layer around ``target`` (the caller's config is never changed)."""
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        layer_cls, fan_in_fan_out = layer_class_for(base)
        if layer_cls is Linear and fourierft_config.fan_in_fan_out != fan_in_fan_out:
            warnings.warn(f"fan_in_fan_out is set to {fourierft_config.fan_in_fan_out} but the target module is "
                          f"`{type(base).__name__}`: using fan_in_fan_out={fan_in_fan_out} for it.")
        key = kwargs.get("n_frequency_key", kwargs.get("current_key", ""))  # whose n_frequency_pattern entry applies
        n = n_frequency_of(fourierft_config, key, base, layer_cls)
        extra = {"fan_in_fan_out": fan_in_fan_out} if layer_cls is Linear else {}
        return layer_cls(target, adapter_name, fourierft_config, n, **extra)

    # --- fourierft's additions ------------------------------------------------------------------------------------
    def fourierft_layers(self) -> list[tuple[str, FourierFTLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, FourierFTLayer)]

    def set_compute_path(self, path: str) -> None:
        """Force how adapted linear layers compute ``x @ dW.T`` (one of ``fourierft.kernels.PATHS``)."""
        from .kernels import PATHS

        if path not in PATHS:
            raise ValueError(f"unknown compute path {path!r}; choose one of {list(PATHS)}")
        for _, layer in self.fourierft_layers():
            layer.set_compute_path(path)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter with ``dW = sum_i weights[i] dW_i`` on every layer: see :mod:`fourierft.compose`."""
        from .compose import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT enters this around every forward and ``generate``: the mixed-batch hooks for ``adapter_names=``,
        and the scope in which layers reading one input with the same entries share its transform
        (:mod:`fourierft.kernels._reuse`; eager only)."""
        with nullcontext() if torch.compiler.is_compiling() else reuse_scope(), \
                self._adapter_names_hooks(*args, **kwargs):
            yield

    @contextmanager
    def _adapter_names_hooks(self, *args, **kwargs):
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        modules = [m for m in self.model.modules() if isinstance(m, (FourierFTLayer, AuxiliaryTrainingWrapper))]
        known = {name for m in modules if isinstance(m, FourierFTLayer) for name in m.fourierft_spectrum}
        known |= set(self.peft_config)
        beams = kwargs.get("num_beams")
        # PEFT's modules_to_save wrapper needs one name per (beam-expanded) row; our layers expand by themselves
        repeat = beams if isinstance(beams, int) and beams > 1 else 1
        with adapter_names_hooks(self.model, adapter_names, known, modules, rows=batch_size(args, kwargs),
                                 repeat=repeat), call_scope():
            yield

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        if not enabled:
            merged = [layer for _, layer in self.fourierft_layers() if layer.merged]
            if merged:
                warnings.warn("Unmerging the merged adapters to disable them.")
                for layer in merged:
                    layer.unmerge()
        super()._enable_adapter_layers(enabled)

    def _check_known(self, names) -> None:
        """Refuse names that are no adapter of this model (PEFT skips them silently: nothing would be merged)."""
        unknown = [n for n in ([names] if isinstance(names, str) else names) if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; adapters: {sorted(self.peft_config)}")

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """PEFT's; names that are no adapter of this model are refused before any layer changes."""
        self._check_known(adapter_name)
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """PEFT's; with ``safe_merge`` every layer is checked before any changes (PEFT's stops half-way)."""
        if adapter_names is not None:
            self._check_known(adapter_names)
        for _, layer in self.fourierft_layers() if safe_merge else []:
            layer.check_merge(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None, dequantize: bool = False) -> nn.Module:
        """PEFT's ``merge_and_unload``; with ``dequantize=True`` quantized adapted layers become float ``nn.Linear``
        layers holding ``dequantize(W) + dW`` (unadapted layers stay quantized). ``safe_merge`` checks every layer
        before any changes."""
        if adapter_names is not None:
            self._check_known(adapter_names)
        for _, layer in self.fourierft_layers() if safe_merge else []:
            layer.check_merge(adapter_names)
        for key, wrapper in self.model.named_modules() if safe_merge else []:  # the copy that replaces the module
            if isinstance(wrapper, ModulesToSaveWrapper) and wrapper.active_adapters and not all(
                    torch.isfinite(p).all() for p in wrapper.modules_to_save[wrapper.active_adapter].parameters()):
                raise ValueError(f"NaNs detected in the modules_to_save copy of {key!r}: the adapter seems to be broken")
        if dequantize:
            self._dequantize_merge(adapter_names, safe_merge)
        return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    def _dequantize_merge(self, adapter_names: list[str] | None, safe_merge: bool) -> None:
        plans = []
        for key, layer in self.fourierft_layers():
            base = layer.get_base_layer()
            if quantization_kind(base) is None:
                continue
            names = [n for n in (adapter_names or layer.active_adapters) if n in layer.fourierft_spectrum]
            delta = sum((layer.get_delta_weight(n) for n in names), torch.zeros(()))
            linear = merged_float_linear(base, delta)
            if safe_merge and not torch.isfinite(linear.weight).all():
                raise ValueError(f"NaNs detected in the merged weights of {key!r}: the adapter seems to be broken")
            plans.append((key, linear))
        for key, linear in plans:  # every layer built before the model changes
            parent_name, _, child = key.rpartition(".")
            setattr(self.model.get_submodule(parent_name) if parent_name else self.model, child, linear)
