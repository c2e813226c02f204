"""``alpha * a @ b (+ base)`` with ``alpha`` applied to the GEMM's fp32 accumulator (cuBLAS / CPU epilogue).

Why: FourierFT's ``scale = scaling / (d1 d2)`` is tiny (6.7e-6 for 4096 x 11008 at scaling 300). Multiplying it into
an fp16 operand makes subnormals (fp16's smallest normal is 6.1e-5) and loses digits (5e-2 relative error seen at
scale 3e-7); multiplying it in afterwards can overflow fp16 first. Applied as the GEMM's alpha, neither happens,
and it costs nothing (no extra pass over the output).

Also here: the precision-safe column sums the lowrank and factored paths share for their coefficient gradients.
"""

from __future__ import annotations

import torch


def scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float, base: torch.Tensor | None = None,
              into_base: bool = False) -> torch.Tensor:
    """``base + alpha * a @ b`` (``base`` optional, same dtype); ``a``: ``(T, k)``, ``b``: ``(k, m)``. With
    ``into_base`` the sum is written into ``base`` (beta = 1 on it: no copy of ``base`` first) and returned."""
    if base is not None:
        return torch.addmm(base, a, b, alpha=alpha, out=base if into_base else None)
    # beta = 0: the (broadcast) zero input is never read or copied
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=alpha)


def summed_products(a: torch.Tensor, b: torch.Tensor, dim: int | tuple[int, ...],
                    shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``(a * b).sum(dim)`` for the coefficient gradients (the product first viewed as ``shape`` if given):
    products in the compute dtype (one rounding each, unbiased), summed in fp32 (float64 for float64). fp16 is
    first widened: its products can over/underflow, while bf16 has fp32's range."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    if a.dtype == torch.float16:
        a, b = a.float(), b.float()
    prod = a * b
    return (prod if shape is None else prod.view(shape)).sum(dim, dtype=acc)
