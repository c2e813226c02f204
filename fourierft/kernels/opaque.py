"""The cached paths under ``torch.compile``: ``lowrank`` and ``factored`` as two opaque custom ops.

Traced inline, these paths would rebuild their cos/sin bases or split plans inside the graph on every call (a plan
cannot be traced at all: its group sizes depend on the entries' values). As ``torch.library`` custom ops, dynamo
sees one node per call with known output shapes, and the body runs eagerly with the caches of ``_cache.py``.

    fourierft::spectral_forward   (x (T, d2), spectrum (n,), rows, cols, d1, d2, scaling, path, base (T, d1)?)
                                  -> y (T, d1), saved        saved: lowrank q (T, 2n), factored/fused X_k (2n, T)
    fourierft::spectral_backward  (g (T, d1), saved, spectrum, rows, cols, ..., need_x, need_c)
                                  -> grad_x (T, d2) or (0,), grad_c (n,) or (0,)

The math is that of :mod:`.lowrank` and :mod:`.factored` (their ``*_forward`` / ``*_backward`` functions; ``fused``
is factored with its Triton kernels), so the compiled and eager paths agree to the bit on the same inputs.
"""

from typing import Optional

import torch
from torch import Tensor

from . import factored_triton
from ._cache import basis
from .factored import factored_backward, factored_forward, plan
from .lowrank import lowrank_backward, lowrank_forward

OPAQUE: tuple[str, ...] = ("lowrank", "factored", "fused")


def _operands(path: str, rows: Tensor, cols: Tensor, d1: int, d2: int, dtype: torch.dtype):
    if path == "lowrank":
        return basis(rows, d1, dtype), basis(cols, d2, dtype)  # (d1, 2n), (d2, 2n)
    half = path != "fused"  # as factored_linear chooses
    return plan(rows, d1, dtype, half), plan(cols, d2, dtype, half)


@torch.library.custom_op("fourierft::spectral_forward", mutates_args=())
def spectral_forward(x: Tensor, spectrum: Tensor, rows: Tensor, cols: Tensor, d1: int, d2: int, scaling: float,
                     path: str, base: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    a, b = _operands(path, rows, cols, d1, d2, x.dtype)
    if path == "fused":
        factored_triton.require(x, a, b)
    if path == "lowrank":
        return lowrank_forward(x, spectrum, a, b, scaling / (d1 * d2), base)
    return factored_forward(x, spectrum, a, b, scaling / (d1 * d2), base, fused=path == "fused")


@spectral_forward.register_fake
def _(x, spectrum, rows, cols, d1, d2, scaling, path, base):
    t, n = x.shape[0], spectrum.shape[0]
    return x.new_empty(t, d1), (x.new_empty(t, 2 * n) if path == "lowrank" else x.new_empty(2 * n, t))


@torch.library.custom_op("fourierft::spectral_backward", mutates_args=())
def spectral_backward(g: Tensor, saved: Tensor, spectrum: Tensor, rows: Tensor, cols: Tensor, d1: int, d2: int,
                      scaling: float, path: str, need_x: bool, need_c: bool) -> tuple[Tensor, Tensor]:
    a, b = _operands(path, rows, cols, d1, d2, saved.dtype)
    scale = scaling / (d1 * d2)
    if path == "lowrank":
        grad_x, grad_c = lowrank_backward(g, saved, spectrum, a, b, scale, need_x, need_c)
    else:
        grad_x, grad_c = factored_backward(g, saved, spectrum, a, b, scale, need_x, need_c, fused=path == "fused")
    return (saved.new_empty(0) if grad_x is None else grad_x), (spectrum.new_empty(0) if grad_c is None else grad_c)


@spectral_backward.register_fake
def _(g, saved, spectrum, rows, cols, d1, d2, scaling, path, need_x, need_c):
    return saved.new_empty((g.shape[0], d2) if need_x else (0,)), spectrum.new_empty(spectrum.shape if need_c else (0,))


def _setup_context(ctx, inputs, output) -> None:
    x, spectrum, rows, cols, d1, d2, scaling, path, base = inputs
    ctx.save_for_backward(output[1], spectrum, rows, cols)
    ctx.args, ctx.has_base = (d1, d2, scaling, path), base is not None
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, g, _saved_grad):
    saved, spectrum, rows, cols = ctx.saved_tensors
    need_x, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_c = spectral_backward(g.contiguous(), saved, spectrum, rows, cols, *ctx.args, need_x, need_c)
    grad_base = g if ctx.has_base and ctx.needs_input_grad[8] else None
    return (grad_x if need_x else None), (grad_c if need_c else None), None, None, None, None, None, None, grad_base


spectral_forward.register_autograd(_backward, setup_context=_setup_context)


def opaque_linear(path: str, x: Tensor, spectrum: Tensor, rows: Tensor, cols: Tensor, out_features: int,
                  in_features: int, scaling: float, base: Optional[Tensor] = None) -> Tensor:
    """``x @ dW.T`` (``+ base``, same dtype as ``x``) for ``x`` ``(..., in_features)`` through the custom op."""
    x2 = x.reshape(-1, in_features).contiguous()
    b2 = None if base is None else base.reshape(-1, out_features).contiguous()
    y, _ = spectral_forward(x2, spectrum, rows, cols, out_features, in_features, float(scaling), path, b2)
    return y.reshape(*x.shape[:-1], out_features)
