"""The table of paths by name (each ``(x, spectrum, rows, cols, out_features, in_features, scaling) -> x @ dW.T``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spectral import delta_weight
from .factored import factored_linear, fused_linear
from .gemm import gemm_linear
from .lowrank import lowrank_linear


def dense_linear(x, spectrum, rows, cols, out_features, in_features, scaling) -> torch.Tensor:
    """PEFT's numerics: ``dW`` in float32 through a dense complex ``ifft2``, the matmul in float32, cast back."""
    dw = delta_weight(spectrum, rows, cols, out_features, in_features, scaling)
    return F.linear(x.to(dw.dtype), dw).to(x.dtype)


IMPLS = {"dense": dense_linear, "gemm": gemm_linear, "lowrank": lowrank_linear, "factored": factored_linear,
         "fused": fused_linear}
# paths that can add the frozen layer's output inside their last GEMM (keyword ``base``)
FUSED = {"gemm": gemm_linear, "lowrank": lowrank_linear, "factored": factored_linear, "fused": fused_linear}
# paths whose autograd function can run the frozen layer itself (keyword ``frozen``, see ``adapted_linear``)
FROZEN: tuple[str, ...] = ("gemm", "lowrank", "factored", "fused")
CUDA_ONLY: tuple[str, ...] = ("fused",)  # refused elsewhere with a message that names the alternative
