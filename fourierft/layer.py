"""FourierFT tuner layers, one class per base layer type, on PEFT's ``BaseTunerLayer``.

State per adapter ``a`` (PEFT's names, so parameter names and checkpoints are PEFT's):

* ``fourierft_spectrum[a]``: ``(n,)`` trainable coefficients (saved as ``<layer>.fourierft_spectrum``);
* ``fourierft_seeded_rows[a]``, ``fourierft_seeded_cols[a]``: ``(n,)`` int64 entries, regenerated from
  ``random_loc_seed`` (O(n), :mod:`fourierft.entries`) and never saved, exactly as PEFT regenerates them; or, for
  non-uniform entries, ``fourierft_rows[a]`` and ``fourierft_cols[a]``, which *are* saved (:mod:`fourierft.sampling`).
  Each is its own tensor, handed to the kernels as it is: their caches (bases, plans) live as long as it does;
* ``fourierft_n_frequency[a]``, ``fourierft_scaling[a]``, ``fourierft_random_loc_seed[a]``: plain numbers.

The layer computes ``y = base_layer(x) + sum over active, unmerged a of delta_a(x)`` where ``delta_a`` applies
``dW_a`` (:func:`fourierft.spectral.delta_weight`, the one definition) as the base layer would apply its weight.
Linear layers use the fast kernels (:mod:`fourierft.kernels`); Conv2d and Embedding their own forms
(:mod:`fourierft.layers_extra`).
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.nn.modules import module as _module

from .config import n_frequency_for, norm_factor
from .entries import spectral_entries
from .kernels import adapted_linear, spectral_linear
from .layers_extra import check_extra, conv2d_delta, embedding_delta, matrix_shape
from .kernels.mixed import MIXED_PATHS
from .mixed import BASE, expand_names, row_groups
from .quantized import quantization_kind
from .sampling import check_entries, sampler_for
from .shared_entries import add_shared_entries, mixed_plan
from .spectral import delta_weight


_ORIGINAL = "_unmerged_weight"  # the buffer holding the weight from before the first merge


class FourierFTLayer(nn.Module, BaseTunerLayer):
    """What every FourierFT layer shares: adapters' state, ``dW``, merging, forward. Subclasses say how ``dW`` is
    applied to an input (:meth:`adapter_output`) and on which matrix view of the weight it lives."""

    adapter_layer_names = ("fourierft_spectrum",)
    other_param_names = ("fourierft_n_frequency", "fourierft_scaling", "fourierft_random_loc_seed",
                         "fourierft_seeded_rows", "fourierft_seeded_cols", "fourierft_rows", "fourierft_cols")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, n_frequency: int, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fourierft_spectrum = nn.ParameterDict({})
        self.fourierft_seeded_rows = BufferDict({}, persistent=False)
        self.fourierft_seeded_cols = BufferDict({}, persistent=False)
        self.fourierft_rows = BufferDict({}, persistent=True)
        self.fourierft_cols = BufferDict({}, persistent=True)
        self.fourierft_n_frequency: dict[str, int] = {}
        self.fourierft_scaling: dict[str, float] = {}
        self.fourierft_random_loc_seed: dict[str, int] = {}
        self._norm_factor: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.compute_path = "auto"
        self.kwargs = kwargs
        self.out_features, self.in_features = self._matrix_shape(self.get_base_layer())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, n_frequency, config=config)

    @staticmethod
    def _matrix_shape(base: nn.Module) -> tuple[int, int]:
        """``(d1, d2)`` of the matrix the spectrum lives on."""
        raise NotImplementedError

    # --- adapters -------------------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, n_frequency: int, config, **kwargs) -> None:
        """Add (or replace) adapter ``adapter_name`` with ``n_frequency`` coefficients, on the base layer's device."""
        d1, d2 = self.out_features, self.in_features
        if not 0 < n_frequency <= d1 * d2:
            raise ValueError(
                f"n_frequency={n_frequency} does not fit a {d1}x{d2} weight (1 <= n <= {d1 * d2}): lower n_frequency "
                "or set n_frequency_pattern for this layer")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged: unmerge it before replacing it")
        # Normal tensors even when the model is built under torch.inference_mode: inference tensors have no version
        # counter, so the kernels' caches would hash the entries' contents at every call (fourierft.kernels._cache),
        # and outside inference_mode they can be neither trained nor loaded into
        with torch.inference_mode(False):
            sampler = sampler_for(config) or spectral_entries
            rows, cols = sampler(d1, d2, n_frequency, config.random_loc_seed)
            if getattr(config, "entry_sampling", "uniform") == "uniform":
                self.fourierft_seeded_rows[adapter_name], self.fourierft_seeded_cols[adapter_name] = rows, cols
            else:
                self.fourierft_rows[adapter_name], self.fourierft_cols[adapter_name] = rows, cols
            self.fourierft_n_frequency[adapter_name] = n_frequency
            self.fourierft_scaling[adapter_name] = config.scaling
            self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
            self._norm_factor[adapter_name] = norm_factor(config, d1, d2)
            # drawn on the CPU like PEFT's, so the same torch seed gives the same initial coefficients
            spectrum = torch.zeros(n_frequency) if config.init_weights else torch.randn(n_frequency)
            self.fourierft_spectrum[adapter_name] = nn.Parameter(spectrum, requires_grad=True)
            self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Stored entries come from a checkpoint that could hold anything; repeated entries have no single dW (ifft2
        # keeps one of them, the kernels' sums over entries count each). Checked before this layer copies anything.
        for name in self.fourierft_rows:
            rows = state_dict.get(f"{prefix}fourierft_rows.{name}")
            cols = state_dict.get(f"{prefix}fourierft_cols.{name}")
            if rows is not None and cols is not None:
                check_entries(rows, cols, self.out_features, self.in_features,
                              f"adapter {name!r} of layer {prefix.removesuffix('.')!r}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged: unmerge it before deleting it")
        self._norm_factor.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def set_compute_path(self, path: str) -> None:
        """How linear layers compute ``x @ dW.T``: one of :data:`fourierft.kernels.PATHS`."""
        from .kernels import PATHS

        if path not in PATHS:
            raise ValueError(f"unknown compute path {path!r}; choose one of {list(PATHS)}")
        self.compute_path = path

    def entries(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)``, each ``(n,)`` int64, of one adapter."""
        if adapter_name in self.fourierft_rows:
            return self.fourierft_rows[adapter_name], self.fourierft_cols[adapter_name]
        return self.fourierft_seeded_rows[adapter_name], self.fourierft_seeded_cols[adapter_name]

    def adapter_tables(self) -> tuple[dict[str, nn.Parameter], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(spectra, rows, cols)``: this layer's adapters as plain ``name -> tensor`` dicts, a snapshot, entries
        resolved as :meth:`entries` does. For loops over many adapters (mixed batches): an ``nn.Module`` attribute
        or ``ParameterDict`` item costs the host microseconds each, a dict item a fraction of one."""
        rows = {**self.fourierft_seeded_rows._buffers, **self.fourierft_rows._buffers}
        cols = {**self.fourierft_seeded_cols._buffers, **self.fourierft_cols._buffers}
        return dict(self.fourierft_spectrum._parameters), rows, cols

    def scaling(self, adapter_name: str) -> float:
        """The factor in front of PEFT's ``backward``-normalised ``ifft2``: ``scaling`` times the norm's factor."""
        return self.fourierft_scaling[adapter_name] * self._norm_factor.get(adapter_name, 1.0)

    # --- weights --------------------------------------------------------------------------------------------------
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` of one adapter: ``(out_features, in_features)`` float32 (PEFT's orientation, also for Conv1D)."""
        spectrum = self.fourierft_spectrum[adapter]
        if spectrum.device.type == "meta":
            raise RuntimeError(f"adapter {adapter!r} has no coefficients yet (created with low_cpu_mem_usage=True and "
                               "never loaded): load its weights first")
        rows, cols = self.entries(adapter)
        return delta_weight(spectrum, rows, cols, self.out_features, self.in_features, self.scaling(adapter))

    def _weight_delta(self, adapter: str) -> torch.Tensor:
        """``dW`` in the base weight's own layout and dtype."""
        base = self.get_base_layer()
        kind = quantization_kind(base)
        if kind is not None:  # adding dW to quantized storage would round most of it away or corrupt packed bits
            raise ValueError(f"cannot merge into a {kind} weight without losing the adapter: keep it unmerged, or call "
                             "merge_and_unload(dequantize=True) for float layers holding dequantize(W) + dW")
        return self._as_weight(self.get_delta_weight(adapter)).to(base.weight.device, base.weight.dtype)

    def _as_weight(self, dw: torch.Tensor) -> torch.Tensor:
        return dw.reshape(self.get_base_layer().weight.shape)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ``dW`` of the given (default: active) adapters into the base weight. With ``safe_merge`` nothing
        changes if the result would hold NaN or inf.

        The weight from before the first merge is kept, so that :meth:`unmerge` restores it bit for bit (``W + dW -
        dW`` rounds: in bf16 by up to ~4e-3). That costs a copy of the layer's weight while it is merged; the copy is
        a non-persistent buffer (moved and cast by ``.to()``, never in ``state_dict`` or a checkpoint) and is freed
        by the unmerge. ``merge_and_unload`` keeps none (:meth:`unload_and_optionally_merge_module`)."""
        self._merge(safe_merge, adapter_names, keep_original=True)

    def _merge(self, safe_merge: bool, adapter_names: list[str] | None, keep_original: bool) -> None:
        names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.fourierft_spectrum]
        if not names:
            return
        weight = self.get_base_layer().weight
        deltas = [self._weight_delta(n) for n in names]  # all computed (and checked) before the weight changes
        if safe_merge:
            merged = weight.detach().clone()
            for name, delta in zip(names, deltas):
                merged += delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
        with torch.no_grad():
            if keep_original and not self.merged_adapters:
                self.register_buffer(_ORIGINAL, weight.detach().clone(), persistent=False)
            for name, delta in zip(names, deltas):
                weight.data += delta
                self.merged_adapters.append(name)

    def unload_and_optionally_merge_module(self, merge: bool, safe_merge: bool,
                                           adapter_names: list[str] | None) -> nn.Module:
        """PEFT's ``merge_and_unload``/``unload`` call this: merge without keeping a copy of the weight (the layer is
        dropped), and hand back the base layer."""
        if merge:
            self._merge(safe_merge, adapter_names, keep_original=False)
        return self.get_base_layer()

    def check_merge(self, adapter_names: list[str] | None = None) -> None:
        """Raise ``ValueError`` if merging these (default: active) adapters would put NaN or inf into the weight."""
        names = [n for n in adapter_names or self.active_adapters
                 if n in self.fourierft_spectrum and n not in self.merged_adapters]
        if names and quantization_kind(self.get_base_layer()) is None:
            merged = self.get_base_layer().weight.detach() + sum(self._weight_delta(n) for n in names)
            if not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {names[-1]} seems to be broken")

    def unmerge(self) -> None:
        """Put back the weight from before the first merge (bit for bit, see :meth:`merge`); where no copy was kept,
        subtract every merged adapter's ``dW`` again, newest first."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        with torch.no_grad():
            original = self._buffers.get(_ORIGINAL)
            if original is not None:
                self.get_base_layer().weight.data.copy_(original)
                delattr(self, _ORIGINAL)
                self.merged_adapters.clear()
            while self.merged_adapters:
                name = self.merged_adapters[-1]
                self.get_base_layer().weight.data -= self._weight_delta(name)
                self.merged_adapters.pop()

    # --- forward --------------------------------------------------------------------------------------------------
    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """One adapter's contribution for input ``x``, in the shape of the base layer's output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args, adapter_names: list[str] | None = None, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:  # the tuner unmerges when it disables; forward never changes the weights itself
                warnings.warn("adapters are disabled but merged into the weights: unmerge them first")
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self.fourierft_spectrum:
                result = self.add_adapter_output(name, x, result)
        return result

    def add_adapter_output(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + adapter_output(adapter, x)``, in ``result``'s dtype."""
        return result + self.adapter_output(adapter, x).to(result.dtype)

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """Row ``i`` of the batch through adapter ``adapter_names[i]`` (``"__base__"``: none); see :mod:`mixed`."""
        result = self.base_layer(x, *args, **kwargs)
        names = expand_names(adapter_names, x.shape[0])
        if names and names.count(names[0]) == len(names):  # one adapter for every row: no gather, no scatter
            if names[0] == BASE or names[0] not in self.fourierft_spectrum:
                return result
            return self.add_adapter_output(names[0], x, result)
        for name, idx in row_groups(names, x.device).items():
            if name == BASE or name not in self.fourierft_spectrum:  # absent here: adds nothing, as when alone
                continue
            delta = self.adapter_output(name, x.index_select(0, idx))
            result = result.index_add(0, idx, delta.to(result.dtype))
        return result

    def __repr__(self) -> str:
        return "fourierft." + super().__repr__()


class Linear(FourierFTLayer):
    """FourierFT on ``nn.Linear``, transformers' GPT-2 ``Conv1D`` (``fan_in_fan_out``) and quantized linear layers
    (bitsandbytes 4/8-bit, torchao): ``y = base(x) + x @ dW.T`` through :func:`fourierft.kernels.spectral_linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, n_frequency: int,
                 fan_in_fan_out: bool = False, **kwargs) -> None:
        self.fan_in_fan_out = fan_in_fan_out  # a plain bool, read by _as_weight
        super().__init__(base_layer, adapter_name, config, n_frequency, **kwargs)

    @staticmethod
    def _matrix_shape(base: nn.Module) -> tuple[int, int]:
        if hasattr(base, "in_features") and hasattr(base, "out_features"):  # nn.Linear and quantized linears
            return base.out_features, base.in_features
        d_in, d_out = base.weight.shape  # Conv1D stores (in, out)
        return d_out, d_in

    def _as_weight(self, dw: torch.Tensor) -> torch.Tensor:
        return dw.T if self.fan_in_fan_out else dw

    def forward(self, x: torch.Tensor, *args, adapter_names: list[str] | None = None, **kwargs) -> torch.Tensor:
        """As :meth:`FourierFTLayer.forward`; a plain frozen ``nn.Linear`` base runs inside the first active
        adapter's kernel call (:func:`fourierft.kernels.adapted_linear`: its input gradient is added there, not by
        autograd afterwards)."""
        names = [] if self.disable_adapters or self.merged or adapter_names is not None or args or kwargs else [
            name for name in self.active_adapters if name in self.fourierft_spectrum]
        base = self.base_layer  # get_base_layer() itself when it is a plain nn.Linear, the only base taken here
        if not names or not _runs_as_plain_linear(base):
            return super().forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = adapted_linear(x, base.weight, base.bias, *self._operands(names[0]), self.out_features,
                                self.in_features, self.scaling(names[0]), path=self.compute_path)
        for name in names[1:]:
            result = self.add_adapter_output(name, x, result)
        return result

    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T``: ``(..., in_features) -> (..., out_features)`` in ``x.dtype``."""
        return spectral_linear(x, *self._operands(adapter), self.out_features, self.in_features,
                               self.scaling(adapter), path=self.compute_path)

    def _operands(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(spectrum, rows, cols)`` of one adapter; a clear error for coefficients never loaded (meta)."""
        spectrum = self.fourierft_spectrum[adapter]
        if spectrum.is_meta:
            self.get_delta_weight(adapter)  # raises the clear error
        rows, cols = self.entries(adapter)
        return spectrum, rows, cols

    def add_adapter_output(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + x @ dW.T``: the kernels add the frozen output inside their last matmul where they can (one
        pass over the ``(..., out_features)`` output fewer); ``result`` is this forward's own temporary, so outside
        autograd they may add into it in place."""
        return spectral_linear(x, *self._operands(adapter), self.out_features, self.in_features,
                               self.scaling(adapter), path=self.compute_path, base=result, consume_base=True)

    def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """As :meth:`FourierFTLayer._mixed_batch_forward`; adapters that share their entries go through one
        :func:`fourierft.kernels.mixed.mixed_linear` call (:mod:`fourierft.shared_entries`), unless a compute
        path it lacks is forced."""
        names = expand_names(adapter_names, x.shape[0])
        if self.compute_path not in MIXED_PATHS or not names or names.count(names[0]) == len(names):
            return super()._mixed_batch_forward(x, *args, adapter_names=names, **kwargs)
        plan, tables = mixed_plan(self, names, x.device)
        if not plan.groups:
            return super()._mixed_batch_forward(x, *args, adapter_names=names, **kwargs)
        if plan.rest is None:
            result = self.base_layer(x, *args, **kwargs)
        else:
            result = super()._mixed_batch_forward(x, *args, adapter_names=plan.rest, **kwargs)
        return add_shared_entries(self, plan, tables, x, result)


class Conv2d(FourierFTLayer):
    """FourierFT on ``nn.Conv2d``: the spectrum lives on the ``(out, in / groups * kh * kw)`` view of the kernel."""

    _matrix_shape = staticmethod(matrix_shape)

    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        return conv2d_delta(self.get_base_layer(), self.get_delta_weight(adapter), x)


class Embedding(FourierFTLayer):
    """FourierFT on ``nn.Embedding``: ``dW`` has the weight's shape; only the looked-up rows are computed."""

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, config, n_frequency: int, **kwargs) -> None:
        check_extra(base_layer)
        super().__init__(base_layer, adapter_name, config, n_frequency, **kwargs)

    _matrix_shape = staticmethod(matrix_shape)

    def adapter_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.entries(adapter)
        return embedding_delta(self.fourierft_spectrum[adapter], rows, cols, self.out_features, self.in_features,
                               self.scaling(adapter), x)


def _runs_as_plain_linear(base: nn.Module) -> bool:
    """Whether calling ``base`` is exactly ``F.linear(x, base.weight, base.bias)`` with nothing else observing or
    changing it, so the adapter may run that itself: an ``nn.Linear`` (not a subclass: quantized linears) with
    plain, frozen parameters (not a tensor subclass: DTensor, torchao) and no hooks of its own or global ones (the
    checks ``nn.Module.__call__`` makes; DeepSpeed ZeRO-3 gathers weights in hooks) and no forward of its own
    (accelerate's offload replaces it)."""
    if type(base) is not nn.Linear or "forward" in vars(base):
        return False
    # checked at every call (hooks come and go), so written as one short-circuiting expression
    if (base._forward_hooks or base._forward_pre_hooks or base._backward_hooks or base._backward_pre_hooks
            or _module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return False
    weight, bias = base.weight, base.bias
    return (type(weight) is nn.Parameter and not weight.requires_grad
            and (bias is None or (type(bias) is nn.Parameter and not bias.requires_grad)))


def n_frequency_of(config, key: str, base: nn.Module, layer_cls: type[FourierFTLayer]) -> int:
    """Coefficients the layer at ``key`` gets under ``config``."""
    d1, d2 = layer_cls._matrix_shape(base)
    return n_frequency_for(config, key, d1, d2)
