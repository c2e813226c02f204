"""Shared helpers of the kernel tests: entries and the independent float64 reference."""

from __future__ import annotations

import torch

from fourierft.spectral import delta_weight_cos


def make_entries(d1: int, d2: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
    return flat // d2, flat % d2


def self_conjugate_entries(d1: int, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries on every self-conjugate bin (0 and d/2 on each axis): the cases the half-spectrum tricks special-case."""
    us = sorted({0, d1 // 2, d1 - 1})
    vs = sorted({0, d2 // 2, d2 - 1})
    pairs = [(u, v) for u in us for v in vs]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def reference(x, g, c, rows, cols, d1, d2, scaling):
    """float64 (y, grad_x, grad_c) for ``y = x @ dW.T`` and upstream grad ``g``."""
    dw = delta_weight_cos(c, rows, cols, d1, d2, scaling)  # (d1, d2)
    x64, g64 = x.double().reshape(-1, d2), g.double().reshape(-1, d1)
    j = torch.arange(d1, dtype=torch.float64)[:, None, None]
    l = torch.arange(d2, dtype=torch.float64)[None, :, None]
    cos = torch.cos(2 * torch.pi * (j * rows.double() / d1 + l * cols.double() / d2))  # (d1, d2, n)
    big_g = g64.T @ x64  # (d1, d2)
    grad_c = torch.einsum("jl,jlk->k", big_g, cos) * (scaling / (d1 * d2))
    return (x64 @ dw.T).reshape(*x.shape[:-1], d1), (g64 @ dw).reshape(x.shape), grad_c


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def interpret(monkeypatch, module, *names: str) -> None:
    """Rebind the Triton kernels ``names`` of ``module`` to interpreted copies (Triton's interpreter, numpy
    underneath), so CPU tests run the kernels themselves."""
    import triton
    from triton.runtime import interpreter

    for name in names:
        monkeypatch.setattr(module, name, interpreter.InterpretedFunction(getattr(module, name).fn))
    # The interpreter multiplies bf16 operands as their raw uint16 bits (numpy has no bf16); widen them first.
    dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        if a.dtype.scalar == triton.language.bfloat16:
            a, b = (interpreter.TensorHandle(interpreter._convert_float(h.data, h.dtype.scalar, triton.language.float32,
                                                                        None).view("float32"), triton.language.float32)
                    for h in (a, b))
        return dot(self, a, b, d, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
