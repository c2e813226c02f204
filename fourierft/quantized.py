"""Quantized base layers (QLoRA-style): bitsandbytes 8-bit / 4-bit and torchao weight-only tensors.

The base weight stays quantized and frozen; the adapter's contribution ``x @ dW.T`` is computed in the input's
dtype by the usual kernels (``dW`` never touches the quantized weight). Merging ``dW`` into a quantized weight would
lose most of it to rounding (or fail outright on packed 4-bit storage), so :meth:`FourierFTLayer.merge` refuses,
and ``merge_and_unload(dequantize=True)`` instead replaces each adapted layer by a float ``nn.Linear`` holding
``dequantize(W) + dW``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def quantization_kind(layer: nn.Module) -> str | None:
    """A readable name of the layer's weight quantization, or None for a plain float weight."""
    weight = getattr(layer, "weight", None)
    if weight is None:
        return None
    name = type(weight).__name__
    if name == "Params4bit":
        return "bitsandbytes 4-bit"
    if name == "Int8Params":
        return "bitsandbytes 8-bit"
    if type(weight) not in (torch.Tensor, nn.Parameter) and hasattr(weight, "dequantize"):
        return f"torchao {name}"
    return None


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight a quantized ``Linear`` computes with: ``(out_features, in_features)``."""
    weight = layer.weight
    kind = quantization_kind(layer)
    if kind == "bitsandbytes 4-bit":
        import bitsandbytes.functional as bnbf

        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights in place for its AVX512-BF16 CPU kernel at the first inference
            # call; undo that on a copy (the layer keeps its packed form).
            data, state = bnbf._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
        return bnbf.dequantize_4bit(data, state)
    if kind == "bitsandbytes 8-bit":
        import bitsandbytes.functional as bnbf

        # bitsandbytes moves the row scales from the weight to the layer's state after the first forward.
        scales = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
        return bnbf.int8_vectorwise_dequant(weight.data, scales)
    if kind is not None:
        return weight.dequantize()
    return weight.detach()


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The float dtype a quantized layer computes in (bitsandbytes' ``compute_dtype``, else the weight's)."""
    dtype = getattr(layer, "compute_dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    state = getattr(layer.weight, "quant_state", None)
    if state is not None and getattr(state, "dtype", None) is not None:
        return state.dtype
    return dequantized_weight(layer).dtype


@torch.no_grad()
def merged_float_linear(base: nn.Linear, delta: torch.Tensor) -> nn.Linear:
    """A new float ``nn.Linear`` with weight ``dequantize(base.weight) + delta`` (``delta``: ``(out, in)``)."""
    dtype = compute_dtype(base)
    weight = dequantized_weight(base).to(dtype)
    linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=weight.device,
                       dtype=dtype)
    linear.weight.copy_(weight + delta.to(weight.device, dtype))
    if base.bias is not None:
        linear.bias.copy_(base.bias.to(dtype))
    return linear.requires_grad_(False)
